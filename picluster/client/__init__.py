"""
The Python client of a picluster master: submit tasks, look at them, wait.

L{Client} is the public surface (L{picluster.client.api}); the connection
under it, its hello as a C{"client"} and its reconnection, is
L{picluster.client.connection}'s.
"""

from picluster.client.api import (
    Client,
    ClientConnection,
    ClientFactory,
    HandshakeError,
    MasterUnreachable,
    UnexpectedReply,
    UnknownTask,
)

__all__ = [
    "Client", "ClientConnection", "ClientFactory", "HandshakeError", "MasterUnreachable",
    "UnexpectedReply", "UnknownTask",
]
