"""
Simulated slaves for the ingest benchmark: many connections, pre-encoded frames.

C{python -m bench.slavesim --port P --connections C --frames F --rounds R}
opens C connections to a master (or to the bare ceiling, L{bench.bare}),
and on each says hello as a real slave does (C{hello} with role C{slave};
over TLS with the proof of C{--token-file}'s token, or plain version 1
without one; its C{computer_details}, C{info computer_details}),
then prints C{READY}.  Each SIGUSR1 starts one round: every connection
writes F frames (C{vitals} and keepalive C{ping}s in the proportions given)
followed by one request with an id, and the round ends when every
connection has its reply.  Between rounds each connection pings every 5 s,
as an idle slave does.  Frames are handled in order on a connection, so
that reply means every earlier frame of it was handled.  The round's
figures go to stdout as one JSON line: start and end (C{time.monotonic},
the same clock in every process on Linux), frames sent, CPU used here.

The frames are encoded once, at start, from one real sample of
L{picluster.sysinfo.VitalsSampler}: the generator does no per-frame work
in Python, so it leaves the server's core alone.  A whole round of a
connection is one C{write} of one shared bytes object; Twisted writes it out
as the server reads.  Meanwhile the generator answers the master's own
keepalive pings with pongs, as a slave must or be dropped, and drops the
pongs that answer its pings unread.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.task import LoopingCall
from twisted.protocols.basic import Int32StringReceiver
from zope.interface import implementer

from bench import secure
from bench.bare import MAX_FRAME, encode, framed
from picluster import sysinfo
from picluster.trust.token import JoinToken

#: Seconds between keepalive pings between rounds: a slave's default.
KEEPALIVE = 5.0

#: Connection attempts in progress at once: enough to connect a thousand in
#: a second or so, few enough not to overrun a listening backlog.
CONNECTING_AT_ONCE = 100

_PING_PREFIX = b'{"type":"ping"'
_PONG_PREFIX = b'{"type":"pong"'


def sample_vitals() -> dict[str, Any]:
    """
    One real vitals sample of this machine, as a slave sends it; where this
    machine has no Pi firmware, the throttling a healthy Pi reports.
    """
    sampled: list[dict[str, Any]] = []
    sysinfo.VitalsSampler(reactor=reactor, vcgencmd=False).sample().addCallback(sampled.append)
    vitals = sampled[0]
    if vitals.get("throttling") is None:
        vitals["throttling"] = sysinfo.decode_throttled(0)
        vitals["under_voltage"] = False
    return vitals


def round_stream(frames: int, pings_per_vitals: float) -> tuple[bytes, int, int]:
    """
    The frames one connection sends in a round, as one bytes object: vitals
    and keepalive pings interleaved in the given proportion.

    @return: The bytes, and how many vitals and pings they hold.
    """
    vitals = framed(encode({"type": "vitals", "payload": sample_vitals()}))
    # A real slave's ping carries its clock; the master echoes it back.
    ping = framed(encode({"type": "ping", "payload": time.time()}))
    parts = []
    pings_owed = 0.0
    vitals_count = pings_count = 0
    for _ in range(frames):
        if pings_owed >= 1.0:
            parts.append(ping)
            pings_owed -= 1.0
            pings_count += 1
        else:
            parts.append(vitals)
            pings_owed += pings_per_vitals
            vitals_count += 1
    return b"".join(parts), vitals_count, pings_count


@implementer(IHandshakeListener)
class SimulatedSlave(Int32StringReceiver):
    """
    One simulated slave's connection: a handshake, then rounds of frames.

    Replies are matched by id; anything else the server sends is a ping to
    answer or a pong to drop, both recognised by their first bytes (the
    master writes C{type} first), so the generator parses next to nothing.
    """

    MAX_LENGTH = MAX_FRAME
    factory: SimulatedSlaves

    def __init__(self) -> None:
        self.waiting: dict[int, defer.Deferred[dict[str, Any]]] = {}

    def connectionMade(self) -> None:
        if self.factory.token is None:
            self.factory.connected(self)

    def handshakeCompleted(self) -> None:
        """Over TLS: the session starts once the master is checked, as a real slave's does."""
        self.factory.connected(self)

    def request(self, request_id: int, message_type: str, payload: Any) -> defer.Deferred[Any]:
        waiting: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self.waiting[request_id] = waiting
        self.sendString(encode({"type": message_type, "payload": payload, "id": request_id}))
        return waiting.addCallback(_accepted, message_type)

    def handshake(self, facts: dict[str, Any]) -> defer.Deferred[Any]:
        """What a real slave says first (it offers no work: it runs no tasks)."""
        hello = secure.hello(self.factory.token, "slave", self.transport)
        return defer.gatherResults([
            self.request(1, "hello", hello),
            self.request(2, "computer_details", facts),
            self.request(3, "info", "computer_details"),
        ], consumeErrors=True)

    def stream(self, data: bytes, request_id: int) -> defer.Deferred[Any]:
        """Send a round's frames, then a request whose reply ends the round."""
        waiting: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self.waiting[request_id] = waiting
        self.transport.write(data)
        self.sendString(encode({"type": "info", "payload": "uuid", "id": request_id}))
        return waiting.addCallback(_accepted, "info")

    def stringReceived(self, frame: bytes) -> None:
        if frame.startswith(_PONG_PREFIX):
            return
        if frame.startswith(_PING_PREFIX):
            self.sendString(_PONG_PREFIX + frame[len(_PING_PREFIX):])
            return
        message = json.loads(frame)
        waiting = self.waiting.pop(message.get("reply_to"), None)
        if waiting is not None:
            waiting.callback(message)

    def connectionLost(self, reason: Any = protocol.connectionDone) -> None:
        waiting, self.waiting = self.waiting, {}
        for one in waiting.values():
            one.errback(reason)
        self.factory.lost(self, reason)


def _accepted(reply: dict[str, Any], message_type: str) -> dict[str, Any]:
    if reply.get("type") in ("bad_message", "error"):
        raise RuntimeError(f"{message_type} refused: {reply.get('payload')!r}")
    return reply


class SimulatedSlaves(protocol.ClientFactory):
    """All the connections of one generator process, and their rounds."""

    protocol = SimulatedSlave
    noisy = False

    def __init__(self, port: int, connections: int, frames: int, pings_per_vitals: float,
                 token: JoinToken | None = None):
        self.port = port
        self.token = token
        self.wanted = connections
        self.slaves: list[SimulatedSlave] = []
        self.data, self.vitals, self.pings = round_stream(frames, pings_per_vitals)
        self.frames = frames
        self.facts = sysinfo.computer_details()
        self.rounds = 0
        self.ready: defer.Deferred[None] = defer.Deferred()
        self.running_round = False
        self.failed: str | None = None
        self._attempts = 0
        self._shaken_hands = 0

    # -- connecting ------------------------------------------------------------

    def start(self) -> defer.Deferred[None]:
        for _ in range(min(CONNECTING_AT_ONCE, self.wanted)):
            self._connect_one()
        return self.ready

    def _connect_one(self) -> None:
        if self._attempts < self.wanted:
            self._attempts += 1
            reactor.connectTCP("127.0.0.1", self.port, secure.wrap(self, self.token), timeout=30,
                               bindAddress=secure.source_address(self._attempts, "127.0.0.1"))

    def connected(self, slave: SimulatedSlave) -> None:
        self.slaves.append(slave)
        shaken = slave.handshake(self.facts)
        shaken.addCallback(self._shaken)
        shaken.addErrback(self._fail)

    def _shaken(self, _: Any) -> None:
        self._connect_one()
        self._shaken_hands += 1
        if self._shaken_hands == self.wanted and not self.ready.called:
            LoopingCall(self._keep_alive).start(KEEPALIVE, now=False)
            self.ready.callback(None)

    def _keep_alive(self) -> None:
        """
        Between rounds, ping as an idle slave does, or the master would
        rightly count a slave silent while the other server has its turn.
        """
        if not self.running_round:
            ping = encode({"type": "ping", "payload": time.time()})
            for slave in self.slaves:
                slave.sendString(ping)

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        self._fail(reason)

    def lost(self, slave: SimulatedSlave, reason: Any) -> None:
        if not self.failed:
            self._fail(reason)

    def _fail(self, reason: Any) -> None:
        if self.failed:
            return
        self.failed = getattr(reason, "getErrorMessage", lambda: str(reason))()
        print(json.dumps({"error": self.failed}), flush=True)
        if reactor.running:
            reactor.stop()

    # -- rounds ----------------------------------------------------------------

    def run_round(self) -> None:
        if self.running_round or self.failed:
            return
        self.running_round = True
        self.rounds += 1
        request_id = 1000 + self.rounds
        cpu_before = time.process_time()
        started = time.monotonic()
        done = defer.gatherResults(
            [slave.stream(self.data, request_id) for slave in self.slaves], consumeErrors=True
        )
        done.addCallback(self._round_done, started, cpu_before)
        done.addErrback(self._fail)

    def _round_done(self, _: Any, started: float, cpu_before: float) -> None:
        ended = time.monotonic()
        self.running_round = False
        slaves = len(self.slaves)
        print(json.dumps({
            "round": self.rounds,
            "start": started,
            "end": ended,
            # Every connection's frames, and its closing request.
            "frames": slaves * (self.frames + 1),
            "vitals": slaves * self.vitals,
            "pings": slaves * self.pings,
            "cpu": time.process_time() - cpu_before,
        }), flush=True)


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.slavesim")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, required=True)
    parser.add_argument("--frames", type=int, required=True, help="frames a connection sends a round")
    parser.add_argument("--pings-per-vitals", type=float, default=2.0)
    parser.add_argument("--token-file", default=None,
                        help="join a secure master with this slave token (plain without it)")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    options = parse_arguments(argv)
    slaves = SimulatedSlaves(options.port, options.connections, options.frames,
                             options.pings_per_vitals, secure.token_from(options.token_file))

    def ready(_: Any) -> None:
        print(f"READY {len(slaves.slaves)} connections, {len(slaves.data)} bytes a round each",
              flush=True)

    slaves.start().addCallback(ready)
    # A signal handler may not touch the reactor: callFromThread only queues
    # the call and wakes the reactor up, which is safe from one.
    signal.signal(signal.SIGUSR1, lambda *_: reactor.callFromThread(slaves.run_round))
    reactor.run()
    return 1 if slaves.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
