"""
Tests for L{picluster.immediate}: bytes to a plain TCP socket at once,
and through the transport whenever anything waits before them.

Each test writes to a real L{tcp.Server} over one end of a socket pair, its
reactor a L{MemoryReactor}, and reads the other end itself.
"""

from __future__ import annotations

import socket

from twisted.internet import protocol, tcp
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.protocols import policies
from twisted.trial import unittest

from picluster import immediate


class DirectWriteTests(unittest.TestCase):
    """L{immediate.write} sends what nothing precedes, and queues the rest in order."""

    def setUp(self) -> None:
        ours, self.peer = socket.socketpair()
        ours.setblocking(False)
        self.peer.setblocking(False)
        self.addCleanup(ours.close)
        self.addCleanup(self.peer.close)
        self.reactor = MemoryReactor()
        self.transport = tcp.Server(ours, protocol.Protocol(), ("10.0.0.2", 4321), None, 1,
                                    self.reactor)

    def received(self) -> bytes:
        try:
            return self.peer.recv(1 << 20)
        except BlockingIOError:
            return b""

    def test_accepted(self) -> None:
        """Twisted's TCP connections are written to directly; other transports are not."""
        self.assertTrue(immediate.writes_directly(self.transport))
        self.assertFalse(immediate.writes_directly(StringTransport()))
        # TLS is such a wrapper: its bytes must go through it to be encrypted.
        wrapper = policies.ProtocolWrapper(policies.WrappingFactory(protocol.Factory()),
                                           protocol.Protocol())
        self.assertFalse(immediate.writes_directly(wrapper))

    def test_otherTwisted(self) -> None:
        """A Twisted that keeps its queue under other names is written to only through the transport."""
        del self.transport._tempDataLen
        self.assertFalse(immediate.writes_directly(self.transport))

    def test_sentAtOnce(self) -> None:
        """With nothing queued, the bytes reach the socket at once and the reactor watches nothing."""
        immediate.write(self.transport, b"frame")
        self.assertEqual(self.received(), b"frame")
        self.assertEqual(self.reactor.getWriters(), [])
        self.assertEqual(self.transport._tempDataLen, 0)

    def test_queuedBehind(self) -> None:
        """Bytes written while others wait in the transport go behind them, through it."""
        self.transport.write(b"first ")
        immediate.write(self.transport, b"second")
        self.assertEqual(self.received(), b"")
        self.assertEqual(self.reactor.getWriters(), [self.transport])
        self.transport.doWrite()
        self.assertEqual(self.received(), b"first second")

    def test_socketFull(self) -> None:
        """What the socket does not take is queued in the transport, in order, and sent on its turn."""
        data = bytes(range(256)) * 4096
        immediate.write(self.transport, data)
        self.assertGreater(self.transport._tempDataLen, 0)
        got = self.received()
        while len(got) < len(data):
            self.transport.doWrite()
            got += self.received()
        self.assertEqual(got, data)

    def test_closing(self) -> None:
        """A transport asked to close is written to only through itself."""
        self.transport.disconnecting = True
        immediate.write(self.transport, b"late")
        self.assertEqual(self.received(), b"")
        self.assertEqual(self.transport._tempDataLen, 4)
