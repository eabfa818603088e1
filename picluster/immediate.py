"""
Writing a batch of frames at once, when nothing waits before it.

Twisted's TCP transport never writes when asked: it keeps the bytes, asks
the reactor to watch the socket for room (an C{epoll_ctl}), and sends them
on the reactor's next turn (an C{epoll_wait}, then another C{epoll_ctl} to
stop watching).  A reply that could have left at once waits for all that,
and one request at a time that is most of a round trip beside the kernel's
own work (the rtt benchmark).  Here, when the transport holds nothing
unsent, the bytes go to the socket straight away, as asyncio's transports
do; whatever the socket does not take, and every write while something is
still queued, goes through the transport as before, so the order of the
bytes, the transport's buffering and its pausing of a producer are
untouched.
"""

from __future__ import annotations

from typing import Any, TypeGuard

from twisted.internet import tcp

#: The transports written to directly: Twisted's own TCP connections, which
#: keep what is queued in C{dataBuffer} (from C{offset}) and C{_tempDataBuffer}.
_DIRECT = (tcp.Server, tcp.Client)


#: What L{write} reads of such a transport: Twisted's own bookkeeping of
#: what it has queued.  Should a Twisted release keep it elsewhere, nothing
#: is written directly, and every byte goes through C{transport.write}.
_QUEUE_FIELDS = ("_tempDataLen", "dataBuffer", "offset", "socket", "TLS")


def writes_directly(transport: Any) -> TypeGuard[tcp.Connection]:
    """Whether L{write} may send to C{transport}'s socket itself."""
    return type(transport) in _DIRECT and all(hasattr(transport, name) for name in _QUEUE_FIELDS)


def write(transport: tcp.Connection, data: bytes) -> None:
    """
    Write C{data} to C{transport} (one L{writes_directly} accepts):
    straight to its socket when nothing is queued before it, else (and for
    what the socket does not take) through the transport.
    """
    if (transport.connected and not transport.disconnecting and not transport.TLS
            and not transport._tempDataLen and transport.offset == len(transport.dataBuffer)):
        try:
            sent = transport.socket.send(data)
        except OSError:
            # No room (EAGAIN), or the connection failing: the transport
            # finds out on its own turn, and closes as it always does.
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)
