"""
Tests for L{picluster.master}: what the master does with each slave message.
"""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial import unittest

from picluster.master.keepalives import Keepalives
from picluster.master.service import DEFAULT_BACKLOG, with_default_backlog
from picluster.master.sharedtexts import SHARED_TEXT, SharedTexts
from picluster.master.slavelist import silent_after
from picluster.timebase import monotonic_timers
from picluster.wire.messages import ComputerDetails, Vitals

from .helpers import (
    MASTER_FACTS,
    SLAVE_FACTS,
    VITALS,
    connect,
    connect_pair,
    frame,
    master_factory,
    sent,
    slave_factory,
)

UUID_A = "0123456789abcdef0123456789abcdef"


class MasterTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.factory = master_factory(self.clock, keepalive=5)
        self.registry = self.factory.registry

    def slave(self, port: int = 4321) -> Any:
        protocol, transport = connect(self.factory, port=port)
        return protocol, transport

    def ask(self, transport: Any, protocol: Any, envelope: dict[str, Any]) -> list[dict[str, Any]]:
        transport.clear()
        protocol.dataReceived(frame(envelope))
        return sent(transport)


class HelloTests(MasterTestCase):
    """
    hello gives a slave its uuid, or hands back the one it had.
    """

    def test_newSlave(self) -> None:
        """A hello without a uuid is welcomed with the connection's fresh uuid."""
        protocol, transport = self.slave()
        [welcome] = self.ask(transport, protocol, {"type": "hello", "payload": {"uuid": None, "version": 1}, "id": 1})
        self.assertEqual(welcome["type"], "welcome")
        self.assertEqual(welcome["reply_to"], 1)
        self.assertRegex(welcome["payload"]["uuid"], r"^[0-9a-f]{32}$")
        self.assertEqual(welcome["payload"]["uuid"], protocol.handler.uuid)
        self.assertEqual((welcome["payload"]["keepalive"], welcome["payload"]["dead_after"]), (5, 15))

    def test_everyConnectionHasUuid(self) -> None:
        """A connection has a uuid and is registered before any hello."""
        protocol, transport = self.slave()
        [reply] = self.ask(transport, protocol, {"type": "info", "payload": "uuid"})
        self.assertEqual(reply, {"type": "uuid", "payload": protocol.handler.uuid})
        self.assertIs(self.registry.get(protocol.handler.uuid), protocol.handler)

    def test_reclaimUnknownUuid(self) -> None:
        """A well-formed earlier uuid is taken back even if never seen here."""
        protocol, transport = self.slave()
        born_with = protocol.handler.uuid
        [welcome] = self.ask(transport, protocol, {"type": "hello", "payload": {"uuid": UUID_A, "version": 1}})
        self.assertEqual(welcome["payload"]["uuid"], UUID_A)
        self.assertIs(self.registry.get(UUID_A), protocol.handler)
        self.assertNotIn(born_with, self.registry)
        self.assertEqual(len(self.registry), 1)

    def test_uppercaseUuid(self) -> None:
        """A uuid in capitals is the same uuid, kept in lowercase."""
        protocol, transport = self.slave()
        [welcome] = self.ask(transport, protocol, {"type": "hello", "payload": {"uuid": UUID_A.upper(), "version": 1}})
        self.assertEqual(welcome["payload"]["uuid"], UUID_A)

    def test_newerConnectionWins(self) -> None:
        """A uuid still held by a live connection moves to the newer one, closing the older."""
        old, old_transport = self.slave(port=1)
        self.ask(old_transport, old, {"type": "hello", "payload": {"uuid": UUID_A, "version": 1}})
        new, new_transport = self.slave(port=2)
        self.ask(new_transport, new, {"type": "hello", "payload": {"uuid": UUID_A, "version": 1}})
        self.assertTrue(old_transport.disconnected, "older connection not aborted")
        self.assertIs(self.registry.get(UUID_A), new.handler)
        old.connectionLost(Failure(ConnectionLost()))
        self.assertIs(self.registry.get(UUID_A), new.handler, "older connection's loss evicted the newer")
        self.assertEqual(old.lost.cause, "replaced by a newer connection with the same uuid")
        [reply] = self.ask(new_transport, new, {"type": "info", "payload": "slave_details"})
        self.assertEqual([s["uuid"] for s in reply["payload"]], [UUID_A])

    def test_malformedUuid(self) -> None:
        """A malformed uuid is refused and the connection closed, its uuid unchanged."""
        for bad_uuid in ["xyz", "0123", 12, UUID_A + "0", "g" * 32]:
            protocol, transport = self.slave()
            born_with = protocol.handler.uuid
            [reply] = self.ask(transport, protocol, {"type": "hello", "payload": {"uuid": bad_uuid, "version": 1}, "id": 3})
            self.assertEqual(reply["type"], "bad_message")
            self.assertEqual(reply["payload"]["supported"], [1, 2])
            self.assertEqual(reply["reply_to"], 3)
            self.assertTrue(transport.disconnecting, f"not closed after uuid {bad_uuid!r}")
            self.assertEqual(protocol.handler.uuid, born_with)

    def test_unsupportedVersion(self) -> None:
        """An unknown version is refused, naming the versions supported, and closed."""
        protocol, transport = self.slave()
        [reply] = self.ask(transport, protocol, {"type": "hello", "payload": {"uuid": None, "version": 2}})
        self.assertEqual(reply["payload"], {"error": "unsupported protocol version", "version": 2, "supported": [1]})
        self.assertTrue(transport.disconnecting)

    def test_framesAfterRefusedHelloIgnored(self) -> None:
        """Once a hello is refused, frames already in the same read are not served."""
        protocol, transport = self.slave()
        transport.clear()
        protocol.dataReceived(
            frame({"type": "hello", "payload": {"uuid": "bad", "version": 1}})
            + frame({"type": "info", "payload": "slave_details"})
        )
        self.assertEqual([r["type"] for r in sent(transport)], ["bad_message"])

    def test_helloNotObject(self) -> None:
        """A hello whose payload is not an object is refused."""
        protocol, transport = self.slave()
        [reply] = self.ask(transport, protocol, {"type": "hello", "payload": "hi"})
        self.assertEqual(reply["payload"]["error"], "bad hello payload: Expected `object`, got `str`")
        self.assertEqual((reply["payload"]["supported"], transport.disconnecting), ([1, 2], True))


def full(shape: type, fields: dict[str, Any]) -> dict[str, Any]:
    """C{fields} as the master sends them back: every field of C{shape}, null where unknown."""
    return msgspec.to_builtins(msgspec.convert(fields, shape))


class InfoTests(MasterTestCase):
    """
    info answers questions about the master and the cluster.
    """

    def test_masterInfo(self) -> None:
        """info computer_details is answered with the master's own facts."""
        protocol, transport = self.slave()
        [reply] = self.ask(transport, protocol, {"type": "info", "payload": "computer_details", "id": 8})
        self.assertEqual(reply, {"type": "master_info", "payload": full(ComputerDetails, MASTER_FACTS),
                                 "reply_to": 8})

    def test_slaveDetails(self) -> None:
        """slave_details lists every open connection, the asking one included."""
        first, first_transport = self.slave(port=1)
        first.dataReceived(frame({"type": "computer_details", "payload": SLAVE_FACTS}))
        first.dataReceived(frame({"type": "vitals", "payload": VITALS}))
        self.clock.advance(2)
        second, second_transport = self.slave(port=2)
        [reply] = self.ask(second_transport, second, {"type": "info", "payload": "slave_details"})
        self.assertEqual(reply["type"], "slave_details")
        one, two = reply["payload"]
        self.assertEqual(
            {k: one[k] for k in ("uuid", "address", "hostname", "connected_at", "rtt_ms", "vitals", "computer_details")},
            {
                "uuid": first.handler.uuid,
                "address": "10.0.0.2:1",
                "hostname": "pi-one",
                "connected_at": 1000.0,
                "rtt_ms": None,
                "vitals": full(Vitals, VITALS),
                "computer_details": full(ComputerDetails, SLAVE_FACTS),
            },
        )
        self.assertEqual(one["last_seen"], 1000.0)
        # Not a worker: no slots, nothing running or held ready.
        self.assertEqual((one["slots"], one["running_tasks"], one["ready_tasks"]), (None, 0, 0))
        self.assertEqual(two["uuid"], second.handler.uuid)
        self.assertEqual((two["hostname"], two["vitals"], two["computer_details"]), (None, None, None))
        self.assertEqual(two["last_seen"], 1002.0)

    def test_unknownInfo(self) -> None:
        """Any other info request is refused, listing the known ones."""
        protocol, transport = self.slave()
        [reply] = self.ask(transport, protocol, {"type": "info", "payload": "secrets", "id": 2})
        self.assertEqual(reply["type"], "bad_message")
        self.assertEqual(reply["payload"]["known"], ["computer_details", "uuid", "slave_details", "status",
                                                     "slaves", "summary"])
        self.assertFalse(transport.disconnecting)


class ReportTests(MasterTestCase):
    """
    computer_details and vitals are stored; bad ones change nothing.
    """

    def test_computerDetailsStored(self) -> None:
        """computer_details are stored for the slave and acknowledged when asked."""
        protocol, transport = self.slave()
        [ack] = self.ask(transport, protocol, {"type": "computer_details", "payload": SLAVE_FACTS, "id": 4})
        self.assertEqual(ack, {"type": "ack", "payload": None, "reply_to": 4})
        self.assertEqual(protocol.handler.computer_details, msgspec.convert(SLAVE_FACTS, ComputerDetails))
        self.assertEqual(protocol.handler.hostname, "pi-one")

    def test_computerDetailsShared(self) -> None:
        """
        Slaves' facts share their short texts (one copy per cluster, not per
        node); a long text is kept as sent.
        """
        long_text = "x" * (SHARED_TEXT + 1)
        facts = {**SLAVE_FACTS, "os": long_text}
        stored = []
        for port in (1, 2):
            protocol, transport = self.slave(port=port)
            # Fresh JSON for each, as from the wire.
            self.ask(transport, protocol, {"type": "computer_details", "payload": json.loads(json.dumps(facts))})
            stored.append(protocol.handler.computer_details)
        first, second = stored
        self.assertEqual(first, msgspec.convert(facts, ComputerDetails))
        self.assertIs(first.cpu, second.cpu)
        self.assertEqual(first.os, long_text)
        self.assertIsNot(first.os, second.os)

    def test_sharedTextsBounded(self) -> None:
        """
        The shared texts stop growing at their limit: texts past it are
        kept as sent, and those shared before stay shared.
        """
        texts = SharedTexts(limit=3)
        first = texts.share("".join(["pi", "-4"]))
        for n in range(10):
            texts.share(f"junk-{n}")
        self.assertEqual(len(texts), 3)
        self.assertIs(texts.share("".join(["pi", "-4"])), first)
        late = "".join(["late", "-text"])
        self.assertIs(texts.share(late), late)
        self.assertIsNot(texts.share("".join(["late", "-text"])), late)
        self.assertEqual(texts.share(12.5), 12.5)

    def test_vitalsStoredWithTime(self) -> None:
        """vitals are stored with the time they arrived."""
        protocol, transport = self.slave()
        self.clock.advance(10)
        self.assertEqual(self.ask(transport, protocol, {"type": "vitals", "payload": VITALS}), [])
        self.assertEqual((protocol.handler.vitals, protocol.handler.vitals_received_at),
                         (msgspec.convert(VITALS, Vitals), 1010.0))

    def test_badReportsChangeNothing(self) -> None:
        """Reports of the wrong shape are refused and the stored state stays."""
        protocol, transport = self.slave()
        self.ask(transport, protocol, {"type": "computer_details", "payload": SLAVE_FACTS})
        self.ask(transport, protocol, {"type": "vitals", "payload": VITALS})
        for message_type in ("computer_details", "vitals"):
            for payload in (None, [1], "x", 3):
                [reply] = self.ask(transport, protocol, {"type": message_type, "payload": payload})
                self.assertTrue(reply["payload"]["error"].startswith(f"bad {message_type} payload: Expected `object`"))
            # A field of the wrong type is refused by name.
            [reply] = self.ask(transport, protocol, {"type": message_type, "payload": {"ram": "x", "ram_free": "x"}})
            self.assertEqual(reply["payload"]["field"], "ram" if message_type == "computer_details" else "ram_free")
        self.assertEqual((protocol.handler.computer_details, protocol.handler.vitals),
                         (msgspec.convert(SLAVE_FACTS, ComputerDetails), msgspec.convert(VITALS, Vitals)))

    def test_othersNoticeNothing(self) -> None:
        """Garbage from one slave sends nothing to another and keeps it registered."""
        good, good_transport = self.slave(port=1)
        good_transport.clear()
        bad, bad_transport = self.slave(port=2)
        bad.dataReceived(b"\x00\x00\x00\x03abc" + frame([1]) + frame({"type": "nope"}))
        self.assertEqual(len(sent(bad_transport)), 3)
        self.assertEqual(good_transport.value(), b"")
        self.assertFalse(good_transport.disconnecting or bad_transport.disconnecting)
        self.assertEqual(len(self.registry), 2)

    def test_keepalive(self) -> None:
        """The master pings each slave every keepalive seconds."""
        protocol, transport = self.slave()
        transport.clear()
        self.clock.advance(5)
        self.assertEqual(sent(transport), [{"type": "ping", "payload": 1005.0}])


class KeepaliveTests(MasterTestCase):
    """
    One timer pings every connection once a keepalive, each from one
    keepalive after it joined (less at most a tick).
    """

    tick = 5 / Keepalives.SLOTS

    def pings(self, transport: Any) -> list[float]:
        return [envelope["payload"] for envelope in sent(transport) if envelope["type"] == "ping"]

    def test_lastLeavesAfterLoopStopped(self) -> None:
        """
        The last connection leaving after the ping loop has stopped (it
        never should, but a loop dies on an unhandled error) still leaves
        cleanly: the slave is forgotten, and pings start again for the next.
        """
        protocol, transport = self.slave(port=1)
        keepalives = self.factory.keepalives
        keepalives._loop.stop()
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertNotIn(protocol.handler.uuid, self.registry)
        self.assertEqual(len(keepalives), 0)
        again, again_transport = self.slave(port=2)
        again_transport.clear()
        self.clock.advance(5)
        self.assertEqual(len(self.pings(again_transport)), 1)

    def test_eachOncePerKeepalive(self) -> None:
        """Slaves that joined at different times are each pinged once every keepalive."""
        first, first_transport = self.slave(port=1)
        self.clock.advance(1.23)
        second, second_transport = self.slave(port=2)
        first_transport.clear()
        second_transport.clear()
        # 11 s: two keepalives each, and short of dead_after (15 s).
        for _ in range(round(11 / self.tick)):
            self.clock.advance(self.tick)
        for transport, joined in ((first_transport, 1000.0), (second_transport, 1001.23)):
            pings = self.pings(transport)
            self.assertEqual(len(pings), 2, (joined, pings))
            # A tick early at most; and the test's clock steps may be a tick late.
            self.assertTrue(joined + 5 - self.tick - 1e-6 <= pings[0] <= joined + 5 + self.tick,
                            (joined, pings))
            self.assertAlmostEqual(pings[1] - pings[0], 5.0)

    def test_lateReactor(self) -> None:
        """A reactor late by several keepalives pings each connection once, not once a tick."""
        protocol, transport = self.slave()
        transport.clear()
        self.clock.advance(12)
        self.assertEqual(self.pings(transport), [1012.0])
        self.clock.advance(5)
        self.assertEqual(self.pings(transport), [1017.0])

    def test_heardFromNotPinged(self) -> None:
        """
        A slave that pings the master is not pinged but one round in
        RTT_EVERY (its round trip stays current); one that only answers is
        pinged every keepalive.
        """
        talking, talking_transport = self.slave(port=1)
        answering, answering_transport = self.slave(port=2)
        talking_transport.clear()
        answering_transport.clear()
        rounds = 2 * Keepalives.RTT_EVERY
        answered = 0
        # A tick past the last round: the test clock's steps add up a little short.
        for _ in range(rounds * Keepalives.SLOTS + 1):
            self.clock.advance(self.tick)
            if round(self.clock.seconds() * 10) % 50 == 25:
                # Mid-way between two of the master's checks, as a real slave's ping falls.
                talking.dataReceived(frame({"type": "ping", "payload": self.clock.seconds()}))
            for ping in self.pings(answering_transport):
                answering.dataReceived(frame({"type": "pong", "payload": ping}))
                answered += 1
        self.assertEqual(answered, rounds)
        self.assertFalse(answering_transport.disconnecting)
        to_talking = [envelope["type"] for envelope in sent(talking_transport)]
        # The first round's, and one round in RTT_EVERY after it; a pong for each of its pings.
        self.assertEqual(to_talking.count("ping"), 2)
        self.assertEqual(to_talking.count("pong"), rounds)

    def test_quietLinkOneExchangeAnInterval(self) -> None:
        """
        A real slave and the master, both quiet, settle on one ping and its
        pong a keepalive between them (each spares a peer it has heard
        from), not one from each side; neither goes silent to the other,
        and the master keeps the link's round trip.
        """
        slave = slave_factory(self.clock, keepalive=5, vitals_interval=3600)
        self.clock.advance(0.37)  # the slave's timer off the master's ticks, as they fall
        slave_side, master_side, pump = connect_pair(self.factory, slave, self.clock)
        heard: dict[str, list[str]] = {"slave": [], "master": []}
        for side, name in ((slave_side, "slave"), (master_side, "master")):
            receive = side.frameReceived

            def counting(data: bytes, receive: Any = receive, name: str = name) -> None:
                heard[name].append(json.loads(data)["type"])
                receive(data)

            side.frameReceived = counting  # type: ignore[method-assign]
        for _ in range(round(30 / self.tick)):  # joining, then settling
            self.clock.advance(self.tick)
            pump.flush()
        heard["slave"].clear()
        heard["master"].clear()
        master_side.rtt_ms = None
        intervals = 12
        longest = {"slave": 0.0, "master": 0.0}
        for _ in range(round(intervals * 5 / self.tick)):
            self.clock.advance(self.tick)
            for side, name in ((slave_side, "slave"), (master_side, "master")):
                longest[name] = max(longest[name], self.clock.seconds() - side.last_received)
            pump.flush()
        # Neither goes long enough unheard to be called silent on the dashboard.
        self.assertLess(max(longest.values()), silent_after(5), longest)
        pings = heard["slave"].count("ping") + heard["master"].count("ping")
        pongs = heard["slave"].count("pong") + heard["master"].count("pong")
        self.assertEqual(pings, pongs)
        self.assertTrue(intervals - 1 <= pings <= intervals + 1, heard)
        self.assertEqual(set(heard["slave"] + heard["master"]), {"ping", "pong"})
        self.assertFalse(slave_side.closing or master_side.closing)
        self.assertIsNotNone(master_side.rtt_ms)

    def test_skipKeepsWithinDeadAfter(self) -> None:
        """
        A connection is spared a ping only while a peer that never pings
        would still be heard within dead_after: never when dead_after is
        short.
        """
        self.assertAlmostEqual(Keepalives(Clock(), 5.0, 15.0).heard_within, 5.0 - 1.5 * 0.1)
        self.assertAlmostEqual(Keepalives(Clock(), 5.0, 10.0).heard_within, 2.5)
        self.assertEqual(Keepalives(Clock(), 5.0, 7.5).heard_within, 0.0)

    def test_closingNotPinged(self) -> None:
        """A connection being closed is not pinged."""
        protocol, transport = self.slave()
        protocol.close("going")
        transport.clear()
        self.clock.advance(5)
        self.assertEqual(self.pings(transport), [])

    def test_failedPingStopsNoOther(self) -> None:
        """A ping that cannot be sent is logged, and the others still go."""
        broken, _ = self.slave(port=1)
        healthy, transport = self.slave(port=2)

        def fail(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError("cannot send")

        broken.send = fail
        transport.clear()
        self.clock.advance(5)
        self.assertEqual(self.pings(transport), [1005.0])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.clock.advance(5)
        self.assertEqual(self.pings(transport), [1010.0])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_timerOnlyWhileConnected(self) -> None:
        """The timer stops with the last connection, and starts again with the next."""
        protocol, transport = self.slave()
        self.assertEqual(len(self.factory.keepalives), 1)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(self.factory.keepalives), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(100)
        protocol, transport = self.slave()
        transport.clear()
        self.clock.advance(5)
        self.assertEqual(self.pings(transport), [1105.0])


class NodeLineTests(MasterTestCase):
    """A herd joining at once is counted in the log, not written line by line."""

    def test_stormCounted(self) -> None:
        """Past 100 lines in 10 s, joins and departures are counted in one line."""
        with capturedLogs() as events:
            for _ in range(150):
                protocol, transport = self.slave()
                protocol.connectionLost(Failure(ConnectionDone()))
            self.clock.advance(10)
        lines = [formatEvent(e) for e in events]
        self.assertEqual(len([line for line in lines if line.startswith("Slave connected")]), 34)
        self.assertIn("Left out of the log in the last 10 s: 234 departures, 116 joins"
                      " (/api/slaves lists every slave)", lines)


class IdleCostTests(MasterTestCase):
    """
    What an idle slave costs the master: no timer of its own, and no state
    outside its protocol's slots.
    """

    def test_oneTimerForAll(self) -> None:
        """Fifty slaves wait on the same timers as one."""
        self.slave()
        alone = len(self.clock.getDelayedCalls())
        # Fewer than the log's budget of join lines, which has a timer too.
        for port in range(49):
            self.slave(5000 + port)
        self.assertEqual(len(self.clock.getDelayedCalls()), alone)

    def test_eachDroppedInTurn(self) -> None:
        """Each silent slave among several is dropped dead_after after it was last heard from."""
        a, a_transport = self.slave(1)
        self.clock.advance(5)
        b, b_transport = self.slave(2)
        self.clock.advance(5)
        a.dataReceived(frame({"type": "pong", "payload": 1010.0}))
        dropped: dict[str, float] = {}
        for _ in range(30):
            self.clock.advance(1)
            for name, transport in (("a", a_transport), ("b", b_transport)):
                if transport.disconnected:
                    dropped.setdefault(name, self.clock.seconds())
        self.assertEqual(dropped, {"a": 1025.0, "b": 1020.0})

    def test_stateInSlots(self) -> None:
        """A working connection adds nothing to its protocol's dict: its state is in slots."""
        protocol, transport = self.slave()
        self.ask(transport, protocol, {"type": "hello", "payload": {"uuid": None, "version": 1}, "id": 1})
        protocol.dataReceived(frame({"type": "computer_details", "payload": SLAVE_FACTS}))
        protocol.dataReceived(frame({"type": "vitals", "payload": VITALS})[:-3])
        protocol.dataReceived(frame({"type": "vitals", "payload": VITALS})[-3:])
        self.clock.advance(5)
        protocol.dataReceived(frame({"type": "pong", "payload": 1005.0}))
        self.clock.advance(60)
        self.assertEqual(set(vars(protocol)) - {"connected", "transport", "factory", "MAX_LENGTH"}, set())


class DepartureTests(MasterTestCase):
    """
    A slave that goes is taken out of the registry by the master.
    """

    def test_removedAndLogged(self) -> None:
        """The master removes a slave that went and logs the disconnection."""
        protocol, transport = self.slave()
        uuid = protocol.handler.uuid
        with capturedLogs() as events:
            protocol.connectionLost(Failure(ConnectionDone()))
        self.assertNotIn(uuid, self.registry)
        messages = [formatEvent(e) for e in events]
        self.assertIn(
            f"Got disconnection exception with message: Lost connection to slave 10.0.0.2:4321 ({uuid}): connection closed by peer",
            messages,
        )
        self.assertIn(f"Shutting down slave connection handler for {uuid} at 10.0.0.2:4321", messages)
        self.assertTrue(all(e.get("uuid") == uuid for e in events if "Shutting" in formatEvent(e)))
        # The master handled the failure; nothing is left to raise.
        self.assertIsNone(self.successResultOf(protocol.handler.gone))

    def test_goneFiresOnceForgotten(self) -> None:
        """
        The master forgets the slave before gone fires: what is chained on
        it sees the slave forgotten and no failure left.
        """
        protocol, transport = self.slave()
        gone = protocol.handler.gone
        seen = []
        gone.addCallback(lambda _: seen.append(protocol.handler.uuid in self.registry))
        self.assertNoResult(gone)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(seen, [False])
        self.assertIs(protocol.handler.gone, gone)

    def test_silentSlaveDropped(self) -> None:
        """A slave silent for dead_after seconds is closed and then removed."""
        protocol, transport = self.slave()
        self.clock.advance(15)
        self.assertTrue(transport.disconnected)
        protocol.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(len(self.registry), 0)
        self.assertEqual(protocol.lost.cause, "no sign of life for 15 s")


class ClockStepTests(MasterTestCase):
    """
    A step of the system clock (a Pi's first NTP sync) moves no timer of the
    master, and every time of day it shows follows the new clock.
    """

    def setUp(self) -> None:
        super().setUp()
        #: How far the test has stepped the wall clock from the timers' one.
        self.stepped = 0.0
        monotonic_timers(self.clock, monotonic=lambda: self.clock.rightNow,
                         wall=lambda: self.clock.rightNow + self.stepped)

    def details(self, protocol: Any, transport: Any) -> dict[str, Any]:
        [reply] = self.ask(transport, protocol, {"type": "info", "payload": "slave_details"})
        [shown] = reply["payload"]
        return shown

    def test_steppedForward(self) -> None:
        """An hour forward drops no slave early and none late; its times are the new clock's."""
        protocol, transport = self.slave()
        self.ask(transport, protocol, {"type": "hello", "payload": {"uuid": None, "version": 1}, "id": 1})
        protocol.dataReceived(frame({"type": "vitals", "payload": VITALS}))
        self.stepped = 3600.0
        self.clock.advance(10)
        self.assertFalse(transport.disconnecting)
        shown = self.details(protocol, transport)
        # Heard from as it asked, on the new clock; joined on the old one.
        self.assertEqual((shown["last_seen"], shown["connected_at"]), (4610.0, 1000.0))
        self.clock.advance(15)
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionLost()))
        [left] = self.registry.departures(self.clock.rightNow + self.stepped)
        self.assertEqual((left.left_at, protocol.lost.cause), (4625.0, "no sign of life for 15 s"))

    def test_steppedBack(self) -> None:
        """A day back holds no timer back: a silent slave still goes after dead_after."""
        protocol, transport = self.slave()
        self.stepped = -86400.0
        self.clock.advance(14)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)


class BacklogTests(unittest.TestCase):
    """
    The master's TCP port keeps a deep listen queue unless told otherwise.
    """

    def test_added(self) -> None:
        """A TCP description without a backlog gets the default one."""
        self.assertEqual(with_default_backlog("tcp:12345"), f"tcp:12345:backlog={DEFAULT_BACKLOG}")

    def test_kept(self) -> None:
        """An explicit backlog, or a non-TCP endpoint, is left alone."""
        self.assertEqual(with_default_backlog("tcp:1:backlog=5"), "tcp:1:backlog=5")
        self.assertEqual(with_default_backlog("unix:/tmp/sock"), "unix:/tmp/sock")
        self.assertIsNotNone(re.match("tcp6:1:backlog=", with_default_backlog("tcp6:1")))
