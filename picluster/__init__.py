"""
picluster: the node software of a Raspberry Pi cluster, on Twisted.

A master (C{twistd -n picluster-master}) accepts slaves
(C{twistd -n picluster-slave}); both speak L{PiClusterProtocol}, length-prefixed
JSON frames, and report a lost connection as a L{DisconnectionException}.
"""

from picluster._version import __version__
from picluster.errors import DisconnectionException, RemoteError, RequestTimeout
from picluster.protocol import PiClusterFactory, PiClusterProtocol

__all__ = [
    "DisconnectionException",
    "PiClusterFactory",
    "PiClusterProtocol",
    "RemoteError",
    "RequestTimeout",
    "__version__",
]
