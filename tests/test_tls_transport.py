"""
Tests for L{picluster.trust.channel.BoundedTLSTransport}'s writes: the
answers to a read leave at its end, what is written outside a read leaves
on the next turn with every other connection's, from one reactor call; and
for its reads: every record of a read is handed on in that read.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import protocol
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.test import iosim

from picluster.trust.channel import GATHER_BYTES, PinnedMasterTLS, TLSFactory
from tests.test_trust import TrustDirectory


class Answering(protocol.Protocol):
    """Answers each read with three small writes."""

    def dataReceived(self, data: bytes) -> None:
        for piece in (b"<", data, b">"):
            self.transport.write(piece)


class Receiving(protocol.Protocol):
    """Keeps what arrives, and whether the connection went."""

    def __init__(self) -> None:
        self.received = b""
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True


class TLSPair(TrustDirectory):
    """A master side that answers each read (C{answering}), and nodes connected to it over TLS."""

    answering: type[protocol.Protocol] = Answering

    def setUp(self) -> None:
        super().setUp()
        # Each side its own clock, so that the master side's calls are counted alone.
        self.master_clock = Clock()
        self.node_clock = Clock()
        self.masters = TLSFactory(self.trust.server_options(), False,
                                  protocol.Factory.forProtocol(self.answering),
                                  clock=self.master_clock)

    def connect(self) -> tuple[Any, Receiving, iosim.IOPump]:
        """A node connected to the master side over TLS in memory, its handshake done."""
        server = self.masters.buildProtocol(IPv4Address("TCP", "10.0.0.9", 5000))
        node = Receiving()
        nodes = TLSFactory(PinnedMasterTLS(self.trust.fingerprint), True,
                           protocol.Factory.forProtocol(lambda: node), clock=self.node_clock)
        client = nodes.buildProtocol(IPv4Address("TCP", "10.0.0.1", 12345))
        pump = iosim.connect(server, iosim.makeFakeServer(server), client,
                             iosim.makeFakeClient(client), greet=False)
        self.pump(pump)
        return server, node, pump

    def pump(self, pump: iosim.IOPump) -> None:
        """Move bytes both ways until none are left, the node's turns run, the master's not."""
        for _ in range(20):
            self.node_clock.advance(0)
            if not pump.pump(advanceClock=False):
                break


class GatheredWritesTests(TLSPair):
    """Small writes are gathered, and sent without a timer per connection."""

    def test_answersLeaveAtTheReadsEnd(self) -> None:
        """The writes made while a read is handled leave when it ends, with no reactor call scheduled."""
        server, node, pump = self.connect()
        pump.client.write(b"ping")
        self.pump(pump)
        self.assertEqual(node.received, b"<ping>")
        self.assertEqual(self.master_clock.getDelayedCalls(), [])

    def test_writesOutsideAReadShareOneCall(self) -> None:
        """What connections write outside a read waits for one call of the factory's, which sends it all."""
        first, first_node, first_pump = self.connect()
        second, second_node, second_pump = self.connect()
        first.write(b"one")
        first.write(b"two")
        second.write(b"three")
        self.assertEqual(len(self.master_clock.getDelayedCalls()), 1)
        self.pump(first_pump)
        self.pump(second_pump)
        self.assertEqual((first_node.received, second_node.received), (b"", b""))
        self.master_clock.advance(0)
        self.pump(first_pump)
        self.pump(second_pump)
        self.assertEqual((first_node.received, second_node.received), (b"onetwo", b"three"))
        self.assertEqual(self.master_clock.getDelayedCalls(), [])

    def test_largeGatheringLeavesAtOnce(self) -> None:
        """Past GATHER_BYTES, what was gathered is handed to OpenSSL without waiting for the turn."""
        server, node, pump = self.connect()
        server.write(b"a" * (GATHER_BYTES // 2))
        server.write(bytearray(b"b" * (GATHER_BYTES // 2 + 1)))
        self.pump(pump)
        self.assertEqual(node.received, b"a" * (GATHER_BYTES // 2) + b"b" * (GATHER_BYTES // 2 + 1))

    def test_loseConnectionSendsWhatWasGathered(self) -> None:
        """Closing sends what is gathered first; what is written after is dropped."""
        server, node, pump = self.connect()
        server.write(b"last words")
        server.loseConnection()
        server.write(b"too late")
        self.master_clock.advance(0)
        self.pump(pump)
        self.assertEqual(node.received, b"last words")
        self.assertTrue(node.lost)

    def test_abortDropsWhatWasGathered(self) -> None:
        """An aborted connection sends nothing more, and the factory's call finds nothing to send."""
        server, node, pump = self.connect()
        server.write(b"never")
        server.abortConnection()
        self.master_clock.advance(0)
        self.pump(pump)
        self.assertEqual(node.received, b"")

    def test_textRefused(self) -> None:
        """Text is not bytes: refused at once, as by every Twisted transport."""
        server, _, _ = self.connect()
        self.assertRaises(TypeError, server.write, "text")

    def test_oneFailureSparesTheOthers(self) -> None:
        """A connection whose send fails is logged; the others' still leave."""
        first, _, _ = self.connect()
        second, second_node, second_pump = self.connect()
        first.write(b"doomed")
        second.write(b"fine")

        def broken() -> None:
            raise RuntimeError("no memory for this record")

        first.send_gathered = broken
        self.master_clock.advance(0)
        self.pump(second_pump)
        self.assertEqual(second_node.received, b"fine")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class AnsweringReceiving(Receiving):
    """Answers each read as L{Answering} does, keeping what arrived and whether the connection went."""

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        Answering.dataReceived(self, data)  # type: ignore[arg-type]


class ReadLoopTests(TLSPair):
    """Every record of a read is handed on in that read, and a record split across reads once whole."""

    answering = AnsweringReceiving

    def test_recordsOfOneReadAllDelivered(self) -> None:
        """Several records arriving in one read are each handed on, in that read."""
        server, node, pump = self.connect()
        for piece in (b"one", b"two", b"three"):
            pump.client.write(piece)
            pump.client.send_gathered()
        self.pump(pump)
        self.assertEqual(node.received, b"<one><two><three>")

    def test_partialRecordWaitsForItsRest(self) -> None:
        """A record split across reads is handed on whole, once its last byte comes."""
        server, node, pump = self.connect()
        pump.client.write(b"split")
        pump.client.send_gathered()
        record = b"".join(pump.clientIO.stream)
        pump.clientIO.stream = []
        server.dataReceived(record[:7])
        self.assertEqual(server.wrappedProtocol.received, b"")
        server.dataReceived(record[7:])
        self.assertEqual(server.wrappedProtocol.received, b"split")
        self.pump(pump)
        self.assertEqual(node.received, b"<split>")

    def test_closeAfterDataInOneRead(self) -> None:
        """Data and the peer's close in the same read: the data is handed on, then the close."""
        server, node, pump = self.connect()
        master_side = server.wrappedProtocol
        pump.client.write(b"bye")
        pump.client.loseConnection()
        self.pump(pump)
        self.assertEqual(master_side.received, b"bye")
        self.assertTrue(master_side.lost)
