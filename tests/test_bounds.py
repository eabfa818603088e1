"""
Tests for the bounds on what one peer can make a master or a slave hold:
framing, deadlines, back-pressure, caps on connections and handshakes, and
the sizes of messages (docs: security, "Bounds").

Each test goes over a bound and checks that the peer pays for it, not the
master or the other peers.  Every test runs in memory on a Clock.
"""

from __future__ import annotations

import os
import struct
from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial import unittest

from picluster.master import admission
from picluster.master.admission import Admission, connection_cap
from picluster.master.connection import MasterFactory, PeerConnection
from picluster.master.registry import SlaveRegistry
from picluster.text import MAX_TEXT
from picluster.trust.cluster import ClusterTrust
from picluster.wire.framing import FrameReceiver
from picluster.wire.handler import PeerHandler
from picluster.wire.messages import MAX_FACTS_BYTES, MAX_WATCHED
from picluster.wire.protocol import (
    DEFAULT_FRAME_DEADLINE,
    STRANGER_MAX_FRAME,
    PiClusterFactory,
)

from .helpers import MASTER_FACTS, connect, frame, raw_frame, sent
from .taskhelpers import FakeClient, FakeSlave, task_master


class Handler(PeerHandler):
    """Answers C{slow} and C{saved} later, when the test says so; stores C{store}."""

    stored_answers = frozenset({"saved"})

    def __init__(self, protocol: Any) -> None:
        super().__init__(protocol)
        self.later: list[defer.Deferred[Any]] = []
        self.received: list[Any] = []

    def msg_store(self, payload: Any) -> None:
        self.received.append(payload)

    def msg_slow(self, payload: Any) -> defer.Deferred[Any]:
        answer: defer.Deferred[Any] = defer.Deferred()
        self.later.append(answer)
        return answer

    def msg_saved(self, payload: Any) -> defer.Deferred[Any]:
        # As a master's task_result: answered once what it carries is on disk.
        return self.msg_slow(payload)

    def msg_chained(self, payload: Any) -> defer.Deferred[Any]:
        # Called already, but waiting on another Deferred (a database query).
        inner: defer.Deferred[Any] = defer.Deferred()
        self.later.append(inner)
        return defer.succeed(None).addCallback(lambda _: inner)


class Factory(PiClusterFactory):
    def make_handler(self, protocol: Any) -> Handler:
        return Handler(protocol)


class Frames(FrameReceiver):
    """Frames received, and nothing else."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[bytes] = []

    def frameReceived(self, frame: bytes) -> None:
        self.frames.append(frame)


class FramingTests(unittest.TestCase):
    """Receiving does not copy a frame in progress on every read."""

    def test_piecesJoinedOnce(self) -> None:
        """A frame arriving in a thousand reads is kept as its pieces, then delivered whole, once."""
        receiver = Frames()
        receiver.MAX_LENGTH = 1 << 20
        receiver.makeConnection(StringTransport())
        body = os.urandom(100_000)
        data = struct.pack("!I", len(body)) + body
        pieces = [data[i:i + 100] for i in range(0, len(data), 100)]
        for piece in pieces[:-1]:
            receiver.dataReceived(piece)
        self.assertEqual(len(receiver._pieces), len(pieces) - 1, "each read kept, none joined")
        self.assertEqual(receiver.buffered, len(data) - len(pieces[-1]))
        receiver.dataReceived(pieces[-1])
        self.assertEqual(receiver.frames, [body])
        self.assertEqual(receiver.buffered, 0)

    def test_framesAroundPieces(self) -> None:
        """Whole frames before and after a split one arrive in order."""
        receiver = Frames()
        receiver.makeConnection(StringTransport())
        data = b"".join(struct.pack("!I", len(x)) + x for x in (b"a", b"bb" * 50, b"c"))
        for cut in range(1, len(data)):
            receiver.frames = []
            receiver.dataReceived(data[:cut])
            receiver.dataReceived(data[cut:])
            self.assertEqual(receiver.frames, [b"a", b"bb" * 50, b"c"], cut)

    def test_nothingAfterTooLarge(self) -> None:
        """After a frame over the limit, nothing more is framed (the rest would be nonsense)."""
        receiver = Frames()
        receiver.MAX_LENGTH = 10
        receiver.makeConnection(StringTransport())
        receiver.dataReceived(struct.pack("!I", 11) + b"x" * 11 + struct.pack("!I", 1) + b"y")
        receiver.dataReceived(struct.pack("!I", 1) + b"z")
        self.assertEqual(receiver.frames, [])
        self.assertTrue(receiver.transport.disconnecting)


class ConnectionTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.factory = Factory(keepalive=5, clock=self.clock, max_frame=64 * 1024)
        self.protocol, self.transport = connect(self.factory)
        self.handler: Handler = self.protocol.handler  # type: ignore[assignment]


class FrameDeadlineTests(ConnectionTestCase):
    """A frame must arrive whole within frame_deadline, however its bytes trickle."""

    def test_trickleDropped(self) -> None:
        """One byte a second keeps the peer alive, but not its frame: dropped at the deadline."""
        data = frame({"type": "store", "payload": "x" * 1000})
        for i in range(int(DEFAULT_FRAME_DEADLINE) - 1):
            self.protocol.dataReceived(data[i:i + 1])
            self.clock.advance(1)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(self.transport.disconnected)
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.protocol.lost.cause,
                         f"a frame took over {DEFAULT_FRAME_DEADLINE:g} s to arrive")
        self.assertEqual(self.handler.received, [])

    def test_steadyStreamKept(self) -> None:
        """Frames that each arrive in time, back to back for longer than the deadline, are fine."""
        data = frame({"type": "store", "payload": "y" * 100})
        stream = data * 40
        step = 33
        for i in range(0, len(stream), step):
            self.protocol.dataReceived(stream[i:i + step])
            self.clock.advance(DEFAULT_FRAME_DEADLINE / 10)
        self.assertFalse(self.transport.disconnecting)
        self.assertEqual(len(self.handler.received), 40)

    def test_noTimerForWholeFrames(self) -> None:
        """Frames that arrive whole cost no timer: the dead-peer check is the only one."""
        for _ in range(100):
            self.protocol.dataReceived(frame({"type": "store", "payload": 1}))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_pausedIsNotLate(self) -> None:
        """A frame we stopped reading (our choice) is not counted against the peer."""
        self.protocol.pauseProducing()
        self.protocol.dataReceived(frame({"type": "store", "payload": 1})[:5])
        for _ in range(int(DEFAULT_FRAME_DEADLINE) * 2):
            self.clock.advance(1)
            self.protocol.dataReceived(b"")
            self.protocol.last_received = self.clock.seconds()  # alive, just not read
        self.assertFalse(self.transport.disconnecting)
        self.protocol.resumeProducing()
        self.protocol.dataReceived(frame({"type": "store", "payload": 1})[5:])
        self.assertEqual(self.handler.received, [1])


class InFlightTests(ConnectionTestCase):
    """A peer's requests being answered at once are capped: above the cap, we stop reading it."""

    def test_stopReadingAtCap(self) -> None:
        limit = self.factory.max_in_flight
        requests = b"".join(frame({"type": "slow", "id": n}) for n in range(limit + 10))
        self.protocol.dataReceived(requests)
        self.assertEqual(len(self.handler.later), limit)
        self.assertEqual(self.transport.producerState, "paused")
        self.handler.later[0].callback(("done", 0))
        # Reading again, the next request is handled, which reaches the cap again.
        self.assertEqual(len(self.handler.later), limit + 1)
        self.assertEqual(self.transport.producerState, "paused")
        while not all(answer.called for answer in self.handler.later):
            for answer in list(self.handler.later):
                if not answer.called:
                    answer.callback(("done", 0))
        self.assertEqual(len(self.handler.later), limit + 10)
        self.assertEqual(self.protocol.in_flight, 0)
        self.assertEqual(self.transport.producerState, "producing")

    def test_chainedCounts(self) -> None:
        """A reply that waits on another Deferred counts as in flight until it is sent."""
        limit = self.factory.max_in_flight
        self.protocol.dataReceived(b"".join(frame({"type": "chained", "id": n}) for n in range(limit + 5)))
        self.assertEqual(len(self.handler.later), limit)
        self.assertEqual(self.protocol.in_flight, limit)
        self.assertEqual(self.transport.producerState, "paused")

    def test_bothCausesMustGo(self) -> None:
        """Reading resumes only when the peer reads again and requests are under the cap."""
        limit = self.factory.max_in_flight
        self.protocol.dataReceived(b"".join(frame({"type": "slow", "id": n}) for n in range(limit)))
        self.protocol.pauseProducing()
        for answer in self.handler.later:
            answer.callback(("done", 0))
        self.assertEqual(self.transport.producerState, "paused")
        self.protocol.resumeProducing()
        self.assertEqual(self.transport.producerState, "producing")


class StoringTests(ConnectionTestCase):
    """Requests that wait to be stored have a bound of their own, beside the requests in flight."""

    def test_stopReadingAtCap(self) -> None:
        """Past max_in_flight they are still read; at max_storing reading stops, and resumes below it."""
        limit = self.factory.max_storing
        self.assertGreater(limit, self.factory.max_in_flight)
        self.protocol.dataReceived(b"".join(frame({"type": "saved", "id": n}) for n in range(limit + 3)))
        self.assertEqual((len(self.handler.later), self.protocol.storing, self.protocol.in_flight),
                         (limit, limit, 0))
        self.assertEqual(self.transport.producerState, "paused")
        self.handler.later[0].callback(("stored", 0))
        self.assertEqual(len(self.handler.later), limit + 1)
        for answer in self.handler.later:
            if not answer.called:
                answer.callback(("stored", 0))
        self.assertEqual(len(self.handler.later), limit + 3)
        self.assertEqual(self.protocol.storing, 0)
        self.assertEqual(self.transport.producerState, "producing")

    def test_eachBoundHoldsItsOwn(self) -> None:
        """Requests in flight at their cap stop the reading, whatever waits to be stored; and back."""
        cap = self.factory.max_in_flight
        self.protocol.dataReceived(frame({"type": "saved", "id": 0})
                                   + b"".join(frame({"type": "slow", "id": n}) for n in range(1, cap + 1)))
        self.assertEqual((self.protocol.storing, self.protocol.in_flight), (1, cap))
        self.assertEqual(self.transport.producerState, "paused")
        # Storing one does not resume a peer held by its requests in flight.
        self.handler.later[0].callback(("stored", 0))
        self.assertEqual(self.transport.producerState, "paused")
        self.handler.later[1].callback(("done", 0))
        self.assertEqual(self.transport.producerState, "producing")
        self.assertEqual((self.protocol.storing, self.protocol.in_flight), (0, cap - 1))

    def test_notSilentWhileWeStore(self) -> None:
        """
        A peer we stopped reading while its answers wait for our disk is not
        dropped as silent meanwhile, however long the disk takes (its pings
        wait unread in our socket); once we read again, silence counts.
        """
        dead_after = self.factory.dead_after
        self.protocol.dataReceived(b"".join(frame({"type": "saved", "id": n})
                                            for n in range(self.factory.max_storing)))
        self.assertEqual(self.transport.producerState, "paused")
        self.clock.advance(dead_after * 4)
        self.assertFalse(self.transport.disconnecting)
        for answer in self.handler.later:
            answer.callback(("stored", 0))
        self.assertEqual(self.transport.producerState, "producing")
        self.clock.advance(dead_after)
        self.assertTrue(self.transport.disconnecting)

    def test_silentWhenItStopsReading(self) -> None:
        """A peer that stops reading us (we pause in turn) is still dropped when silent: that is its doing."""
        self.protocol.dataReceived(frame({"type": "saved", "id": 0}))
        self.protocol.pauseProducing()  # as the transport does when its buffer is full
        self.clock.advance(self.factory.dead_after)
        self.assertTrue(self.transport.disconnecting)

    def test_masterStoresTaskResults(self) -> None:
        """A master counts a slave's task results, answered once on disk, as waiting to be stored."""
        self.assertIn("task_result", PeerConnection.stored_answers)


class UnreadTests(ConnectionTestCase):
    """A peer that does not read is dropped once max_queued bytes wait for it."""

    def test_droppedOverCap(self) -> None:
        self.protocol.pauseProducing()  # as the transport does when its buffer is full
        chunk = "z" * 60_000
        sends = self.factory.max_queued // 60_000
        for _ in range(sends):
            self.protocol.send("later", chunk)
        self.assertFalse(self.transport.disconnected)
        before = len(self.transport.value())
        with capturedLogs() as events:
            self.protocol.send("later", chunk)
        self.assertTrue(self.transport.disconnected)
        [event] = events
        self.assertIn("it does not read", formatEvent(event))
        # Until connectionLost comes, what is sent goes nowhere.
        self.protocol.send("later", chunk)
        self.assertEqual(len(self.transport.value()), before)

    def test_readingAgainForgives(self) -> None:
        """What was queued and then read does not count against the next pause."""
        for _ in range(3):
            self.protocol.pauseProducing()
            for _ in range(self.factory.max_queued // 60_000):
                self.protocol.send("later", "z" * 60_000)
            self.protocol.resumeProducing()
        self.assertFalse(self.transport.disconnected)

    def test_deferredRepliesCount(self) -> None:
        """Replies that come later, while the peer does not read, count too."""
        self.factory.max_queued = 300_000
        self.protocol.dataReceived(b"".join(frame({"type": "slow", "id": n}) for n in range(40)))
        self.protocol.pauseProducing()
        for answer in self.handler.later:
            answer.callback(("big", "q" * 60_000))
        self.assertTrue(self.transport.disconnected)


class StrangerTests(unittest.TestCase):
    """On a secure master, a connection is a stranger until its hello proves a token."""

    def setUp(self) -> None:
        self.clock = Clock()
        trust = ClusterTrust.open(os.path.join(self.mktemp(), "state"))
        self.master = MasterFactory(SlaveRegistry(), clock=self.clock, trust=trust,
                                    computer_details=MASTER_FACTS, keepalive=5,
                                    max_strangers=5, max_strangers_per_host=3, max_connections=8)

    def knock(self, host: str) -> Any:
        peer = IPv4Address("TCP", host, 40000)
        protocol = self.master.buildProtocol(peer)
        if protocol is not None:
            protocol.makeConnection(StringTransport(peerAddress=peer))
        return protocol

    def test_smallFramesOnly(self) -> None:
        """A stranger's frame over STRANGER_MAX_FRAME closes its connection."""
        protocol = self.knock("10.0.0.1")
        self.assertEqual(protocol.MAX_LENGTH, STRANGER_MAX_FRAME)
        protocol.dataReceived(struct.pack("!I", STRANGER_MAX_FRAME + 1) + b"x" * 100)
        self.assertTrue(protocol.transport.disconnecting)
        trusted = self.knock("10.0.0.2")
        trusted.trusted()
        self.assertEqual(trusted.MAX_LENGTH, self.master.max_frame)

    def test_deadlineNotExtended(self) -> None:
        """Bytes trickling in do not extend the handshake's deadline."""
        protocol = self.knock("10.0.0.1")
        for _ in range(int(admission.DEFAULT_HANDSHAKE_TIMEOUT) - 1):
            self.clock.advance(1)
            protocol.dataReceived(b"\0")
        self.assertFalse(protocol.transport.disconnected)
        self.clock.advance(1)
        self.assertTrue(protocol.transport.disconnected)

    def test_capPerHost(self) -> None:
        """A host with max_strangers_per_host handshakes in progress gets no more; others do."""
        first = [self.knock("10.0.0.1") for _ in range(3)]
        with capturedLogs() as events:
            self.assertIsNone(self.knock("10.0.0.1"))
        self.assertIn("3 handshakes already in progress from 10.0.0.1", formatEvent(events[0]))
        self.assertIsNotNone(self.knock("10.0.0.2"))
        # One of the first proves itself: its host may start another.
        first[0].handler.credential = "client"
        self.master.admission.known("10.0.0.1")
        self.assertIsNotNone(self.knock("10.0.0.1"))

    def test_capInAll(self) -> None:
        """max_strangers handshakes in progress in all: the next is closed, whoever it is."""
        for n in range(5):
            self.assertIsNotNone(self.knock(f"10.0.1.{n}"))
        self.assertIsNone(self.knock("10.0.2.1"))

    def test_goneStrangersCounted(self) -> None:
        """A stranger that leaves (or is dropped) frees its place."""
        strangers = [self.knock("10.0.0.1") for _ in range(3)]
        self.clock.advance(admission.DEFAULT_HANDSHAKE_TIMEOUT)
        for protocol in strangers:
            protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.master.admission.strangers, 0)
        self.assertEqual(self.master.admission.connections, 0)
        self.assertIsNotNone(self.knock("10.0.0.1"))

    def test_connectionCap(self) -> None:
        """At max_connections, new connections are closed at once; the others stay."""
        kept = []
        for n in range(8):
            protocol = self.knock(f"10.0.3.{n}")
            protocol.handler.credential = "client"
            self.master.admission.known(f"10.0.3.{n}")
            kept.append(protocol)
        self.assertIsNone(self.knock("10.0.4.1"))
        self.assertFalse(any(p.transport.disconnecting for p in kept))


class AdmissionTests(unittest.TestCase):
    def test_plainCountsConnectionsOnly(self) -> None:
        """Without strangers (a plain master), only the connection cap applies."""
        gate = Admission(max_connections=2, max_strangers=1, max_strangers_per_host=1)
        gate.opened("h", False)
        self.assertIsNone(gate.refusal("h", False))
        gate.opened("h", False)
        self.assertEqual(gate.refusal("h", False), "at the cap of 2 connections")
        gate.closed("h", False)
        self.assertIsNone(gate.refusal("h", False))

    def test_capBelowFileLimit(self) -> None:
        """The connection cap leaves descriptors for everything else."""
        self.assertEqual(connection_cap(25_000, 1024), 1024 - admission.RESERVED_DESCRIPTORS)
        self.assertEqual(connection_cap(100, 65536), 100)
        self.assertEqual(connection_cap(100, 10), 1)

    def test_fileLimitRaised(self) -> None:
        """raise_file_limit gives the hard limit as the soft one, and says so."""
        import resource

        before = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, before)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(512, before[1]), before[1]))
        soft = admission.raise_file_limit()
        self.assertEqual(soft, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        if before[1] != resource.RLIM_INFINITY:
            self.assertEqual(soft, before[1])


class MessageSizeTests(unittest.TestCase):
    """Facts, vitals and free text have sizes; a watch is registered only if its answer fits."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.master = task_master(self.clock)

    def test_oversizedVitalsRefused(self) -> None:
        """Vitals over MAX_FACTS_BYTES are refused and not stored; the slave stays."""
        slave = FakeSlave(self.master, self.clock)
        [connection] = self.master.registry
        reply = slave.request("vitals", {"cpu_temperature": 50.0, "x": [{}] * 2000})
        self.assertEqual(reply["type"], "bad_message")
        self.assertEqual(reply["payload"]["limit"], MAX_FACTS_BYTES)
        self.assertIsNone(connection.vitals)
        self.assertEqual(slave.request("vitals", {"cpu_temperature": 50.0})["type"], "ack")
        self.assertEqual(connection.vitals.cpu_temperature, 50.0)

    def test_deepUnknownFieldsBounded(self) -> None:
        """Nesting in an unknown field is bounded by the size, and never stored."""
        slave = FakeSlave(self.master, self.clock)
        [connection] = self.master.registry
        deep = "[" * 900 + "]" * 900
        body = b'{"type":"vitals","id":7,"payload":{"ram_free":5,"x":' + deep.encode() + b"}}"
        slave.protocol.dataReceived(raw_frame(body))
        self.assertEqual(sent(slave.transport)[-1]["type"], "ack")
        self.assertEqual(connection.vitals.ram_free, 5)
        self.assertNotIn("x", connection.describe()["vitals"].__struct_fields__)

    def test_messagesClippedAndBudgeted(self) -> None:
        """Free text is clipped in the log, and a flood of it costs a few lines."""
        slave = FakeSlave(self.master, self.clock)
        with capturedLogs() as events:
            for _ in range(1000):
                slave.send("message", "m" * 4000)
        lines = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.info]
        self.assertLessEqual(len(lines), 20)
        self.assertTrue(all(len(line) < MAX_TEXT + 200 for line in lines))

    def test_watchMustFit(self) -> None:
        """A watch whose answer would not fit a frame is refused, and nothing is registered."""
        master = task_master(self.clock, max_frame=64 * 1024, max_reply=60 * 1024)
        client = FakeClient(master, self.clock)
        ids = list(range(1, 5000))
        reply = client.request("watch", {"ids": ids})
        self.assertEqual(reply["type"], "bad_message")
        self.assertIn("tasks in one watch with this --max-frame", reply["payload"]["error"])
        self.assertEqual(master.scheduler.view.watchers.count(client.protocol.handler), 0)

    def test_watchCapPerConnection(self) -> None:
        """At most MAX_WATCHED tasks per connection."""
        client = FakeClient(self.master, self.clock)
        reply = client.request("watch", {"ids": list(range(1, MAX_WATCHED + 2))})
        self.assertEqual(reply["type"], "bad_message")


class LogFloodTests(unittest.TestCase):
    """Log lines that peers cause are budgeted; tracebacks are logged once per cause."""

    def test_strangersCostFewLines(self) -> None:
        """Two thousand strangers sending junk and oversized frames cost the log a few lines."""
        clock = Clock()
        trust = ClusterTrust.open(os.path.join(self.mktemp(), "state"))
        master = MasterFactory(SlaveRegistry(), clock=clock, trust=trust, computer_details=MASTER_FACTS,
                               max_strangers=10_000, max_strangers_per_host=10_000)
        with capturedLogs() as events:
            for n in range(2000):
                peer = IPv4Address("TCP", "10.9.0.1", 1000 + n)
                protocol = master.buildProtocol(peer)
                transport = StringTransport(peerAddress=peer)
                protocol.makeConnection(transport)
                if n % 2:
                    protocol.dataReceived(struct.pack("!I", 1 << 20) + b"x" * 1000)
                else:
                    protocol.dataReceived(raw_frame(b"x" * 2000))
                protocol.connectionLost(Failure(ConnectionDone()))
            clock.advance(60)
        self.assertLessEqual(len(events), 25)
        self.assertLess(sum(len(formatEvent(e)) for e in events), 10_000)
        self.assertIn("refused handshakes", formatEvent(events[-1]))

    def test_tracebackOncePerCause(self) -> None:
        """A handler failing on every message logs its traceback once, then counts."""
        clock = Clock()

        class Broken(PeerHandler):
            def msg_boom(self, payload: Any) -> None:
                raise ZeroDivisionError("always")

        class BrokenFactory(PiClusterFactory):
            def make_handler(self, protocol: Any) -> Broken:
                return Broken(protocol)

        factory = BrokenFactory(clock=clock)
        protocol, transport = connect(factory)
        with capturedLogs() as events:
            for n in range(500):
                protocol.dataReceived(frame({"type": "boom", "id": n}))
        self.assertEqual(len(events), 1)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual([m["type"] for m in sent(transport)], ["error"] * 500)
        clock.advance(3600)
        protocol, transport = connect(factory)
        with capturedLogs() as events:
            protocol.dataReceived(frame({"type": "boom", "id": 1}))
        self.assertIn("499 more of the same", formatEvent(events[0]))
        self.flushLoggedErrors(ZeroDivisionError)


class OnePageTests(unittest.TestCase):
    """Listings and watches load a reply's worth of records at a time, however many are asked for."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.master = task_master(self.clock, max_reply=100_000)
        slave = FakeSlave(self.master, self.clock, slots=4, tasks=("echo",))
        self.client = FakeClient(self.master, self.clock)
        submitted = self.client.submit(*[{"name": "echo", "args": {"n": n}} for n in range(20)])
        self.ids = [t["id"] for t in submitted["payload"]["tasks"]]
        for _ in range(20):
            for run in slave.runs():
                slave.finish(run, {"big": "b" * 30_000})
            self.clock.advance(1)
            if not self.master.scheduler.open:
                break
        self.assertEqual(self.master.scheduler.open, {})

    def test_queryStopsAtBytes(self) -> None:
        """A query with max_bytes gives the records up to the first past it, in order."""
        store = self.master.scheduler.store
        found = self.successResultOf(store.query(ids=self.ids, max_bytes=100_000))
        self.assertEqual([r["id"] for r in found], self.ids[:4])
        everything = self.successResultOf(store.query(ids=self.ids))
        self.assertEqual(len(everything), 20)

    def test_listingPaged(self) -> None:
        """A listing of a thousand answers what fits, and says there is more."""
        reply = self.client.request("tasks", {"limit": 1000})["payload"]
        self.assertTrue(reply["more"])
        self.assertEqual(len(reply["tasks"]), 3)

    def test_watchPushesAll(self) -> None:
        """A watch of twenty ended tasks pushes all twenty, a page at a time."""
        reply = self.client.request("watch", {"ids": self.ids})
        self.assertEqual(reply["payload"]["tasks"], [])
        updates = self.client.take("task_update")
        self.assertEqual([u["payload"]["task"]["id"] for u in updates], self.ids)

    def test_watchStopsWithItsConnection(self) -> None:
        """A watcher dropped for not reading gets no more pages looked up, or pushed."""
        self.master.max_queued = 150_000
        transport, protocol = self.client.transport, self.client.protocol
        write = transport.write

        def write_until_full(data: bytes) -> None:
            # As TCP does: past its buffer, the transport pauses its producer.
            write(data)
            if len(transport.value()) > 50_000:
                protocol.pauseProducing()

        transport.write = write_until_full  # type: ignore[method-assign]
        self.client.send("watch", {"ids": self.ids}, id=5)
        self.assertTrue(transport.disconnected)
        pushed = [m for m in sent(self.client.transport) if m["type"] == "task_update"]
        self.assertLess(len(pushed), 8)


class PeerTextTests(unittest.TestCase):
    def test_perConnectionBudget(self) -> None:
        """A thousand refusals and errors from one peer log a dozen lines, each clipped."""
        master = task_master(Clock())
        slave = FakeSlave(master, master.clock)
        with capturedLogs() as events:
            for _ in range(500):
                slave.send("bad_message", {"error": "e" * 3000})
                slave.send("error", {"error": "f" * 3000})
        self.assertEqual(len(events), PeerHandler.LOGGED_PEER_TEXTS + 1)
        self.assertIn("further ones are not logged", formatEvent(events[-1]))
        self.assertLess(max(len(formatEvent(e)) for e in events), MAX_TEXT + 200)


class SubmitAnswerTests(unittest.TestCase):
    """A submit whose answer would not fit a frame is refused before anything is stored."""

    def test_answerMustFit(self) -> None:
        clock = Clock()
        master = task_master(clock, max_frame=256 * 1024, max_reply=250_000)
        client = FakeClient(master, clock)
        specs = [{"name": "sleep", "args": {"seconds": 1}, "key": f"{n:080d}"} for n in range(1800)]
        reply = client.request("submit", {"tasks": specs})
        self.assertEqual(reply["type"], "bad_message")
        self.assertIn("would not fit a frame", reply["payload"]["error"])
        self.assertEqual(master.scheduler.open, {})
        reply = client.request("submit", {"tasks": specs[:1000]})
        self.assertEqual(reply["type"], "submitted")
        self.assertEqual(len(master.scheduler.open), 1000)

    def test_warningsBounded(self) -> None:
        """Thirty task names nobody offers are named ten at a time."""
        clock = Clock()
        master = task_master(clock)
        client = FakeClient(master, clock)
        reply = client.request("submit", {"tasks": [{"name": f"n{n}" * 50} for n in range(30)]})
        warnings = reply["payload"]["warnings"]
        self.assertEqual(len(warnings), 11)
        self.assertEqual(warnings[-1], "and 20 more task names no connected slave offers")
