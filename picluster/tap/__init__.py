"""
The twistd plugins' options and services: C{picluster-master} and
C{picluster-slave}, declared in C{twisted/plugins/picluster_plugin.py}.
"""
