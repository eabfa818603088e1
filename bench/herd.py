"""
A herd of idle simulated slaves in one process, for the scale benchmark.

C{python -m bench.herd --master HOST:PORT --count N [--first I]}

Each simulated slave does what L{picluster.slave} does on joining, and no
more than an idle slave does after: a hello (over TLS with the proof of
C{--token-file}'s token, or plain without one; its uuid from the master
once it has one, so that a rejoin reclaims it), then its
computer_details, the master's own facts, and one vitals report (or
C{--vitals N}: enough to fill the dashboard's ring), so that the master
holds the whole of its per-node state (facts, latest vitals, the vitals
ring); then keepalive pings at the master's pace
(as C{min(ours, the welcome's)}, as the real slave, and as it, none while
the master was heard from within the keepalive), and a pong for every
ping of the master's.  When the master goes, each reconnects through its
own L{Backoff} with the real slave's policy (the delays of
L{picluster.slave.SlaveFactory}: spread after a session, short while the
master turns it away, longer after failures; reset on welcome).

The herd is lean so that it does not steal the master's core: frames that
recur are encoded once, a ping is answered by splicing bytes (no JSON), and
one timer per process paces every slave's pings.

It prints C{STATUS <json>} (its counts) whenever they change, at most five
times a second; on SIGUSR1 a line C{TIMES <json>} of the wall-clock times of
every rejoin and every failed connect so far; and on SIGTERM a last line
C{FINAL <json>} of both.

With C{--bare} each connects and does nothing else at all: the load for
the threaded baseline's C{--bare} floor.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from typing import Any

from twisted.internet import error, protocol, reactor, task
from twisted.internet.interfaces import IHandshakeListener
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.protocols.basic import Int32StringReceiver
from zope.interface import implementer

from bench import secure
from picluster import config, sysinfo, wire
from picluster.address import parse_master
from picluster.slave.backoff import Backoff
from picluster.slave.session import SlaveFactory

#: How a master's ping starts, and our answer; the payload is spliced over.
PING = b'{"type":"ping","payload":'
PONG = b'{"type":"pong","payload":'

#: A slave's keepalive unless told otherwise: the same default as twistd's.
DEFAULT_KEEPALIVE = next(s.default for s in config.COMMON_SETTINGS if s.name == "keepalive")

#: Request ids of the joining steps, in order.
HELLO, DETAILS, MASTER_INFO = 1, 2, 3

#: Seconds between two ticks of the herd's one ping timer.
TICK = 0.1

#: A connect that took this long lost its first SYN (Linux resends it after
#: 1 s): the master's listen queue was full.
SLOW_CONNECT = 0.9


def frame(message_type: str, payload: Any, id: int | None = None) -> bytes:
    envelope: dict[str, Any] = {"type": message_type, "payload": payload}
    if id is not None:
        envelope["id"] = id
    return wire.encode(envelope)


def pi_like_facts() -> tuple[dict[str, Any], dict[str, Any]]:
    """
    This machine's computer_details and one vitals sample, with what only a
    Pi reports filled in as a Pi reports it, so that the master keeps per
    node what it would keep for a real Pi.
    """
    facts = sysinfo.computer_details()
    facts["model"] = facts.get("model") or "Raspberry Pi 4 Model B Rev 1.4"
    sampled: list[dict[str, Any]] = []
    sysinfo.VitalsSampler(reactor=reactor, vcgencmd=False).sample().addCallback(sampled.append)
    vitals = sampled[0]
    if vitals.get("cpu_temperature") is None:
        vitals["cpu_temperature"] = 47.2
    if vitals.get("throttling") is None:
        vitals["throttling"] = sysinfo.decode_throttled(0)
        vitals["under_voltage"] = False
    return facts, vitals


@implementer(IHandshakeListener)
class SimSlave(Int32StringReceiver):
    """One simulated slave's connection."""

    MAX_LENGTH = wire.DEFAULT_MAX_FRAME
    factory: SimSlaveFactory
    welcomed = False
    settled = False
    gone = False
    #: When the master last said anything (the herd's clock, monotonic).
    heard_at = 0.0

    def connectionMade(self) -> None:
        herd = self.factory.herd
        herd.connected(self)
        if herd.bare:
            herd.settled += 1
            herd.last_settled_at = time.time()
            return
        if herd.token is None:
            self.say_hello()

    def handshakeCompleted(self) -> None:
        """Over TLS, the hello goes once the master's chain is checked, as a real slave's."""
        self.say_hello()

    def say_hello(self) -> None:
        hello = secure.hello(self.factory.herd.token, "slave", self.transport, uuid=self.factory.uuid,
                             node_key=self.factory.node_key)
        self.sendString(frame("hello", hello, HELLO))

    def stringReceived(self, data: bytes) -> None:
        self.heard_at = time.monotonic()
        if data.startswith(PING):
            self.sendString(PONG + data[len(PING):])
            self.factory.herd.counts["pongs_sent"] += 1
            return
        if data.startswith(PONG):
            return
        envelope = json.loads(data)
        step = envelope.get("reply_to")
        herd = self.factory.herd
        if step == HELLO:
            welcome = envelope["payload"]
            if envelope["type"] != "welcome":
                herd.count("refused_hellos")
                self.factory.rebuffed()
                self.transport.loseConnection()
                return
            herd.welcomed(self, welcome)
            self.sendString(herd.details_frame(self.factory))
        elif step == DETAILS:
            self.sendString(herd.master_info_frame)
        elif step == MASTER_INFO:
            for _ in range(herd.vitals_count):
                self.sendString(herd.vitals_frame)
            self.settled = True
            herd.settle(self)
        else:
            herd.count("unexpected_frames")

    def connectionLost(self, reason: Any = protocol.connectionDone) -> None:
        self.gone = True
        if self.factory.herd.bare:
            self.factory.herd.settled -= 1
        self.factory.herd.lost(self, reason)


class SimSlaveFactory(Backoff):
    """
    One simulated slave: its uuid and its reconnection backoff, with the
    real slave's policy.
    """

    protocol = SimSlave
    noisy = False
    initialDelay = delay = SlaveFactory.initialDelay
    maxDelay = SlaveFactory.maxDelay

    connection: SimSlave | None = None
    attempt_started = 0.0

    def __init__(self, herd: Herd, index: int):
        self.herd = herd
        self.index = index
        self.uuid: str | None = None
        self.node_key: str | None = None
        self.joined_before = False

    def startedConnecting(self, connector: Any) -> None:
        super().startedConnecting(connector)
        self.attempt_started = time.monotonic()
        self.herd.count("attempts")

    def buildProtocol(self, addr: Any) -> SimSlave:
        self.connection = super().buildProtocol(addr)
        return self.connection

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        self.herd.failed(reason)
        super().clientConnectionFailed(connector, reason)

    def clientConnectionLost(self, connector: Any, reason: Any) -> None:
        self.connection = None
        super().clientConnectionLost(connector, reason)


class Herd:
    """The simulated slaves of this process, and their counts."""

    def __init__(self, options: argparse.Namespace):
        self.master = parse_master(options.master)
        self.keepalive = options.keepalive
        self.vitals_count = options.vitals
        self.bare = options.bare
        #: The slave token of a secure master; plain without one.
        self.token = secure.token_from(options.token_file)
        facts, vitals = pi_like_facts()
        self.facts = facts
        self.vitals_frame = frame("vitals", vitals)
        self.master_info_frame = frame("info", "computer_details", MASTER_INFO)
        self.slaves = [SimSlaveFactory(self, options.first + i) for i in range(options.count)]
        self.counts: dict[str, int] = dict.fromkeys(
            ["attempts", "connects", "slow_connects", "refused", "timed_out", "other_failures",
             "welcomes", "rejoins", "new_uuids", "lost_before_welcome", "lost_after_welcome",
             "refused_hellos", "unexpected_frames", "pings_sent", "pongs_sent"], 0)
        self.lost_reasons: dict[str, int] = {}
        self.live = 0
        self.settled = 0
        self.rejoin_times: list[float] = []
        # Wall-clock times: the first connect, and the latest slave to settle.
        self.started_at: float | None = None
        self.last_settled_at: float | None = None
        self.failure_times: list[tuple[float, str]] = []
        # Connections to ping, in turn: each gets one ping per keepalive.
        self.pinged: list[SimSlave] = []
        self._ping_at = 0
        self._ping_share = 0.0
        self._shown: Any = None

    # -- joining -------------------------------------------------------------

    def start(self, rate: float) -> None:
        """Connect every slave, C{rate} a second."""
        self.started_at = time.time()
        pending = iter(self.slaves)
        per_tick = max(1, round(rate * TICK))

        def connect_some() -> None:
            for _ in range(per_tick):
                slave = next(pending, None)
                if slave is None:
                    starting.stop()
                    return
                reactor.connectTCP(self.master.host, self.master.port,
                                   secure.wrap(slave, self.token), timeout=self.master.timeout,
                                   bindAddress=secure.source_address(slave.index, self.master.host))

        starting = task.LoopingCall(connect_some)
        starting.start(TICK)
        task.LoopingCall(self.tick).start(TICK, now=False)
        task.LoopingCall(self.show).start(0.2)

    def details_frame(self, slave: SimSlaveFactory) -> bytes:
        return frame("computer_details", {**self.facts, "hostname": f"sim-{slave.index:05d}"},
                     DETAILS)

    def count(self, key: str, by: int = 1) -> None:
        self.counts[key] += by

    def connected(self, connection: SimSlave) -> None:
        slave = connection.factory
        self.count("connects")
        if time.monotonic() - slave.attempt_started >= SLOW_CONNECT:
            self.count("slow_connects")

    def welcomed(self, connection: SimSlave, welcome: dict[str, Any]) -> None:
        slave = connection.factory
        connection.welcomed = True
        self.count("welcomes")
        if slave.joined_before:
            if welcome["uuid"] == slave.uuid:
                self.count("rejoins")
                self.rejoin_times.append(time.time())
            else:
                self.count("new_uuids")
        slave.joined_before = True
        slave.uuid = welcome["uuid"]
        if welcome.get("node_key") is not None:
            # Its node key, as a real slave keeps it, to take the uuid back.
            slave.node_key = welcome["node_key"]
        slave.joined()
        self.keepalive = min(self.keepalive, float(welcome["keepalive"]))
        self.live += 1

    def settle(self, connection: SimSlave) -> None:
        self.settled += 1
        self.last_settled_at = time.time()
        self.pinged.append(connection)

    def lost(self, connection: SimSlave, reason: Any) -> None:
        why = reason.type.__name__
        self.lost_reasons[why] = self.lost_reasons.get(why, 0) + 1
        if connection.welcomed:
            self.live -= 1
            self.count("lost_after_welcome")
        else:
            self.count("lost_before_welcome")
        if connection.settled:
            self.settled -= 1

    def failed(self, reason: Any) -> None:
        if reason.check(error.ConnectionRefusedError):
            kind = "refused"
        elif reason.check(error.TimeoutError):
            kind = "timed_out"
        else:
            kind = "other_failures"
        self.count(kind)
        self.failure_times.append((time.time(), kind))

    # -- idling ------------------------------------------------------------

    def tick(self) -> None:
        """Ping this tick's share of the connections, as their keepalives fall due."""
        pinged = self.pinged
        if not pinged:
            return
        self._ping_share += len(pinged) * TICK / self.keepalive
        due = int(self._ping_share)
        self._ping_share -= due
        ping = PING + repr(time.time()).encode() + b"}"
        # As a real slave, spare a master heard from within the keepalive.
        heard_after = time.monotonic() - self.keepalive
        at = self._ping_at
        sent = 0
        for _ in range(due):
            if not pinged:
                break
            if at >= len(pinged):
                at = 0
            connection = pinged[at]
            if connection.gone:
                # Swap-remove: the order of turns does not matter.
                pinged[at] = pinged[-1]
                pinged.pop()
                continue
            if connection.heard_at < heard_after:
                connection.sendString(ping)
                sent += 1
            at += 1
        self._ping_at = at
        self.count("pings_sent", sent)

    # -- reporting ---------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {**self.counts, "count": len(self.slaves), "live": self.live,
                "settled": self.settled}

    def show(self) -> None:
        shown = self.status()
        if shown != self._shown:
            self._shown = shown
            print("STATUS", json.dumps(shown), flush=True)

    def times(self) -> dict[str, Any]:
        return {**self.status(), "lost_reasons": self.lost_reasons,
                "started_at": self.started_at, "last_settled_at": self.last_settled_at,
                "rejoin_times": self.rejoin_times,
                "failure_times": self.failure_times}

    def show_times(self) -> None:
        print("TIMES", json.dumps(self.times()), flush=True)

    def final(self) -> None:
        print("FINAL", json.dumps(self.times()), flush=True)


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.herd", description=__doc__)
    parser.add_argument("--master", required=True, help="HOST:PORT of the master")
    parser.add_argument("--count", type=int, required=True, help="simulated slaves")
    parser.add_argument("--first", type=int, default=0, help="index of the first (for hostnames)")
    parser.add_argument("--rate", type=float, default=1000.0, help="connects a second at start")
    parser.add_argument("--keepalive", type=float, default=DEFAULT_KEEPALIVE,
                        help="our own keepalive, before the master's (default: the slave's)")
    parser.add_argument("--vitals", type=int, default=1, help="vitals reports sent on joining")
    parser.add_argument("--bare", action="store_true", help="connect, and do nothing else")
    parser.add_argument("--token-file", default=None,
                        help="join a secure master with this slave token (plain without it)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    options = parse_arguments(sys.argv[1:] if argv is None else argv)
    # Warnings and errors only (a slave's protocol failing, say), on stderr.
    globalLogBeginner.beginLoggingTo([FilteringLogObserver(
        textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(LogLevel.warn)])],
        redirectStandardIO=False)
    herd = Herd(options)
    reactor.addSystemEventTrigger("before", "shutdown", herd.final)
    signal.signal(signal.SIGUSR1, lambda *_: reactor.callFromThread(herd.show_times))
    reactor.callWhenRunning(herd.start, options.rate)
    reactor.run()


if __name__ == "__main__":
    main()
