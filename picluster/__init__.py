"""
picluster: the node software of a Raspberry Pi cluster, on Twisted.

A master (C{twistd -n picluster-master}) accepts slaves
(C{twistd -n picluster-slave}); both speak L{PiClusterProtocol}, length-prefixed
JSON frames, and report a lost connection as a L{DisconnectionException}.

The names below are imported on first use: a task's child process imports
C{picluster.tasks...} on every run, and should not pay for Twisted unless the
task needs it.
"""

from typing import Any

from picluster._version import __version__

_EXPORTS = {
    "DisconnectionException": "picluster.wire.errors",
    "RemoteError": "picluster.wire.errors",
    "RequestTimeout": "picluster.wire.errors",
    "PiClusterFactory": "picluster.wire.protocol",
    "PiClusterProtocol": "picluster.wire.protocol",
}

__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'picluster' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
