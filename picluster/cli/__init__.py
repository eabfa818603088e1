"""
The C{picluster} command: submit and watch tasks (L{main}, L{options},
L{formatting}), the cluster's status table (L{status}) and the one-process
demo (L{demo}).
"""
