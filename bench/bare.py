"""
The ceilings: a bare Twisted Int32StringReceiver speaking JSON, and its client.

What picluster's wire would cost with nothing of picluster's on it: the same
framing (Twisted's L{Int32StringReceiver}, the same reactor), one JSON
decoding per frame, and a reply to whatever asks for one.  Both ingest
and rtt measure picluster as a fraction of this.  The second ceiling,
L{TypedServer}, does the same with picluster's own typed codec: each frame
decoded in one msgspec pass into its declared shape
(L{picluster.wire.envelope.message_decoder}), every field checked, and
replies encoded by msgspec; what is left between it and the master is the
master's own work.

C{python -m bench.bare serve PORT} (or C{typed PORT}) runs the server until
killed; it prints C{READY} once it listens.  The rtt client is L{BareClient}, driven by
L{bench.rttclient}.  C{python -m bench.bare echo PORT} runs the floor under
them all, L{Echo}: a round trip with no framing and no JSON at all.

The server does the work picluster's master does for every frame a slave
sends, and no more: it decodes the frame; answers a frame carrying an C{id}
with a reply (C{reply_to}, payload echoed); and answers a keepalive C{ping}
with a C{pong}, as the master does, so a stream holding pings costs both
servers the same replies.
"""

from __future__ import annotations

import collections
import itertools
import json
import struct
import sys
from typing import Any

import msgspec
from twisted.internet import defer, protocol
from twisted.protocols.basic import Int32StringReceiver

from picluster.master.service import DEFAULT_BACKLOG
from picluster.wire import DEFAULT_MAX_FRAME
from picluster.wire.envelope import Outgoing, message_decoder

#: Frames larger than this are refused, as the master's default --max-frame.
MAX_FRAME = DEFAULT_MAX_FRAME

#: The listening backlog: the master's default, so a thousand slaves
#: connecting at once reach both servers alike.
BACKLOG = DEFAULT_BACKLOG

# The json module's public API at its quickest: one encoder and one decoder
# made once (json.dumps and json.loads check their arguments on every call,
# and json.loads of bytes first guesses their encoding).  picluster's wire
# goes one step further, to the C scanner and encoder underneath these;
# the ceiling keeps to what a user of the json module would write.
_encode = json.JSONEncoder(separators=(",", ":")).encode
_decode = json.JSONDecoder().decode

# The typed ceiling's codec: picluster's own, made once.
_decode_typed = message_decoder.decode
_encode_typed = msgspec.json.Encoder().encode


def framed(data: bytes) -> bytes:
    """C{data} with its 4-byte big-endian length prefix: one whole frame."""
    return struct.pack("!I", len(data)) + data


def encode(envelope: dict[str, Any]) -> bytes:
    """An envelope as compact JSON bytes, as picluster's wire writes it."""
    return _encode(envelope).encode("utf-8")


class BareServer(Int32StringReceiver):
    """Decode every frame; reply to requests and keepalive pings."""

    MAX_LENGTH = MAX_FRAME

    def stringReceived(self, frame: bytes) -> None:
        message = _decode(frame.decode("utf-8"))
        request_id = message.get("id")
        if request_id is not None:
            self.sendString(encode(
                {"type": "reply", "payload": message.get("payload"), "reply_to": request_id}
            ))
        elif message.get("type") == "ping":
            self.sendString(encode({"type": "pong", "payload": message.get("payload")}))


class TypedServer(Int32StringReceiver):
    """
    L{BareServer} with picluster's typed codec: decode every frame into its
    declared message, payload and all, in one pass; reply to requests and
    keepalive pings.  A frame the codec refuses closes the connection (the
    generator sends none).
    """

    MAX_LENGTH = MAX_FRAME

    def stringReceived(self, frame: bytes) -> None:
        message = _decode_typed(frame)
        if message.id is not None:
            self.sendString(_encode_typed(Outgoing("reply", message.payload, reply_to=message.id)))
        elif message.message_type == "ping":
            self.sendString(_encode_typed(Outgoing("pong", message.payload)))


class BareClient(Int32StringReceiver):
    """
    Requests with ids over a bare connection: what a careful user writes
    in a few lines of Twisted, a Deferred per request and a dict of those
    still waiting.
    """

    MAX_LENGTH = MAX_FRAME

    def __init__(self) -> None:
        self.pending: dict[int, defer.Deferred[Any]] = {}
        self._ids = itertools.count(1)

    def call(self, message_type: str, payload: Any = None) -> defer.Deferred[Any]:
        request_id = next(self._ids)
        waiting: defer.Deferred[Any] = defer.Deferred()
        self.pending[request_id] = waiting
        self.sendString(encode({"type": message_type, "payload": payload, "id": request_id}))
        return waiting

    def stringReceived(self, frame: bytes) -> None:
        message = _decode(frame.decode("utf-8"))
        waiting = self.pending.pop(message.get("reply_to"), None)
        if waiting is not None:
            waiting.callback(message)


class Echo(protocol.Protocol):
    """
    The floor under every round trip: bytes back as they come, no framing,
    no JSON.  What is left of a round trip to it is the reactor's, the
    kernel's and the scheduler's, the same for every system measured.
    """

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


class EchoClient(protocol.Protocol):
    """Sends fixed-size requests and fires their Deferreds, in order, per echo."""

    SIZE = 8

    def __init__(self) -> None:
        self.waiting: collections.deque[defer.Deferred[Any]] = collections.deque()
        self._unread = 0

    def call(self, message_type: str, payload: Any = None) -> defer.Deferred[Any]:
        waiting: defer.Deferred[Any] = defer.Deferred()
        self.waiting.append(waiting)
        self.transport.write(b"x" * self.SIZE)
        return waiting

    def dataReceived(self, data: bytes) -> None:
        self._unread += len(data)
        while self._unread >= self.SIZE:
            self._unread -= self.SIZE
            self.waiting.popleft().callback(None)


SERVERS = {"serve": BareServer, "typed": TypedServer, "echo": Echo}


def serve(kind: str, port: int) -> None:
    from twisted.internet import reactor

    reactor.listenTCP(port, protocol.Factory.forProtocol(SERVERS[kind]), backlog=BACKLOG,
                      interface="127.0.0.1")
    reactor.callWhenRunning(print, "READY", flush=True)
    reactor.run()


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in SERVERS:
        print("usage: python -m bench.bare serve|typed|echo PORT", file=sys.stderr)
        return 2
    serve(argv[0], int(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
