"""
The twistd plugins C{picluster-master} and C{picluster-slave}.

Kept tiny on purpose: a plugin module that fails to import makes its
subcommands vanish from twistd without a word, so it imports nothing but
Twisted and leaves the real work to L{picluster.tap}.
"""

from twisted.application.service import ServiceMaker

picluster_master = ServiceMaker(
    "picluster master",
    "picluster.tap.master",
    "Run a picluster master that slaves connect to.",
    "picluster-master",
)

picluster_slave = ServiceMaker(
    "picluster slave",
    "picluster.tap.slave",
    "Run a picluster slave that joins a master and rejoins it when it returns.",
    "picluster-slave",
)
