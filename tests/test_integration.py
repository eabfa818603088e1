"""
Master and slave services over real loopback TCP, in this process.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, endpoints, protocol, reactor, task
from twisted.internet.error import CannotListenError
from twisted.trial import unittest

from picluster.address import MasterAddress
from picluster.master.service import MasterService
from picluster.slave.session import SlaveFactory, SlaveService
from picluster.wire.messages import Vitals

from . import processes
from .helpers import frame, parse_frames, raw_frame


def wait_until(check: Callable[[], Any], what: str) -> defer.Deferred[Any]:
    """Poll C{check} often until it holds, failing the test after a while."""
    return processes.wait_until(check, what, timeout=10.0, poll=0.02)


class LoopbackTests(unittest.TestCase):
    """
    A slave joins a master over TCP and rejoins it after a restart.
    """

    @defer.inlineCallbacks
    def start_master(self, port: int = 0) -> Any:
        master = MasterService(f"tcp:{port}:interface=127.0.0.1", keepalive=1)
        master.startService()
        self.addCleanup(lambda: master.running and master.stopService())
        listening = yield master.when_listening()
        return master, listening.getHost().port

    def start_slave(self, port: int) -> SlaveFactory:
        factory = SlaveFactory(
            MasterAddress("127.0.0.1", port), keepalive=1, initial_delay=0.05, max_delay=0.2
        )
        slave = SlaveService(factory)
        slave.startService()
        self.addCleanup(slave.stopService)
        return factory

    @defer.inlineCallbacks
    def test_joinAndRejoin(self) -> Any:
        """The slave reports to the master, and rejoins a restarted one with its uuid."""
        master, port = yield self.start_master()
        slave = self.start_slave(port)
        yield wait_until(
            lambda: any(s.vitals for s in master.registry), "the slave has reported vitals"
        )
        [record] = list(master.registry)
        self.assertEqual(record.uuid, slave.uuid)
        self.assertIsNotNone(record.computer_details.hostname)
        self.assertIsInstance(record.vitals, Vitals)
        uuid = slave.uuid

        yield master.stopService()
        yield wait_until(lambda: slave.connection is None, "the slave has noticed")
        master, _ = yield self.start_master(port)
        yield wait_until(lambda: uuid in master.registry, "the slave has rejoined")
        self.assertEqual(slave.uuid, uuid)
        self.assertEqual(len(master.registry), 1)

    @defer.inlineCallbacks
    def test_masterNotThereYet(self) -> Any:
        """A slave started before its master joins once the master is up."""
        master, port = yield self.start_master()
        yield master.stopService()
        slave = self.start_slave(port)
        yield task.deferLater(reactor, 0.3, lambda: None)
        self.assertIsNone(slave.uuid)
        master, _ = yield self.start_master(port)
        yield wait_until(lambda: len(master.registry) == 1, "the slave has joined")


class RawPeer(protocol.Protocol):
    """A peer that knows only the wire contract: raw frames in, raw bytes out."""

    def __init__(self) -> None:
        self.received = b""
        self.closed = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(None)

    def envelopes(self) -> list[dict[str, Any]]:
        return parse_frames(self.received)


class WireContractTests(unittest.TestCase):
    """
    A peer speaking bare frames over TCP, as the tutorial's slaves did.
    """

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.master = MasterService("tcp:0:interface=127.0.0.1", keepalive=30, max_frame=4096)
        self.master.startService()
        self.addCleanup(self.master.stopService)
        listening = yield self.master.when_listening()
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", listening.getHost().port)
        self.peer = yield endpoints.connectProtocol(endpoint, RawPeer())
        self.addCleanup(self.close_peer)

    def close_peer(self) -> Any:
        if not self.peer.closed.called:
            self.peer.transport.loseConnection()
        return self.peer.closed

    @defer.inlineCallbacks
    def test_seedStyleConversation(self) -> Any:
        """Messages without ids get the seed's answers, in order, over real TCP."""
        self.peer.transport.write(
            frame({"type": "info", "payload": "uuid"})
            + frame({"type": "message", "payload": "I am still alive, client: 1"})
            + frame({"type": "ping", "payload": 99.5})
            + raw_frame(b"{]")
            + frame({"type": "info", "payload": "computer_details"})
        )
        yield wait_until(lambda: len(self.peer.envelopes()) == 4, "four replies arrived")
        uuid, pong, bad, info = self.peer.envelopes()
        self.assertEqual(uuid["type"], "uuid")
        self.assertIn(uuid["payload"], self.master.registry)
        self.assertEqual(pong, {"type": "pong", "payload": 99.5})
        self.assertEqual(bad["type"], "bad_message")
        self.assertEqual(info["type"], "master_info")
        self.assertIn("hostname", info["payload"])

    @defer.inlineCallbacks
    def test_oversizeFrameClosesOnlyThatConnection(self) -> Any:
        """A frame over --max-frame closes its connection and no other."""
        other = yield endpoints.connectProtocol(
            endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.peer.transport.getPeer().port),
            RawPeer(),
        )

        def close_other() -> defer.Deferred[None]:
            if not other.closed.called:
                other.transport.loseConnection()
            return other.closed

        self.addCleanup(close_other)
        yield wait_until(lambda: len(self.master.registry) == 2, "both peers are registered")
        self.peer.transport.write(struct.pack("!I", 4097) + b"x" * 100)
        yield self.peer.closed
        yield wait_until(lambda: len(self.master.registry) == 1, "the master dropped the sender")
        other.transport.write(frame({"type": "ping", "payload": 1}))
        yield wait_until(lambda: other.envelopes() == [{"type": "pong", "payload": 1}], "a pong")

    @defer.inlineCallbacks
    def test_peerThatNeverReads(self) -> Any:
        """A peer that stops reading makes the master stop reading it, and loses nothing."""
        self.peer.transport.pauseProducing()
        [slave] = list(self.master.registry)
        # Small socket buffers on both sides: the kernel would otherwise hold
        # megabytes of replies (the master writes to the socket at once when
        # nothing is queued) before the master's own buffer fills.
        self.peer.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        slave.protocol.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        requests = 40000
        request = frame({"type": "info", "payload": "uuid", "id": 1})
        for _ in range(requests // 1000):
            self.peer.transport.write(request * 1000)
            yield task.deferLater(reactor, 0, lambda: None)
        yield wait_until(lambda: slave.protocol.paused, "the master stopped reading the peer")
        self.peer.transport.resumeProducing()
        yield wait_until(
            lambda: self.peer.received.count(b'"reply_to":1}') == requests,
            "every request was answered",
        )
        self.assertFalse(slave.protocol.paused)


class ListenFailureTests(unittest.TestCase):
    """
    A master that cannot listen says so instead of hanging.
    """

    @defer.inlineCallbacks
    def test_portInUse(self) -> Any:
        """Starting on a taken port raises at once (so twistd exits) and when_listening fails."""
        first = MasterService("tcp:0:interface=127.0.0.1")
        first.startService()
        self.addCleanup(first.stopService)
        port = (yield first.when_listening()).getHost().port
        second = MasterService(f"tcp:{port}:interface=127.0.0.1")
        self.assertRaises(CannotListenError, second.startService)
        failure = yield self.assertFailure(second.when_listening(), RuntimeError)
        self.assertIn(f"could not listen on tcp:{port}", str(failure))


class FailedStartTests(unittest.TestCase):
    """A master whose slave port is taken can still be stopped cleanly."""

    @defer.inlineCallbacks
    def test_stopAfterTakenPort(self) -> Any:
        taken = reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")
        self.addCleanup(taken.stopListening)
        master = MasterService(f"tcp:{taken.getHost().port}:interface=127.0.0.1",
                               web="tcp:0:interface=127.0.0.1")
        self.assertRaises(CannotListenError, master.startService)
        yield master.stopService()
        self.assertFalse(master.running)
