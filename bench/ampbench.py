"""
The AMP baseline of rtt: Twisted's own request/reply protocol, doing what
the master does for a C{ping}.

C{python -m bench.ampbench serve PORT} runs a server answering L{Echo}
with its payload, until killed; it prints C{READY} once it listens.  The
client side is L{AMP.callRemote}, driven by L{bench.rttclient}.
"""

from __future__ import annotations

import sys

from twisted.internet import protocol
from twisted.protocols import amp


class Echo(amp.Command):
    """A cheap request: the payload comes back, as with picluster's C{ping}."""

    arguments = [(b"payload", amp.Integer())]
    response = [(b"payload", amp.Integer())]


class EchoServer(amp.AMP):
    @Echo.responder
    def echo(self, payload: int) -> dict[str, int]:
        return {"payload": payload}


class EchoServerFactory(protocol.Factory):
    protocol = EchoServer
    noisy = False


def serve(port: int) -> None:
    from twisted.internet import reactor

    from bench.bare import BACKLOG

    reactor.listenTCP(port, EchoServerFactory(), backlog=BACKLOG, interface="127.0.0.1")
    reactor.callWhenRunning(print, "READY", flush=True)
    reactor.run()


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "serve":
        print("usage: python -m bench.ampbench serve PORT", file=sys.stderr)
        return 2
    serve(int(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
