"""
Tests for L{picluster.slave}: the session with the master, and rejoining it.
"""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

import msgspec
from twisted.internet import defer
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs, eventAsJSON, formatEvent
from twisted.python.failure import Failure
from twisted.trial import unittest

from picluster import wire
from picluster.address import MasterAddress
from picluster.clockwatch import ClockWatch
from picluster.slave.backoff import BUSY_DELAY
from picluster.slave.results import RESULT_ENVELOPE_ROOM, WaitingResults
from picluster.slave.runner import TaskRunner
from picluster.slave.session import KEEPALIVE_FLOOR, SlaveFactory, SlaveService
from picluster.tasks import Task, TaskCatalog
from picluster.text import MAX_TEXT
from picluster.trust.channel import UntrustedMaster
from picluster.trust.token import JoinToken, new_secret
from picluster.wire.messages import MAX_MESSAGE_BYTES, ComputerDetails, RunTask, Vitals
from tests.taskhelpers import FakeClient, SynchronousPool, task_master

from .helpers import (
    SLAVE_FACTS,
    VITALS,
    FakeSampler,
    connect,
    connect_pair,
    frame,
    master_factory,
    sent,
    slave_factory,
)


class SessionTests(unittest.TestCase):
    """
    Over one connection the slave says hello, introduces itself and reports.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.master = master_factory(self.clock, keepalive=5)
        self.slave = slave_factory(self.clock, keepalive=5, vitals_interval=60)

    def join(self) -> tuple[Any, Any, Any]:
        slave_protocol, master_protocol, pump = connect_pair(self.master, self.slave, self.clock)
        pump.flush()
        return slave_protocol, master_protocol, pump

    def run_for(self, pump: Any, seconds: int) -> None:
        """Let time pass a second at a time, delivering what is sent."""
        for _ in range(seconds):
            self.clock.advance(1)
            pump.flush()

    def test_joins(self) -> None:
        """The master learns the slave's uuid, facts and first vitals."""
        slave_protocol, master_protocol, pump = self.join()
        [record] = list(self.master.registry)
        self.assertEqual(self.slave.uuid, record.uuid)
        self.assertEqual(record.computer_details, msgspec.convert(SLAVE_FACTS, ComputerDetails))
        self.assertEqual(record.vitals, msgspec.convert(VITALS, Vitals))
        self.assertEqual(self.slave.sampler.samples, 1)
        self.assertNoResult(slave_protocol.handler.session)

    def test_vitalsEveryInterval(self) -> None:
        """Vitals go out every vitals interval while the connection lasts."""
        slave_protocol, master_protocol, pump = self.join()
        self.run_for(pump, 180)
        self.assertEqual(self.slave.sampler.samples, 4)
        [record] = list(self.master.registry)
        self.assertEqual(record.vitals_received_at, self.clock.seconds())

    def test_keepsConnectionAlive(self) -> None:
        """With keepalives both ways, a quiet cluster stays connected for hours."""
        slave_protocol, master_protocol, pump = self.join()
        self.run_for(pump, 3600)
        self.assertIsNone(slave_protocol.lost)
        self.assertIsNone(master_protocol.lost)
        self.assertIsNotNone(slave_protocol.rtt_ms)
        self.assertIsNotNone(master_protocol.rtt_ms)

    def test_pingsAsOftenAsMasterWants(self) -> None:
        """A slave set to ping rarely pings as often as the master's keepalive."""
        self.slave = slave_factory(self.clock, keepalive=60, dead_after=180)
        self.master = master_factory(self.clock, keepalive=2)
        slave_protocol, master_protocol, pump = self.join()
        self.assertEqual(slave_protocol._keepalive.interval, 2)
        self.run_for(pump, 20)
        self.assertIsNone(master_protocol.lost, "master dropped a slave that pings too rarely")

    def test_masterGoes(self) -> None:
        """When the master goes, the session's errback logs it and stops reporting."""
        slave_protocol, master_protocol, pump = self.join()
        with capturedLogs() as events:
            master_protocol.transport.loseConnection()
            pump.flush()
        self.assertIn(
            "Got disconnection exception with message: Lost connection to master"
            " 10.0.0.1:12345: connection closed by peer",
            [formatEvent(e) for e in events],
        )
        samples = self.slave.sampler.samples
        self.clock.advance(600)
        self.assertEqual(self.slave.sampler.samples, samples)
        self.assertIsNone(self.successResultOf(slave_protocol.handler.session))

    def test_rejoinsWithSameUuid(self) -> None:
        """After the master restarts, the slave presents and keeps its uuid."""
        slave_protocol, master_protocol, pump = self.join()
        uuid = self.slave.uuid
        master_protocol.transport.loseConnection()
        pump.flush()
        self.master = master_factory(self.clock, keepalive=5)  # a restarted master
        self.join()
        [record] = list(self.master.registry)
        self.assertEqual(record.uuid, uuid)
        self.assertEqual(self.slave.uuid, uuid)


class HandshakeFailureTests(unittest.TestCase):
    """
    A master that refuses or ignores the slave gets its connection closed.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.slave = slave_factory(self.clock, keepalive=5)
        self.protocol, self.transport = connect(self.slave, host="10.0.0.1", port=12345)
        [self.hello] = sent(self.transport)

    def test_hello(self) -> None:
        """The first thing a slave sends is a hello with its uuid and version."""
        self.assertEqual(self.hello["type"], "hello")
        self.assertEqual(self.hello["payload"], {"uuid": None, "version": 1, "role": "slave"})

    def test_helloRefused(self) -> None:
        """A bad_message answer to hello closes the connection, logged in one line."""
        with capturedLogs() as events:
            self.protocol.dataReceived(
                frame({"type": "bad_message", "payload": {"error": "unsupported protocol version"},
                       "reply_to": self.hello["id"]})
            )
        self.assertTrue(self.transport.disconnecting)
        [line] = [event for event in events if event.get("log_level") == LogLevel.error]
        self.assertIn("hello refused by peer (bad_message): unsupported protocol version",
                      formatEvent(line))
        self.assertNotIn("log_failure", line)
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertIn("unsupported protocol version", self.protocol.lost.cause)

    def test_badWelcome(self) -> None:
        """A welcome without a valid uuid closes the connection, logged in one line."""
        with capturedLogs() as events:
            self.protocol.dataReceived(
                frame({"type": "welcome", "payload": {"uuid": "nope", "keepalive": 5},
                       "reply_to": self.hello["id"]})
            )
        [line] = [event for event in events if event.get("log_level") == LogLevel.error]
        self.assertIn("the master's welcome is malformed", formatEvent(line))
        self.assertTrue(self.transport.disconnecting)
        self.assertIsNone(self.slave.uuid)

    def test_silentMaster(self) -> None:
        """A master that never answers is dropped after dead_after seconds."""
        self.clock.advance(15)
        self.assertTrue(self.transport.disconnecting)


class FakeConnector:
    """Counts connection attempts, as a reactor's connector would make them."""

    def __init__(self) -> None:
        self.attempts = 0

    def connect(self) -> None:
        self.attempts += 1

    def stopConnecting(self) -> None:
        pass


class Draws:
    """A stand-in for L{random}: every draw lands C{share} of the way up its range."""

    def __init__(self, share: float):
        self.share = share

    def uniform(self, low: float, high: float) -> float:
        return low + self.share * (high - low)


class ReconnectionTests(unittest.TestCase):
    """
    The slave's factory retries after a delay that depends on how the last
    attempt ended: spread after a session, bounded while turned away, up to
    max_delay after failures; reset by a welcome.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.slave = slave_factory(self.clock, initial_delay=1.0, max_delay=10.0)
        self.slave.random = Draws(1.0)
        self.connector = FakeConnector()

    def next_retry(self) -> float:
        """How long until the retry just scheduled; then let it happen."""
        [call] = self.clock.getDelayedCalls()
        delay = call.getTime() - self.clock.seconds()
        self.clock.advance(delay)
        return delay

    def fail_once(self) -> float:
        """Fail a connection attempt; return how long until the retry."""
        self.slave.startedConnecting(self.connector)
        self.slave.clientConnectionFailed(self.connector, Failure(ConnectionRefusedError()))
        return self.next_retry()

    def turned_away_once(self) -> float:
        """Connect, and have the master close before any welcome; return the wait."""
        self.slave.startedConnecting(self.connector)
        self.slave.clientConnectionLost(self.connector, Failure(ConnectionDone()))
        return self.next_retry()

    def welcome(self) -> tuple[Any, Any]:
        """Connect and be welcomed; return the protocol and its transport."""
        self.slave.startedConnecting(self.connector)
        protocol, transport = connect(self.slave, host="10.0.0.1", port=12345)
        [hello] = sent(transport)
        protocol.dataReceived(frame({"type": "welcome", "reply_to": hello["id"], "payload": {
            "uuid": "ab" * 16, "keepalive": 5, "dead_after": 15}}))
        return protocol, transport

    def lose(self, protocol: Any) -> float:
        """Lose C{protocol}'s connection; return the wait before the retry."""
        protocol.connectionLost(Failure(ConnectionDone()))
        self.slave.clientConnectionLost(self.connector, Failure(ConnectionDone()))
        [retry] = [c for c in self.clock.getDelayedCalls() if c.func.__name__ == "reconnector"]
        return retry.getTime() - self.clock.seconds()

    def test_defaultPolicy(self) -> None:
        """
        Unless told otherwise, the delays are the class's own, which
        simulated slaves (bench.herd) reuse.
        """
        slave = SlaveFactory(MasterAddress("10.0.0.1", 12345), computer_details={},
                             sampler=FakeSampler(), clock=self.clock)
        self.assertEqual((slave.initialDelay, slave.delay, slave.maxDelay),
                         (SlaveFactory.initialDelay, SlaveFactory.initialDelay, SlaveFactory.maxDelay))
        self.assertEqual((SlaveFactory.initialDelay, SlaveFactory.maxDelay, SlaveFactory.busyDelay,
                          SlaveFactory.growth), (1.0, 60.0, BUSY_DELAY, 3.0))

    def test_firstRetryWithinInitialDelay(self) -> None:
        """After a session, the first retry comes at a random moment within initial_delay."""
        for share, expected in ((1.0, 1.0), (0.0, 0.0), (0.25, 0.25)):
            self.slave.random = Draws(share)
            protocol, _ = self.welcome()
            self.assertAlmostEqual(self.lose(protocol), expected)
            self.clock.advance(expected)
        self.assertEqual(self.connector.attempts, 3)

    def test_failuresGrowToMax(self) -> None:
        """Each failed attempt waits up to three times the last, never above max_delay."""
        delays = [self.fail_once() for _ in range(4)]
        self.assertEqual(delays, [3.0, 9.0, 10.0, 10.0])
        self.assertEqual(self.connector.attempts, 4)

    def test_failuresWaitAtLeastInitialDelay(self) -> None:
        """The shortest wait after a failure is initial_delay: no busy loop."""
        self.slave.random = Draws(0.0)
        self.assertEqual([self.fail_once() for _ in range(3)], [1.0, 1.0, 1.0])

    def test_turnedAwayWaitsAtMostBusyDelay(self) -> None:
        """
        A master that closed before a welcome, without a word, is up and
        busy: the waits grow as after failures, but only to busyDelay.
        """
        self.slave.maxDelay = 60.0
        delays = [self.turned_away_once() for _ in range(4)]
        self.assertEqual(delays, [3.0, BUSY_DELAY, BUSY_DELAY, BUSY_DELAY])
        self.assertEqual([self.fail_once() for _ in range(2)], [3 * BUSY_DELAY, 60.0])

    def test_busyDelayNeverAboveMaxDelay(self) -> None:
        """With a max_delay below busyDelay, turned-away attempts wait at most max_delay."""
        self.slave.maxDelay = 5.0
        self.assertEqual([self.turned_away_once() for _ in range(3)], [3.0, 5.0, 5.0])

    def test_refusedHelloIsAFailure(self) -> None:
        """A hello the master refuses backs off as a failure, to max_delay."""
        self.slave.maxDelay = 60.0
        delays = []
        for _ in range(3):
            self.slave.startedConnecting(self.connector)
            protocol, transport = connect(self.slave, host="10.0.0.1", port=12345)
            [hello] = sent(transport)
            with capturedLogs():
                protocol.dataReceived(frame({"type": "error", "reply_to": hello["id"],
                                             "payload": {"error": "authentication failed"}}))
            self.assertTrue(transport.disconnecting)
            delays.append(self.lose(protocol))
            self.clock.advance(delays[-1])
        self.assertEqual(delays, [3.0, 9.0, 27.0])

    def test_untrustedMasterIsAFailure(self) -> None:
        """A master whose certificate the token does not pin backs off as a failure."""
        self.slave.token = JoinToken("ab" * 32, "slave", new_secret())
        self.slave.maxDelay = 60.0
        unpinned = SimpleNamespace(transport=SimpleNamespace(getHandle=lambda: SimpleNamespace(
            get_peer_cert_chain=lambda as_cryptography: [])))
        delays = []
        for _ in range(3):
            self.slave.startedConnecting(self.connector)
            self.assertRaises(UntrustedMaster, self.slave.check_peer, unpinned)
            self.slave.clientConnectionLost(self.connector, Failure(ConnectionDone()))
            delays.append(self.next_retry())
        self.assertEqual(delays, [3.0, 9.0, 27.0])

    def test_jitterSpreads(self) -> None:
        """Drawn at random, the waits of a herd turned away spread over their whole range."""
        self.slave.random = random.Random(14)
        delays = set()
        for _ in range(50):
            self.slave.resetDelay()
            delays.add(round(self.turned_away_once(), 6))
        self.assertGreater(len(delays), 40)
        self.assertTrue(all(1.0 <= d <= 3.0 for d in delays), delays)
        self.assertLess(min(delays), 1.5)
        self.assertGreater(max(delays), 2.5)

    def test_resetAfterWelcome(self) -> None:
        """A welcome resets the delay, so the next loss retries promptly."""
        for _ in range(4):
            self.fail_once()
        protocol, _ = self.welcome()
        self.assertAlmostEqual(self.lose(protocol), 1.0)
        self.assertEqual(self.slave.delay, 1.0)

    def test_refusedLogged(self) -> None:
        """A refused attempt is logged as a disconnection naming the master."""
        self.slave.random = Draws(0.0)
        with capturedLogs() as events:
            self.fail_once()
        messages = [formatEvent(e) for e in events]
        self.assertIn(
            "Got disconnection exception with message: Lost connection to master"
            " 10.0.0.1:12345: connection refused",
            messages,
        )
        self.assertIn("Reconnecting to master 10.0.0.1:12345 in 1.0 s", messages)


class ServiceTests(unittest.TestCase):
    """
    SlaveService connects on start and stops trying on stop.
    """

    def test_connectsToMaster(self) -> None:
        """Starting the service connects to the configured master."""
        reactor = MemoryReactorClock()
        factory = slave_factory(reactor)
        service = SlaveService(factory, reactor=reactor)
        service.startService()
        [(host, port, used_factory, timeout, _)] = reactor.tcpClients
        self.assertEqual((host, port, used_factory, timeout), ("10.0.0.1", 12345, factory, 30.0))

    def test_stopStopsTrying(self) -> None:
        """Stopping the service cancels a pending retry and tries no more."""
        reactor = MemoryReactorClock()
        factory = slave_factory(reactor)
        service = SlaveService(factory, reactor=reactor)
        service.startService()
        factory.clientConnectionFailed(service.connector, Failure(ConnectionRefusedError()))
        self.assertEqual(len(reactor.getDelayedCalls()), 1)
        service.stopService()
        self.assertEqual(reactor.getDelayedCalls(), [])
        self.assertFalse(factory.continueTrying)

    def test_clockWatchedWhileRunning(self) -> None:
        """A clock watch given to the service runs while it does, and leaves no timer behind."""
        reactor = MemoryReactorClock()
        watch = ClockWatch(reactor)
        service = SlaveService(slave_factory(reactor), reactor=reactor, clock_watch=watch)
        service.startService()
        self.assertTrue(watch.running)
        self.assertEqual(len(reactor.getDelayedCalls()), 1)
        service.stopService()
        self.assertFalse(watch.running)
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_stopClosesConnection(self) -> None:
        """Stopping the service closes a live connection and waits for it."""
        reactor = MemoryReactorClock()
        factory = slave_factory(reactor)
        service = SlaveService(factory, reactor=reactor)
        service.startService()
        protocol, transport = connect(factory, host="10.0.0.1", port=12345)
        stopped = service.stopService()
        self.assertTrue(transport.disconnecting)
        self.assertNoResult(stopped)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(stopped)
        self.assertEqual(protocol.lost.cause, "slave shutting down")


class HostileMasterTests(unittest.TestCase):
    """
    What a master chooses (its keepalive, its texts, how many it sends) is
    bounded on the slave.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.slave = slave_factory(self.clock, keepalive=5, vitals_interval=3600)
        self.protocol, self.transport = connect(self.slave, host="10.0.0.1", port=12345)

    def answer(self, request: dict[str, Any], reply_type: str, payload: Any = None) -> None:
        self.protocol.dataReceived(frame({"type": reply_type, "payload": payload,
                                          "reply_to": request["id"]}))

    def welcome(self, keepalive: float) -> None:
        """Play the master's half of a join, asking for pings every C{keepalive} seconds."""
        [hello] = sent(self.transport)
        self.answer(hello, "welcome", {"uuid": "ab" * 16, "keepalive": keepalive, "dead_after": 3600})
        [details] = sent(self.transport)
        self.answer(details, "ack")
        [info] = sent(self.transport)
        self.answer(info, "master_info", {"hostname": "m" * 100_000, "cpu": "c" * 100_000})
        sent(self.transport)  # the first vitals

    def test_keepaliveFloor(self) -> None:
        """A master asking for a ping every millisecond gets one a second, and one log line."""
        with capturedLogs() as events:
            self.welcome(0.001)
            for _ in range(10):
                self.clock.advance(1)
        pings = [e for e in sent(self.transport) if e["type"] == "ping"]
        self.assertEqual(len(pings), 10)
        self.assertEqual(self.protocol._keepalive.interval, KEEPALIVE_FLOOR)
        lines = [formatEvent(e) for e in events if "keepalive" in e["log_format"]]
        self.assertEqual(lines, ["Master 10.0.0.1:12345 asks for a keepalive every 0.001 s;"
                                 " this slave pings every 1 s at most"])

    def test_masterFrameLimitsResults(self) -> None:
        """A welcome's max_frame lowers the largest result, which then fails rather than being sent."""
        runner = TaskRunner(TaskCatalog([Task("big", lambda: "x" * 5000, "reactor")]), slots=1,
                            clock=self.clock, reactor=self.clock)
        self.slave = slave_factory(self.clock, keepalive=5, vitals_interval=3600, runner=runner)
        self.protocol, self.transport = connect(self.slave, host="10.0.0.1", port=12345)
        [hello] = sent(self.transport)
        self.answer(hello, "welcome", {"uuid": "ab" * 16, "keepalive": 5, "dead_after": 3600,
                                       "max_frame": 2048})
        self.assertEqual(runner.waiting.max_result_bytes, 2048 - RESULT_ENVELOPE_ROOM)
        runner.start(RunTask(id=1, attempt=1, name="big"))
        self.clock.advance(0)
        [result] = runner.results
        self.assertEqual((result["outcome"], result["error"]["type"]), ("failed", "ResultTooLarge"))

    def test_waitingResultsRefitted(self) -> None:
        """A result waiting for a master with larger frames fails once a master with smaller ones says so."""
        waiting = WaitingResults(self.clock, max_result_bytes=100_000)
        payload, size = waiting.sendable({"id": 1, "attempt": 1, "outcome": "done", "result": "x" * 5000})
        waiting.keep(payload, size)
        waiting.fit_frame(100_000)
        self.assertEqual(waiting.get((1, 1)), payload)
        waiting.fit_frame(2048)
        refitted = waiting.get((1, 1))
        self.assertEqual(refitted["error"]["type"], "ResultTooLarge")
        self.assertEqual(waiting.bytes, len(wire.encode(refitted)))
        waiting.fit_frame(1_000_000)
        self.assertEqual(waiting.max_result_bytes, 100_000)  # never above --max-result

    def test_keepaliveAboveFloorKept(self) -> None:
        """A master's keepalive at or above the floor is followed as it is."""
        self.welcome(KEEPALIVE_FLOOR)
        self.assertEqual(self.protocol._keepalive.interval, KEEPALIVE_FLOOR)

    def test_masterTextsClipped(self) -> None:
        """The master's own facts are logged clipped."""
        with capturedLogs() as events:
            self.welcome(5)
        [line] = [formatEvent(e) for e in events if e["log_format"].startswith("Master is")]
        self.assertLess(len(line), 2 * MAX_TEXT + 100)

    def test_refusalClipped(self) -> None:
        """A hello refused with a 100 KiB reason is logged, and closed, with the reason clipped."""
        [hello] = sent(self.transport)
        with capturedLogs() as events:
            self.answer(hello, "bad_message", {"error": "no " * 50_000})
        [line] = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.error]
        self.assertLess(len(line), MAX_TEXT + 100)
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertLess(len(self.protocol.lost.cause), MAX_TEXT + 100)

    def test_floodOfTextsIsBounded(self) -> None:
        """1,000 large message, error and bad_message frames make a bounded log."""
        text = "x" * (MAX_MESSAGE_BYTES - 2)  # a larger message is refused before it is handled
        frames = [
            frame({"type": "message", "payload": text}),
            frame({"type": "error", "payload": {"error": text}}),
            frame({"type": "bad_message", "payload": {"error": text}}),
        ]
        with capturedLogs() as events:
            for number in range(1000):
                self.protocol.dataReceived(frames[number % 3])
            self.clock.advance(self.slave.master_log.interval)
        lines = self.slave.master_log.lines
        self.assertLessEqual(len(events), lines + 1)
        self.assertEqual(events[-1]["left_out"],
                         {"messages": 300, "errors": 300, "refusals of our messages": 300})
        self.assertTrue(formatEvent(events[-1]).startswith("Left out of the log in the last 10 s:"))
        # What a JSON log (twistd --logger) would write of them, fields and all.
        written = sum(len(eventAsJSON(e)) for e in events)
        self.assertLess(written, (lines + 1) * 2048)


class ResultReportTests(unittest.TestCase):
    """A run's result goes to the master as soon as the answer to its run_task."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.held: defer.Deferred[Any] = defer.Deferred()
        #: The runs of "wait", one Deferred each.
        self.waits: list[defer.Deferred[Any]] = []

        def wait() -> defer.Deferred[Any]:
            self.waits.append(defer.Deferred())
            return self.waits[-1]

        runner = TaskRunner(TaskCatalog([Task("echo", lambda **args: args, "reactor"),
                                         Task("hold", lambda: self.held, "reactor"),
                                         Task("wait", wait, "reactor")]),
                            slots=2, prefetch=3, clock=self.clock, reactor=self.clock)
        self.slave = slave_factory(self.clock, keepalive=5, vitals_interval=3600, runner=runner)
        self.protocol, self.transport = connect(self.slave, host="10.0.0.1", port=12345)
        answers = {"hello": ("welcome", {"uuid": "ab" * 16, "keepalive": 5, "dead_after": 3600}),
                   "computer_details": ("ack", None), "info": ("master_info", {"hostname": "m"}),
                   "worker": ("worker_accepted", {"drop": []})}
        self.offers: list[dict[str, Any]] = []
        for _ in range(4):
            for request in sent(self.transport):
                if request["type"] == "worker":
                    self.offers.append(request["payload"])
                if request["type"] in answers:
                    reply_type, payload = answers[request["type"]]
                    self.protocol.dataReceived(frame({"type": reply_type, "payload": payload,
                                                      "reply_to": request["id"]}))
        self.clock.advance(0)
        sent(self.transport)

    def test_offerSaysPrefetch(self) -> None:
        """The worker offer tells the master the runner's slots and prefetch."""
        [offer] = self.offers
        self.assertEqual((offer["slots"], offer["prefetch"], offer["holding"]), (2, 3, []))

    def test_readyRunReportsAfterTheRunBefore(self) -> None:
        """A run held ready starts as a slot frees, and its result follows the freeing one's."""
        for task_id, name in ((1, "wait"), (2, "wait"), (3, "echo")):
            self.protocol.dataReceived(frame({"type": "run_task", "id": task_id, "payload": {
                "id": task_id, "attempt": 1, "name": name, "args": {}}}))
        self.assertEqual([m["type"] for m in sent(self.transport)], ["ack"] * 3)
        self.waits[1].callback(7)
        self.clock.advance(0)
        self.assertEqual([(m["type"], m["payload"]["id"]) for m in sent(self.transport)],
                         [("task_result", 2), ("task_result", 3)])

    def test_endedAtOnceInTheSameWrite(self) -> None:
        """A run that ends at once reports in the read's write, after the answer to its run_task."""
        self.protocol.dataReceived(frame({"type": "run_task", "id": 5, "payload": {
            "id": 1, "attempt": 1, "name": "echo", "args": {"n": 1}}}))
        [answer, result] = sent(self.transport)
        self.assertEqual((answer["type"], answer["reply_to"]), ("ack", 5))
        self.assertEqual((result["type"], result["payload"]["result"]), ("task_result", {"n": 1}))

    def test_endedLaterOnTheNextTurn(self) -> None:
        """A run that ends outside a read reports on the reactor's next turn."""
        self.protocol.dataReceived(frame({"type": "run_task", "id": 5, "payload": {
            "id": 1, "attempt": 1, "name": "hold"}}))
        self.assertEqual([m["type"] for m in sent(self.transport)], ["ack"])
        self.held.callback(7)
        self.assertEqual(sent(self.transport), [])
        self.clock.advance(0)
        [result] = sent(self.transport)
        self.assertEqual((result["type"], result["payload"]["result"]), ("task_result", 7))


class DroppedResultTests(unittest.TestCase):
    """
    A result the slave drops unacknowledged is not lost to the master: it
    runs the task again.
    """

    def test_droppedResultRunsAgain(self) -> None:
        """Results dropped while the master is away are run again; the kept ones end their tasks."""
        clock = Clock()
        master = task_master(clock, SynchronousPool())
        client = FakeClient(master, clock)
        runner = TaskRunner(TaskCatalog([Task("hold", lambda: defer.Deferred(), "reactor")]),
                            slots=4, clock=clock, reactor=clock, max_waiting_bytes=200)
        slave = slave_factory(clock, keepalive=100, dead_after=300, runner=runner)

        def finish(attempt: int, result: str) -> None:
            """End the runs of one attempt, each with C{result} and its task id."""
            for held in list(runner._running.values()):
                if held.attempt == attempt:
                    held.deferred.callback(f"{result} {held.task_id}")

        def deliver(pump: Any) -> None:
            for _ in range(5):
                clock.advance(0)
                pump.flush()

        ids = [t["id"] for t in client.submit(*[{"name": "hold"}] * 4)["payload"]["tasks"]]
        slave_protocol, master_protocol, pump = connect_pair(master, slave, clock)
        deliver(pump)
        self.assertEqual(sorted((r.id, r.attempt) for r in runner.holding()), [(i, 1) for i in ids])
        master_protocol.transport.loseConnection()
        pump.flush()
        finish(1, "first run of")  # each result is some 75 bytes: two fit in 200
        self.assertEqual([r["id"] for r in runner.results], ids[2:])
        slave_protocol, master_protocol, pump = connect_pair(master, slave, clock, port=5001)
        deliver(pump)
        finish(2, "second run of")
        deliver(pump)
        records = client.records(*ids)
        self.assertEqual([records[i]["state"] for i in ids], ["done"] * 4)
        self.assertEqual([records[i]["result"] for i in ids],
                         [f"second run of {i}" for i in ids[:2]] + [f"first run of {i}" for i in ids[2:]])
        self.assertEqual(runner.results, [])
