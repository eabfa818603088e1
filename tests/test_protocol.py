"""
Tests for L{picluster.protocol}: framing, requests and dispatch, liveness.

Every test drives one protocol through a StringTransport and a Clock.
"""

from __future__ import annotations

import struct
from typing import Any

from twisted.internet import defer
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial import unittest

from picluster import DisconnectionException, RemoteError, RequestTimeout
from picluster.errors import FrameTooLarge
from picluster.protocol import LOGGED_BAD_MESSAGES, PeerHandler, PiClusterFactory
from picluster.wire import BadMessage

from .helpers import connect, frame, raw_frame, sent


class RecordingHandler(PeerHandler):
    """A handler serving a few test messages and remembering what it saw."""

    def __init__(self, protocol: Any) -> None:
        super().__init__(protocol)
        self.received: list[Any] = []
        self.lost: list[Failure] = []
        self.later: defer.Deferred[Any] | None = None

    def connection_lost(self, failure: Failure) -> None:
        self.lost.append(failure)

    def msg_store(self, payload: Any) -> None:
        self.received.append(payload)

    def msg_echo(self, payload: Any) -> tuple[str, Any]:
        return ("echoed", payload)

    def msg_picky(self, payload: Any) -> None:
        if not isinstance(payload, dict):
            raise BadMessage("picky payload must be an object", got=type(payload).__name__)

    def msg_broken(self, payload: Any) -> None:
        raise ZeroDivisionError("handler bug")

    def msg_huge(self, payload: Any) -> tuple[str, Any]:
        return ("huge", "x" * 10000)

    def msg_slow(self, payload: Any) -> defer.Deferred[Any]:
        self.later = defer.Deferred()
        return self.later


class RecordingFactory(PiClusterFactory):
    def make_handler(self, protocol: Any) -> RecordingHandler:
        return RecordingHandler(protocol)


class ProtocolTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.factory = RecordingFactory(keepalive=5, clock=self.clock, max_frame=4096)
        self.protocol, self.transport = connect(self.factory)
        self.handler: RecordingHandler = self.protocol.handler  # type: ignore[assignment]

    def feed(self, data: bytes, one_byte_at_a_time: bool = False) -> None:
        if one_byte_at_a_time:
            for i in range(len(data)):
                self.protocol.dataReceived(data[i : i + 1])
        else:
            self.protocol.dataReceived(data)

    def lose(self, reason: Failure | None = None) -> None:
        self.protocol.connectionLost(reason or Failure(ConnectionDone()))


class FramingTests(ProtocolTestCase):
    """
    Frames are 4-byte big-endian lengths then JSON, however TCP splits them.
    """

    def test_byteByByte(self) -> None:
        """A frame fed one byte at a time arrives whole, once."""
        self.feed(frame({"type": "store", "payload": {"n": 1}}), one_byte_at_a_time=True)
        self.assertEqual(self.handler.received, [{"n": 1}])

    def test_coalesced(self) -> None:
        """Several frames in one read are each handled, in order."""
        self.feed(b"".join(frame({"type": "store", "payload": n}) for n in range(5)))
        self.assertEqual(self.handler.received, [0, 1, 2, 3, 4])

    def test_splitAcrossReads(self) -> None:
        """Frames split at arbitrary points across reads still arrive whole."""
        first = frame({"type": "store", "payload": "a" * 50})
        data = first + frame({"type": "store", "payload": "b"})
        self.feed(data[:3])
        self.feed(data[3 : len(first) + 2])
        self.assertEqual(self.handler.received, ["a" * 50])
        self.feed(data[len(first) + 2 :])
        self.assertEqual(self.handler.received, ["a" * 50, "b"])

    def test_outgoingFraming(self) -> None:
        """What we send is a big-endian length followed by exactly that much JSON."""
        self.protocol.send("store", "x")
        data = self.transport.value()
        (length,) = struct.unpack("!I", data[:4])
        self.assertEqual(length, len(data) - 4)
        self.assertEqual(data[4:], b'{"type":"store","payload":"x"}')

    def test_oversizeFrameCloses(self) -> None:
        """A frame over the limit closes the connection without being read."""
        self.feed(struct.pack("!I", 4097) + b"{")
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.handler.received, [])
        self.lose()
        self.assertEqual(
            str(self.handler.lost[0].value),
            "Lost connection to peer 10.0.0.2:4321: frame of 4097 bytes exceeds the 4096 byte limit",
        )

    def test_frameAtLimitAccepted(self) -> None:
        """A frame exactly at the limit is accepted."""
        overhead = len(b'{"type":"store","payload":""}')
        self.feed(raw_frame(b'{"type":"store","payload":"' + b"x" * (4096 - overhead) + b'"}'))
        self.assertEqual(len(self.handler.received), 1)
        self.assertFalse(self.transport.disconnecting)

    def test_oversizeSendRefused(self) -> None:
        """Sending a message larger than the frame limit raises before writing."""
        self.assertRaises(FrameTooLarge, self.protocol.send, "store", "x" * 5000)
        self.assertEqual(self.transport.value(), b"")


class BadInputTests(ProtocolTestCase):
    """
    Every bad frame is answered with bad_message and the connection stays open.
    """

    def assertRefused(self, data: bytes, error: str, reply_to: int | None = None) -> dict[str, Any]:
        self.feed(data)
        [reply] = sent(self.transport)
        self.assertEqual(reply["type"], "bad_message")
        self.assertEqual(reply["payload"]["error"], error)
        self.assertEqual(reply.get("reply_to"), reply_to)
        self.assertFalse(self.transport.disconnecting)
        self.assertEqual(self.handler.received, [])
        return reply

    def test_notUTF8(self) -> None:
        """A frame that is not UTF-8 is refused."""
        self.assertRefused(raw_frame(b"\xff\xfe"), "frame is not valid UTF-8")

    def test_notJSON(self) -> None:
        """A frame that is not JSON is refused."""
        self.assertRefused(raw_frame(b"hello\r"), "frame is not valid JSON")

    def test_notObject(self) -> None:
        """A frame holding a JSON string is refused."""
        self.assertRefused(frame("ping"), "frame is not a JSON object")

    def test_noType(self) -> None:
        """An object without a type is refused, answering its id."""
        self.assertRefused(frame({"payload": 1, "id": 9}), 'envelope has no string "type"', 9)

    def test_unknownType(self) -> None:
        """An unknown type is refused with the type named."""
        reply = self.assertRefused(frame({"type": "launch", "id": 2}), "unknown message type", 2)
        self.assertEqual(reply["payload"]["type"], "launch")

    def test_badPayload(self) -> None:
        """A payload of the wrong shape is refused with the handler's words."""
        reply = self.assertRefused(
            frame({"type": "picky", "payload": [1]}), "picky payload must be an object"
        )
        self.assertEqual(reply["payload"]["got"], "list")

    def test_goodFrameAfterBadOnes(self) -> None:
        """After a run of bad frames, a good one is handled as usual."""
        self.feed(raw_frame(b"\xff") + frame([1]) + frame({"type": "store", "payload": 3}))
        self.assertEqual([r["type"] for r in sent(self.transport)], ["bad_message", "bad_message"])
        self.assertEqual(self.handler.received, [3])

    def test_badMessagesLoggedUpToLimit(self) -> None:
        """A stream of bad frames is all answered and counted, but logged only so far."""
        with capturedLogs() as events:
            self.feed(raw_frame(b"junk") * (LOGGED_BAD_MESSAGES + 50))
        self.assertEqual(len(sent(self.transport)), LOGGED_BAD_MESSAGES + 50)
        self.assertEqual(self.protocol.bad_messages, LOGGED_BAD_MESSAGES + 50)
        self.assertEqual(len(events), LOGGED_BAD_MESSAGES + 1)
        self.assertIn("further ones are answered, not logged", formatEvent(events[-1]))

    def test_badMessageNotAnswered(self) -> None:
        """A bad_message from the peer is never answered, so two sides cannot loop."""
        self.feed(frame({"type": "bad_message", "payload": {"error": "what?"}}))
        self.assertEqual(sent(self.transport), [])

    def test_handlerBug(self) -> None:
        """A handler that raises is logged and answered with error; we stay up."""
        self.feed(frame({"type": "broken", "id": 4}))
        [reply] = sent(self.transport)
        self.assertEqual(reply, {"type": "error", "payload": {"error": "internal error handling broken"}, "reply_to": 4})
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertFalse(self.transport.disconnecting)


    def test_replyTooLarge(self) -> None:
        """A reply too large for a frame is answered with error, not a crash."""
        self.feed(frame({"type": "huge", "id": 5}))
        [reply] = sent(self.transport)
        self.assertEqual(reply["type"], "error")
        self.assertEqual(reply["reply_to"], 5)
        self.assertIn("reply to huge too large", reply["payload"]["error"])
        self.assertEqual(len(self.flushLoggedErrors(FrameTooLarge)), 1)
        self.assertFalse(self.transport.disconnecting)

    def test_deferredHandlerBug(self) -> None:
        """A handler's Deferred failing unexpectedly is logged and answered with error."""
        self.feed(frame({"type": "slow", "id": 8}))
        self.handler.later.errback(KeyError("oops"))
        [reply] = sent(self.transport)
        self.assertEqual((reply["type"], reply["reply_to"]), ("error", 8))
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)


class DispatchTests(ProtocolTestCase):
    """
    Messages reach their handler; those with an id are answered once handled.
    """

    def test_ackWithId(self) -> None:
        """A handled message that carried an id is answered with ack."""
        self.feed(frame({"type": "store", "payload": 1, "id": 12}))
        self.assertEqual(sent(self.transport), [{"type": "ack", "payload": None, "reply_to": 12}])

    def test_silentWithoutId(self) -> None:
        """A handled message without an id gets no reply."""
        self.feed(frame({"type": "store", "payload": 1}))
        self.assertEqual(sent(self.transport), [])
        self.assertEqual(self.handler.received, [1])

    def test_replyWithoutId(self) -> None:
        """A message whose handler replies is answered even without an id."""
        self.feed(frame({"type": "echo", "payload": [1]}))
        self.assertEqual(sent(self.transport), [{"type": "echoed", "payload": [1]}])

    def test_pingAnswered(self) -> None:
        """A ping is answered with a pong holding the same payload, id or not."""
        self.feed(frame({"type": "ping", "payload": 1234.5}) + frame({"type": "ping", "payload": 1, "id": 3}))
        self.assertEqual(
            sent(self.transport),
            [{"type": "pong", "payload": 1234.5}, {"type": "pong", "payload": 1, "reply_to": 3}],
        )

    def test_deferredReply(self) -> None:
        """A handler's Deferred is answered when it fires, not before."""
        self.feed(frame({"type": "slow", "id": 5}))
        self.assertEqual(sent(self.transport), [])
        self.handler.later.callback(("done", 42))
        self.assertEqual(sent(self.transport), [{"type": "done", "payload": 42, "reply_to": 5}])

    def test_deferredRefusal(self) -> None:
        """A handler's Deferred failing with BadMessage is answered bad_message."""
        self.feed(frame({"type": "slow", "id": 6}))
        self.handler.later.errback(BadMessage("too late"))
        [reply] = sent(self.transport)
        self.assertEqual((reply["type"], reply["payload"], reply["reply_to"]), ("bad_message", {"error": "too late"}, 6))

    def test_deferredReplyAfterLoss(self) -> None:
        """A handler's Deferred firing after the connection went sends nothing."""
        self.feed(frame({"type": "slow", "id": 7}))
        self.lose()
        self.handler.later.callback(None)
        self.assertEqual(self.transport.value(), b"")

    def test_freeTextMessage(self) -> None:
        """A message of free text is accepted; a non-string one is refused."""
        self.feed(frame({"type": "message", "payload": "I am still alive, client: 1"}))
        self.assertEqual(sent(self.transport), [])
        self.feed(frame({"type": "message", "payload": 5}))
        self.assertEqual(sent(self.transport)[0]["type"], "bad_message")


class RequestTests(ProtocolTestCase):
    """
    request() ties replies to ids, fails clearly, and never leaks.
    """

    def test_reply(self) -> None:
        """A request fires with the reply whose reply_to matches its id."""
        d = self.protocol.request("info", "uuid")
        [request] = sent(self.transport)
        self.assertEqual((request["type"], request["payload"]), ("info", "uuid"))
        self.feed(frame({"type": "uuid", "payload": "abc", "reply_to": request["id"]}))
        self.assertEqual(self.successResultOf(d)["payload"], "abc")
        self.assertEqual(self.protocol.pending_requests, {})

    def test_repliesOutOfOrder(self) -> None:
        """Replies in any order reach the request that asked for them."""
        first = self.protocol.request("echo", 1)
        second = self.protocol.request("echo", 2)
        ids = [r["id"] for r in sent(self.transport)]
        self.feed(frame({"type": "echoed", "payload": "two", "reply_to": ids[1]}))
        self.feed(frame({"type": "echoed", "payload": "one", "reply_to": ids[0]}))
        self.assertEqual(self.successResultOf(first)["payload"], "one")
        self.assertEqual(self.successResultOf(second)["payload"], "two")

    def test_badMessageReply(self) -> None:
        """A bad_message reply fails the request with RemoteError saying why."""
        d = self.protocol.request("info", "nonsense")
        [request] = sent(self.transport)
        self.feed(frame({"type": "bad_message", "payload": {"error": "unknown info request"}, "reply_to": request["id"]}))
        failure = self.failureResultOf(d, RemoteError)
        self.assertEqual(str(failure.value), "info refused by peer (bad_message): unknown info request")
        self.assertEqual(failure.value.reply["reply_to"], request["id"])

    def test_maxFrameCapped(self) -> None:
        """No frame limit goes past what a 4-byte length prefix can say."""
        self.assertEqual(PiClusterFactory(max_frame=2**40).max_frame, 2**32 - 1)

    def test_errorReply(self) -> None:
        """An error reply fails the request with RemoteError too, and no later callback runs."""
        d = self.protocol.request("info", "uuid")
        [request] = sent(self.transport)
        called: list[Any] = []
        d.addCallback(called.append)
        self.feed(frame({"type": "error", "payload": {"error": "internal error handling info"},
                         "reply_to": request["id"]}))
        failure = self.failureResultOf(d, RemoteError)
        self.assertEqual(failure.value.reply["type"], "error")
        self.assertEqual(called, [])
        self.assertEqual(self.protocol.pending_requests, {})

    def test_timeout(self) -> None:
        """A request with no reply fails with RequestTimeout and is forgotten."""
        d = self.protocol.request("info", "uuid", timeout=10)
        self.clock.advance(9.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        failure = self.failureResultOf(d, RequestTimeout)
        self.assertEqual(str(failure.value), "no reply to info within 10 s")
        self.assertEqual(self.protocol.pending_requests, {})

    def test_lateReplyIgnored(self) -> None:
        """A reply arriving after its request timed out is dropped quietly."""
        d = self.protocol.request("info", "uuid", timeout=1)
        [request] = sent(self.transport)
        self.clock.advance(2)
        self.failureResultOf(d, RequestTimeout)
        self.feed(frame({"type": "uuid", "payload": "x", "reply_to": request["id"]}))
        self.assertEqual(sent(self.transport), [])
        self.assertFalse(self.transport.disconnecting)

    def test_oneTimerForAllRequests(self) -> None:
        """
        Requests leave no timer each: one serves them all, and once every
        request is answered it fires, finds nothing due, and is gone.
        """
        calls_before = len(self.clock.getDelayedCalls())
        waiting = [self.protocol.request("info", "uuid", timeout=10) for _ in range(100)]
        self.assertEqual(len(self.clock.getDelayedCalls()), calls_before + 1)
        for request in sent(self.transport):
            self.feed(frame({"type": "uuid", "payload": "x", "reply_to": request["id"]}))
        for d in waiting:
            self.successResultOf(d)
        self.clock.advance(10)
        self.assertEqual(self.protocol.pending_requests, {})
        self.assertEqual(len(self.clock.getDelayedCalls()), calls_before)

    def test_timeoutsEach(self) -> None:
        """
        Each request times out after its own timeout, whatever the order
        they were made in, and not before.
        """
        slow = self.protocol.request("info", "uuid", timeout=30)
        self.clock.advance(1)
        quick = self.protocol.request("info", "uuid", timeout=5)
        self.clock.advance(4.9)
        self.assertNoResult(quick)
        self.clock.advance(0.2)
        self.assertEqual(str(self.failureResultOf(quick, RequestTimeout).value),
                         "no reply to info within 5 s")
        self.assertNoResult(slow)
        # At 6.1 s: due at 16.1 s, before the first request.
        later = self.protocol.request("echo", 1, timeout=10)
        self.clock.advance(9.9)
        self.assertNoResult(later)
        self.clock.advance(0.2)
        self.failureResultOf(later, RequestTimeout)
        self.assertNoResult(slow)
        self.clock.advance(13.6)
        self.assertNoResult(slow)
        self.clock.advance(0.4)
        self.failureResultOf(slow, RequestTimeout)
        self.assertEqual(self.protocol.pending_requests, {})

    def test_staggeredTimeoutsInOrder(self) -> None:
        """
        Many unanswered requests made a millisecond apart time out one by
        one, each at its own deadline, while answered ones in between leave
        the bookkeeping no bigger than twice what still waits.
        """
        unanswered = []
        for _ in range(300):
            unanswered.append(self.protocol.request("info", "uuid", timeout=2))
            answered = self.protocol.request("info", "uuid", timeout=2)
            [request] = sent(self.transport)[-1:]
            self.feed(frame({"type": "uuid", "payload": "x", "reply_to": request["id"]}))
            self.successResultOf(answered)
            self.assertLessEqual(
                len(self.protocol._deadlines), 2 * len(self.protocol.pending_requests) + 64
            )
            self.clock.advance(0.001)
        # At 2.3 s: the first was due at 2.0 s, the last is due at 2.299 s.
        self.clock.advance(2.0 - 0.3 + 0.0005)
        timed_out = [d for d in unanswered if d.called]
        self.assertEqual(len(timed_out), 1)
        for n in range(1, 300):
            self.assertNoResult(unanswered[n])
            self.clock.advance(0.001)
            self.failureResultOf(unanswered[n], RequestTimeout)
        self.failureResultOf(unanswered[0], RequestTimeout)
        self.assertEqual(self.protocol.pending_requests, {})
        self.assertEqual(self.protocol._deadlines, [])

    def test_requestFromTimeoutErrback(self) -> None:
        """A request made by a timed-out request's errback times out in turn."""
        first = self.protocol.request("echo", 1, timeout=5)
        other = self.protocol.request("echo", 2, timeout=20)
        again: list[defer.Deferred[Any]] = []
        first.addErrback(lambda _: again.append(self.protocol.request("echo", 3, timeout=2)))
        self.clock.advance(5.1)
        self.assertNoResult(again[0])
        self.clock.advance(2)
        self.failureResultOf(again[0], RequestTimeout)
        self.assertNoResult(other)

    def test_lossStopsTimer(self) -> None:
        """A lost connection leaves no timer of its requests behind."""
        d = self.protocol.request("echo", 1, timeout=10)
        self.lose()
        self.failureResultOf(d, DisconnectionException)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancel(self) -> None:
        """Cancelling a request forgets its id."""
        d = self.protocol.request("info", "uuid")
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(self.protocol.pending_requests, {})

    def test_idsAreDistinct(self) -> None:
        """Each request on a connection gets its own id."""
        for _ in range(3):
            self.protocol.request("echo", None)
        ids = [r["id"] for r in sent(self.transport)]
        self.assertEqual(len(set(ids)), 3)

    def test_unencodableRequest(self) -> None:
        """A request that cannot be encoded fails at once and is not pending."""
        d = self.protocol.request("echo", object())
        self.failureResultOf(d, TypeError)
        self.assertEqual(self.protocol.pending_requests, {})


class DisconnectionTests(ProtocolTestCase):
    """
    connectionLost becomes a DisconnectionException for every waiter.
    """

    def test_pendingRequestsFail(self) -> None:
        """Every request still waiting errbacks with DisconnectionException."""
        requests = [self.protocol.request("echo", n) for n in range(3)]
        self.lose(Failure(ConnectionLost()))
        for d in requests:
            failure = self.failureResultOf(d, DisconnectionException)
            self.assertEqual(str(failure.value), "Lost connection to peer 10.0.0.2:4321: connection lost")
        self.assertEqual(self.protocol.pending_requests, {})

    def test_keepsOriginalReason(self) -> None:
        """The exception keeps the original Failure for whoever needs it."""
        reason = Failure(ConnectionRefusedError())
        d = self.protocol.request("echo", 1)
        self.lose(reason)
        failure = self.failureResultOf(d, DisconnectionException)
        self.assertIs(failure.value.reason, reason)
        self.assertEqual(failure.value.cause, "connection refused")

    def test_handlerTold(self) -> None:
        """The handler hears of the loss with the same exception."""
        self.lose()
        [failure] = self.handler.lost
        self.assertTrue(failure.check(DisconnectionException))
        self.assertEqual(str(failure.value), "Lost connection to peer 10.0.0.2:4321: connection closed by peer")

    def test_sendAfterLoss(self) -> None:
        """Sending on a lost connection raises DisconnectionException."""
        self.lose()
        self.assertRaises(DisconnectionException, self.protocol.send, "store", 1)

    def test_requestAfterLoss(self) -> None:
        """A request on a lost connection fails at once, pending nothing."""
        self.lose()
        self.failureResultOf(self.protocol.request("echo", 1), DisconnectionException)
        self.assertEqual(self.protocol.pending_requests, {})

    def test_errbackMaySendAgain(self) -> None:
        """An errback that sends again gets DisconnectionException, not a crash."""
        d = self.protocol.request("echo", 1)
        again: list[defer.Deferred[Any]] = []
        d.addErrback(lambda _: again.append(self.protocol.request("echo", 2)))
        self.lose()
        self.failureResultOf(again[0], DisconnectionException)
        self.assertEqual(self.protocol.pending_requests, {})

    def test_whenLost(self) -> None:
        """when_lost fires with the exception, before and after the loss."""
        before = self.protocol.when_lost()
        self.assertNoResult(before)
        self.lose()
        self.assertIsInstance(self.successResultOf(before), DisconnectionException)
        self.assertIsInstance(self.successResultOf(self.protocol.when_lost()), DisconnectionException)

    def test_ownCloseCause(self) -> None:
        """A deliberate close names our cause, not Twisted's generic one."""
        self.protocol.close("going away")
        self.lose()
        self.assertEqual(self.protocol.lost.cause, "going away")

    def test_noTimersLeft(self) -> None:
        """After the loss no timer of the connection is left on the clock."""
        self.protocol.start_keepalive(5)
        self.protocol.request("echo", 1).addErrback(lambda _: None)
        self.lose()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class LivenessTests(ProtocolTestCase):
    """
    Keepalive pings go out, round trips are measured, silent peers are dropped.
    """

    def test_keepalivePings(self) -> None:
        """start_keepalive sends a ping each interval, holding our clock's time."""
        self.protocol.start_keepalive(5)
        self.clock.advance(5)
        self.clock.advance(5)
        self.assertEqual(sent(self.transport), [{"type": "ping", "payload": 5.0}, {"type": "ping", "payload": 10.0}])

    def test_roundTrip(self) -> None:
        """A pong echoing our ping's time records the round trip in ms."""
        self.protocol.start_keepalive(5)
        self.clock.advance(5)
        self.clock.advance(0.25)
        self.feed(frame({"type": "pong", "payload": 5.0}))
        self.assertAlmostEqual(self.protocol.rtt_ms, 250.0)

    def test_nonsensePongIgnored(self) -> None:
        """A pong whose payload is not one of our times changes nothing."""
        self.clock.advance(100)
        self.feed(frame({"type": "pong", "payload": "x"}) + frame({"type": "pong", "payload": 500}))
        self.assertIsNone(self.protocol.rtt_ms)

    def test_deadPeerClosed(self) -> None:
        """A peer silent for dead_after seconds is dropped, saying so."""
        self.clock.advance(14.9)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(self.transport.disconnecting)
        self.lose(Failure(ConnectionLost()))
        self.assertEqual(
            str(self.handler.lost[0].value),
            "Lost connection to peer 10.0.0.2:4321: no sign of life for 15 s",
        )

    def test_anyFrameIsLife(self) -> None:
        """Any bytes arriving, even a bad frame, keep a peer alive."""
        for _ in range(4):
            self.clock.advance(10)
            self.feed(raw_frame(b"nonsense"))
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(15)
        self.assertTrue(self.transport.disconnecting)

    def test_partialFrameIsLife(self) -> None:
        """A large frame trickling in keeps its sender alive."""
        data = frame({"type": "store", "payload": "x" * 100})
        for i in range(0, len(data), 10):
            self.clock.advance(10)
            self.feed(data[i : i + 10])
        self.assertFalse(self.transport.disconnecting)
        self.assertEqual(self.handler.received, ["x" * 100])

    def test_oneTimerPerConnection(self) -> None:
        """Frames do not pile up timers: the liveness check is one delayed call."""
        for _ in range(100):
            self.feed(frame({"type": "store", "payload": 1}))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)


class SocketOptionTests(unittest.TestCase):
    """The options a real TCP connection gets, on both of its ends."""

    @defer.inlineCallbacks
    def test_noDelayAndKeepAlive(self) -> Any:
        """
        Both ends turn off Nagle's algorithm (two frames written in a row
        would otherwise wait for a delayed ACK) and turn on TCP keepalive.
        """
        from twisted.internet import endpoints, reactor

        server_factory = RecordingFactory(keepalive=60.0)
        accepted: list[Any] = []
        server_factory.make_handler = lambda protocol: (  # type: ignore[method-assign]
            accepted.append(protocol) or RecordingHandler(protocol)
        )
        port = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            server_factory
        )
        self.addCleanup(port.stopListening)
        client = RecordingFactory(keepalive=60.0).buildProtocol(None)
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        yield endpoints.connectProtocol(endpoint, client)
        # The server's end answers a request once it is up.
        reply = yield client.request("ping", 1.0)
        self.assertEqual(reply["type"], "pong")
        [server] = accepted
        for end in (client, server):
            self.assertTrue(end.transport.getTcpNoDelay())
            self.assertTrue(end.transport.getTcpKeepAlive())
        lost = client.when_lost()
        client.transport.loseConnection()
        yield lost
        yield server.when_lost()
