"""
Tests for L{picluster.wire.protocol}: framing, requests and dispatch, liveness.

Every test drives one protocol through a StringTransport and a Clock.
"""

from __future__ import annotations

import struct
from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer

from picluster import DisconnectionException, RemoteError, RequestTimeout, wire
from picluster.wire import BadMessage
from picluster.wire.errors import BadReply, FrameTooLarge, ServiceError
from picluster.wire.messages import TaskList, Welcome
from picluster.wire.protocol import (
    DEFAULT_FRAME_DEADLINE,
    DEFAULT_REQUEST_TIMEOUT,
    LOGGED_BAD_MESSAGES,
    OUTBOX_BYTES,
    PeerHandler,
    PiClusterFactory,
    PiClusterProtocol,
    Reply,
    format_address,
)
from picluster.wire.stats import WireStats

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

    def msg_busy(self, payload: Any) -> None:
        raise ServiceError("the queue is full")

    def msg_rude(self, payload: Any) -> None:
        raise BadMessage("go away", close=True)

    def msg_odd(self, payload: Any) -> int:
        return 5

    def msg_pair(self, payload: Any) -> list[Any]:
        return ["paired", payload]

    def msg_then(self, payload: Any) -> tuple[str, Any]:
        self.protocol.after_answers(lambda: self.protocol.send("later", payload))
        return ("now", payload)


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

    def test_sendExactlyAtLimit(self) -> None:
        """A message that encodes to exactly the frame limit is sent whole."""
        overhead = len(b'{"type":"store","payload":""}')
        self.protocol.send("store", "x" * (4096 - overhead))
        data = self.transport.value()
        self.assertEqual(struct.unpack("!I", data[:4]), (4096,))
        self.assertEqual(len(data), 4 + 4096)
        self.assertEqual(self.protocol.frames_out, 1)

    def test_sendOneByteOver(self) -> None:
        """One byte over the frame limit raises FrameTooLarge, saying by how much, and writes nothing."""
        overhead = len(b'{"type":"store","payload":""}')
        e = self.assertRaises(FrameTooLarge, self.protocol.send, "store", "x" * (4097 - overhead))
        self.assertEqual(str(e), "store message of 4097 bytes exceeds the 4096 byte frame limit")
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.protocol.frames_out, 0)

    def test_receiveOneByteOver(self) -> None:
        """A whole frame one byte over the limit is not handled, and closes the connection."""
        overhead = len(b'{"type":"store","payload":""}')
        self.feed(raw_frame(b'{"type":"store","payload":"' + b"x" * (4097 - overhead) + b'"}'))
        self.assertEqual(self.handler.received, [])
        self.assertTrue(self.transport.disconnecting)
        self.assertFalse(self.transport.disconnected)  # a clean close, not an abort

    def test_oversizeLogged(self) -> None:
        """An oversize frame is logged with its size and the limit."""
        with capturedLogs() as events:
            self.feed(struct.pack("!I", 5000))
        [event] = events
        self.assertEqual(
            formatEvent(event),
            "Closing connection to peer 10.0.0.2:4321: a frame of 5000 bytes exceeds the 4096 byte limit",
        )

    def test_oversizeWhileClosing(self) -> None:
        """An oversize frame arriving once we are closing is neither logged nor a new cause."""
        self.protocol.close("going away")
        with capturedLogs() as events:
            self.feed(struct.pack("!I", 5000))
        self.assertEqual(list(events), [])
        self.lose()
        self.assertEqual(self.protocol.lost.cause, "going away")

    def test_framesIgnoredWhileClosing(self) -> None:
        """Frames arriving once we are closing are neither handled, counted nor answered."""
        self.protocol.close("going away")
        self.feed(frame({"type": "store", "payload": 1}) + frame({"type": "ping", "id": 1}) + raw_frame(b"junk"))
        self.assertEqual(self.handler.received, [])
        self.assertEqual(self.protocol.frames_in, 0)
        self.assertEqual(self.transport.value(), b"")

    def test_framesCounted(self) -> None:
        """Every frame received is counted, bad ones too, and every frame sent."""
        self.feed(frame({"type": "store", "payload": 1}) + raw_frame(b"junk") + frame({"type": "ping"}))
        self.assertEqual(self.protocol.frames_in, 3)
        self.assertEqual(self.protocol.frames_out, 2)  # bad_message, pong
        self.protocol.send("store", 2)
        self.assertEqual(self.protocol.frames_out, 3)

    def test_envelopeBytes(self) -> None:
        """An envelope is written as type, payload, then id or reply_to, compactly."""
        self.protocol.send("store", [1], id=3)
        self.protocol.send("ack", None, reply_to=0)
        self.protocol.send("x")
        self.assertEqual(
            self.transport.value(),
            raw_frame(b'{"type":"store","payload":[1],"id":3}')
            + raw_frame(b'{"type":"ack","payload":null,"reply_to":0}')
            + raw_frame(b'{"type":"x","payload":null}'),
        )

    def test_maxFrameFromFactory(self) -> None:
        """The frame limit is the factory's, in both directions."""
        self.assertEqual(self.protocol.MAX_LENGTH, 4096)
        factory = RecordingFactory(keepalive=5, clock=self.clock, max_frame=100)
        protocol, transport = connect(factory)
        self.assertEqual(protocol.MAX_LENGTH, 100)
        self.assertRaises(FrameTooLarge, protocol.send, "store", "x" * 100)



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

    def test_handlerBugWithoutId(self) -> None:
        """A handler failing on a message without an id is logged, and nothing is sent back."""
        self.feed(frame({"type": "broken", "payload": 1}))
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertFalse(self.transport.disconnecting)

    def test_handlerBugLogged(self) -> None:
        """A handler's failure is logged naming the message type and the peer."""
        with capturedLogs() as events:
            self.feed(frame({"type": "broken", "id": 1}))
        [event] = events
        self.assertEqual(formatEvent(event), "Error handling broken from peer 10.0.0.2:4321")
        self.assertEqual(event["log_failure"].type, ZeroDivisionError)
        self.flushLoggedErrors(ZeroDivisionError)

    def test_handlerBugNamesType(self) -> None:
        """The error reply names the type of the message that failed, whichever it is."""
        self.feed(frame({"type": "odd", "id": 0}))
        self.assertEqual(
            sent(self.transport),
            [{"type": "error", "payload": {"error": "internal error handling odd"}, "reply_to": 0}],
        )
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)

    def test_serviceError(self) -> None:
        """A ServiceError is answered with its own words, and not logged as a failure."""
        self.feed(frame({"type": "busy", "id": 3}))
        self.assertEqual(
            sent(self.transport), [{"type": "error", "payload": {"error": "the queue is full"}, "reply_to": 3}]
        )
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_serviceErrorWithoutId(self) -> None:
        """A ServiceError on a message without an id sends nothing and logs nothing."""
        self.feed(frame({"type": "busy"}))
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_refusalCloses(self) -> None:
        """A BadMessage asking to close is answered, then the connection closes with its error as cause."""
        self.feed(frame({"type": "rude", "id": 2}))
        self.assertEqual(
            sent(self.transport), [{"type": "bad_message", "payload": {"error": "go away"}, "reply_to": 2}]
        )
        self.assertTrue(self.transport.disconnecting)
        self.assertFalse(self.transport.disconnected)
        self.lose()
        self.assertEqual(self.protocol.lost.cause, "go away")

    def test_refusalLogged(self) -> None:
        """A refused message is logged with the peer and the error."""
        with capturedLogs() as events:
            self.feed(raw_frame(b"junk"))
        self.assertEqual(
            [formatEvent(e) for e in events], ["Bad message from peer 10.0.0.2:4321: frame is not valid JSON"]
        )

    def test_badMessagesLogLimitExact(self) -> None:
        """Exactly LOGGED_BAD_MESSAGES refusals are logged, the warning coming with the last of them."""
        with capturedLogs() as events:
            self.feed(raw_frame(b"junk") * (LOGGED_BAD_MESSAGES - 1))
        self.assertEqual(len(events), LOGGED_BAD_MESSAGES - 1)
        with capturedLogs() as events:
            self.feed(raw_frame(b"junk"))
        self.assertEqual(len(events), 2)
        self.assertEqual(
            formatEvent(events[1]),
            "peer 10.0.0.2:4321 keeps sending bad messages; further ones are answered, not logged",
        )
        with capturedLogs() as events:
            self.feed(raw_frame(b"junk"))
        self.assertEqual(list(events), [])
        self.assertEqual(self.protocol.bad_messages, LOGGED_BAD_MESSAGES + 1)

    def test_refusedIdSaysWhatItGot(self) -> None:
        """A non-integer id is refused saying what came, and the reply answers no id."""
        reply = self.assertRefused(frame({"type": "store", "id": "7"}), '"id" must be an integer')
        self.assertEqual(reply, {"type": "bad_message", "payload": {"error": '"id" must be an integer', "got": "7"}})

    def test_refusedReplyToSaysWhatItGot(self) -> None:
        """A non-integer reply_to is refused saying what came, answering the message's id."""
        reply = self.assertRefused(
            frame({"type": "store", "id": 4, "reply_to": 1.5}), '"reply_to" must be an integer', 4
        )
        self.assertEqual(reply["payload"], {"error": '"reply_to" must be an integer', "got": 1.5})

    def test_unknownTypeWithoutId(self) -> None:
        """An unknown type without an id is refused all the same, answering no id."""
        reply = self.assertRefused(frame({"type": "launch"}), "unknown message type")
        self.assertEqual(reply, {"type": "bad_message", "payload": {"error": "unknown message type", "type": "launch"}})

    def test_refusalAfterLoss(self) -> None:
        """A handler's Deferred refusing after the connection went is counted, and sends nothing."""
        self.feed(frame({"type": "slow", "id": 7}))
        self.lose()
        self.handler.later.errback(BadMessage("too late"))
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.protocol.bad_messages, 1)

    def test_failureAfterLoss(self) -> None:
        """A handler's Deferred failing after the connection went is logged, and sends nothing."""
        self.feed(frame({"type": "slow", "id": 7}))
        first = self.handler.later
        self.feed(frame({"type": "slow", "id": 9}))
        self.lose()
        first.errback(KeyError("gone"))
        self.handler.later.errback(ServiceError("busy"))
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_deferredServiceError(self) -> None:
        """A handler's Deferred failing with ServiceError is answered with its words."""
        self.feed(frame({"type": "slow", "id": 6}))
        self.handler.later.errback(ServiceError("disk full"))
        self.assertEqual(sent(self.transport), [{"type": "error", "payload": {"error": "disk full"}, "reply_to": 6}])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_deferredBugNamesType(self) -> None:
        """A handler's Deferred failing is answered and logged naming the message type."""
        self.feed(frame({"type": "slow", "id": 8}))
        with capturedLogs() as events:
            self.handler.later.errback(KeyError("oops"))
        self.assertEqual([formatEvent(e) for e in events], ["Error handling slow from peer 10.0.0.2:4321"])
        self.assertEqual(
            sent(self.transport), [{"type": "error", "payload": {"error": "internal error handling slow"}, "reply_to": 8}]
        )
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

    def test_ackIdZero(self) -> None:
        """An id of 0 is an id: the message is answered, with reply_to 0."""
        self.feed(frame({"type": "store", "payload": 1, "id": 0}) + frame({"type": "echo", "payload": 2, "id": 0}))
        self.assertEqual(
            sent(self.transport),
            [{"type": "ack", "payload": None, "reply_to": 0}, {"type": "echoed", "payload": 2, "reply_to": 0}],
        )

    def test_deferredNoneWithoutId(self) -> None:
        """A handler's Deferred firing None for a message without an id sends nothing."""
        self.feed(frame({"type": "slow"}))
        self.handler.later.callback(None)
        self.assertEqual(self.transport.value(), b"")

    def test_deferredNoneWithId(self) -> None:
        """A handler's Deferred firing None for a message with an id is answered with ack."""
        self.feed(frame({"type": "slow", "id": 3}))
        self.handler.later.callback(None)
        self.assertEqual(sent(self.transport), [{"type": "ack", "payload": None, "reply_to": 3}])

    def test_deferredReplyWithoutId(self) -> None:
        """A handler's Deferred firing a reply for a message without an id sends it, answering nothing."""
        self.feed(frame({"type": "slow"}))
        self.handler.later.callback(("done", 1))
        self.assertEqual(sent(self.transport), [{"type": "done", "payload": 1}])

    def test_pairAsList(self) -> None:
        """A handler returning a [type, payload] list is answered like one returning a tuple."""
        self.feed(frame({"type": "pair", "payload": 3, "id": 2}) + frame({"type": "pair", "payload": 4}))
        self.assertEqual(
            sent(self.transport), [{"type": "paired", "payload": 3, "reply_to": 2}, {"type": "paired", "payload": 4}]
        )

    def test_oddResultWithoutId(self) -> None:
        """A handler returning something that is no reply is a bug: logged, and unanswered without an id."""
        self.feed(frame({"type": "odd"}))
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)

    def test_payloadPassed(self) -> None:
        """The handler gets the payload, or None when the envelope has none."""
        self.feed(frame({"type": "store", "payload": {"a": [1]}}) + frame({"type": "store"}))
        self.assertEqual(self.handler.received, [{"a": [1]}, None])



class CountedWritesTestCase(ProtocolTestCase):
    """A protocol whose transport's writes are counted, in C{self.writes}."""

    def setUp(self) -> None:
        super().setUp()
        self.writes: list[bytes] = []
        write = self.transport.write

        def counted(data: bytes) -> None:
            self.writes.append(data)
            write(data)

        self.transport.write = counted  # type: ignore[method-assign]


class WritesTests(CountedWritesTestCase):
    """
    The frames sent while one read is handled leave in one write, in order,
    and no later than the transport needs them to pause a slow reader.
    """

    def test_oneWritePerRead(self) -> None:
        """The replies to the frames of one read are written at once, in one write, in order."""
        self.feed(b"".join(frame({"type": "ping", "payload": n, "id": n}) for n in range(3)))
        self.assertEqual(len(self.writes), 1)
        self.assertEqual([r["reply_to"] for r in sent(self.transport)], [0, 1, 2])

    def test_sendOutsideRead(self) -> None:
        """What is sent outside a read (a timer's ping, a Deferred's answer) is written at once."""
        self.protocol.send("store", 1)
        self.feed(frame({"type": "slow", "id": 4}))
        self.handler.later.callback(("done", 2))
        self.assertEqual(len(self.writes), 2)
        self.assertEqual([r["type"] for r in sent(self.transport)], ["store", "done"])

    def test_handedOverPastOutboxBytes(self) -> None:
        """
        Past OUTBOX_BYTES the frames go to the transport before the read is
        handled: a transport that pauses us then stops the frames after it.
        """
        payload = "x" * 3000
        count = 2 * OUTBOX_BYTES // len(payload)

        def pausing(data: bytes) -> None:
            self.writes.append(data)
            self.protocol.pauseProducing()

        self.transport.write = pausing  # type: ignore[method-assign]
        self.feed(b"".join(frame({"type": "echo", "payload": payload}) for _ in range(count)))
        self.assertEqual(len(self.writes), 1)
        self.assertGreater(len(self.writes[0]), OUTBOX_BYTES)
        self.assertLess(len(self.writes[0]), OUTBOX_BYTES + 2 * len(payload))
        self.assertTrue(self.protocol.paused)

    def test_abortDropsBatch(self) -> None:
        """Frames of a read after which the connection was aborted are never written."""
        self.feed(frame({"type": "ping", "payload": 1}) + frame({"type": "store", "payload": 2}))
        self.assertEqual(len(self.writes), 1)
        self.transport.clear()
        self.feed(frame({"type": "ping", "payload": 1}) + frame({"type": "broken"}))
        self.protocol.close("gone", abort=True)
        self.feed(frame({"type": "ping", "payload": 1}))
        self.assertEqual(len(self.writes), 2)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


class AfterAnswersTests(CountedWritesTestCase):
    """What waits for a read's answers is sent after them, in their write."""

    def test_afterTheAnswers(self) -> None:
        """What a handler leaves for after the answers follows every answer of the read, in one write."""
        self.feed(frame({"type": "then", "payload": 1, "id": 1})
                  + frame({"type": "ping", "payload": 2, "id": 2}))
        self.assertEqual(len(self.writes), 1)
        self.assertEqual([(m["type"], m["payload"]) for m in sent(self.transport)],
                         [("now", 1), ("pong", 2), ("later", 1)])

    def test_notInARead(self) -> None:
        """Outside a read nothing is taken, and nothing called."""
        called: list[int] = []
        self.assertFalse(self.protocol.after_answers(lambda: called.append(1)))
        self.feed(frame({"type": "ping", "payload": 2, "id": 2}))
        self.assertEqual(called, [])

    def test_failureIsLogged(self) -> None:
        """A call that fails is logged; the others still run and the answers still leave."""
        def broken() -> None:
            raise ZeroDivisionError("after answers")

        def handler(payload: Any) -> None:
            self.protocol.after_answers(broken)
            self.protocol.after_answers(lambda: self.protocol.send("later", payload))

        self.handler.msg_store = handler  # type: ignore[method-assign]
        self.feed(frame({"type": "store", "payload": 3}) + frame({"type": "ping", "payload": 4, "id": 4}))
        self.assertEqual([m["type"] for m in sent(self.transport)], ["pong", "later"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


class OnePassTests(ProtocolTestCase):
    """
    A frame of a declared type is read in one pass; what that pass does not
    take is read again the careful way, with the same outcome.
    """

    def test_declaredReply(self) -> None:
        """A reply in its own declared shape (pong to a ping) is taken in one pass, typed."""
        d = self.protocol.request("ping", 1.5)
        self.feed(frame({"type": "pong", "payload": 1.5, "reply_to": 1}))
        self.assertEqual(self.successResultOf(d), Reply("pong", 1.5))

    def test_replyOfOtherShape(self) -> None:
        """A reply whose type means something else as a message has the shape declared for the request."""
        d = self.protocol.request("cancel", {"id": 3})
        self.feed(frame({"type": "tasks", "payload": {"tasks": []}, "reply_to": 1}))
        self.assertEqual(self.successResultOf(d), Reply("tasks", TaskList(tasks=[])))

    def test_badPayloadOfDeclaredType(self) -> None:
        """A declared type with a bad payload is refused naming the field, as ever."""
        self.feed(frame({"type": "ping", "payload": "noon", "id": 2}))
        [reply] = sent(self.transport)
        self.assertEqual(reply["reply_to"], 2)
        self.assertEqual(reply["payload"]["error"], "bad ping payload: Expected `float | null`, got `str`")

    def test_duplicateType(self) -> None:
        """A frame naming its type twice is read by the careful way, where the last one counts."""
        self.feed(raw_frame(b'{"type": "store", "type": "ping", "payload": 1}'))
        self.assertEqual(sent(self.transport), [{"type": "pong", "payload": 1}])
        self.assertEqual(self.handler.received, [])


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
        self.assertEqual(self.successResultOf(d), Reply("uuid", "abc"))
        self.assertEqual(self.protocol.pending_requests, {})

    def test_repliesOutOfOrder(self) -> None:
        """Replies in any order reach the request that asked for them."""
        first = self.protocol.request("echo", 1)
        second = self.protocol.request("echo", 2)
        ids = [r["id"] for r in sent(self.transport)]
        self.feed(frame({"type": "echoed", "payload": "two", "reply_to": ids[1]}))
        self.feed(frame({"type": "echoed", "payload": "one", "reply_to": ids[0]}))
        self.assertEqual(self.successResultOf(first).payload, "one")
        self.assertEqual(self.successResultOf(second).payload, "two")

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
                len(self.protocol.requests.deadlines), 2 * len(self.protocol.pending_requests) + 64
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
        self.assertEqual(self.protocol.requests.deadlines, [])

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

    def test_defaultTimeoutFromFactory(self) -> None:
        """A request without a timeout waits the factory's request_timeout."""
        factory = RecordingFactory(keepalive=60, clock=self.clock, request_timeout=7)
        protocol, transport = connect(factory)
        d = protocol.request("info", "uuid")
        self.clock.advance(6.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        self.assertEqual(str(self.failureResultOf(d, RequestTimeout).value), "no reply to info within 7 s")

    def test_answeredFrontPopped(self) -> None:
        """After a timeout fires, answered requests at the heap's front are dropped and the timer set for the next waiting one."""
        first = self.protocol.request("echo", 1, timeout=1)
        answered = self.protocol.request("echo", 2, timeout=2)
        last = self.protocol.request("echo", 3, timeout=3)
        ids = [r["id"] for r in sent(self.transport)]
        self.feed(frame({"type": "echoed", "payload": 2, "reply_to": ids[1]}))
        self.successResultOf(answered)
        self.clock.advance(1)
        self.failureResultOf(first, RequestTimeout)
        self.assertEqual(self.protocol.requests.deadlines, [(3.0, ids[2])])
        timers = sorted(call.getTime() for call in self.clock.getDelayedCalls())
        self.assertEqual(timers, [3.0, 15.0])  # the request timer, the liveness check
        self.clock.advance(1.9)
        self.assertNoResult(last)
        self.clock.advance(0.1)
        self.failureResultOf(last, RequestTimeout)
        self.assertEqual(self.protocol.requests.deadlines, [])

    def test_heapRebuilt(self) -> None:
        """Past twice the waiting requests plus 64 entries, the deadline heap is rebuilt from those waiting, deadlines kept."""
        self.clock.advance(1)
        waiting = self.protocol.request("echo", "long", timeout=100)  # due at 101
        sizes = []
        for n in range(70):
            d = self.protocol.request("echo", n, timeout=50)  # due at 51
            sizes.append(len(self.protocol.requests.deadlines))
            [*_, request] = sent(self.transport)
            self.feed(frame({"type": "echoed", "payload": n, "reply_to": request["id"]}))
            self.successResultOf(d)
        # With two waiting, up to 2 * 2 + 64 = 68 entries are kept; the
        # 68th request makes 69, and only the two waiting then are kept.
        self.assertEqual(sizes[:67], list(range(2, 69)))
        self.assertEqual(sizes[67:], [2, 3, 4])
        [(deadline, request_id)] = [e for e in self.protocol.requests.deadlines if e[1] in self.protocol.pending_requests]
        self.assertEqual(deadline, 101.0)
        self.clock.advance(99.9)
        self.assertNoResult(waiting)
        self.clock.advance(0.2)
        self.failureResultOf(waiting, RequestTimeout)
        self.assertEqual(self.protocol.requests.deadlines, [])

    def test_rebuiltHeapKeepsDeadlines(self) -> None:
        """After a rebuild the heap holds exactly each waiting request's deadline, in heap order."""
        self.clock.advance(2)
        keep = [self.protocol.request("echo", n, timeout=10 + n) for n in range(3)]
        for n in range(69):
            self.protocol.request("echo", n, timeout=5)
            [*_, request] = sent(self.transport)
            self.feed(frame({"type": "echoed", "payload": n, "reply_to": request["id"]}))
        self.assertEqual(len(self.protocol.requests.deadlines), 72)
        # The next request makes 73 entries, over 2 * 4 + 64: a rebuild.
        self.protocol.request("echo", "last", timeout=1)
        pending = self.protocol.pending_requests
        self.assertEqual(len(pending), 4)
        self.assertEqual(sorted(self.protocol.requests.deadlines), sorted((entry[2], rid) for rid, entry in pending.items()))
        self.assertEqual(self.protocol.requests.deadlines[0], (3.0, 73))
        self.assertEqual(sorted(entry[2] for entry in pending.values()), [3.0, 12.0, 13.0, 14.0])
        for d in keep:
            self.assertNoResult(d)

    def test_earlierRequestMovesTimer(self) -> None:
        """A request due before the timer moves it earlier; one due later leaves it be."""
        self.protocol.request("echo", 1, timeout=10)
        self.protocol.request("echo", 2, timeout=20)
        self.assertEqual(sorted(c.getTime() for c in self.clock.getDelayedCalls()), [10.0, 15.0])
        quick = self.protocol.request("echo", 3, timeout=4)
        self.assertEqual(sorted(c.getTime() for c in self.clock.getDelayedCalls()), [4.0, 15.0])
        self.clock.advance(4)
        self.failureResultOf(quick, RequestTimeout)
        self.assertEqual(sorted(c.getTime() for c in self.clock.getDelayedCalls()), [10.0, 15.0])

    def test_zeroTimeout(self) -> None:
        """A request with no time to wait times out at the next turn of the clock, not at once."""
        d = self.protocol.request("echo", 1, timeout=0)
        self.assertNoResult(d)
        self.clock.advance(0)
        self.failureResultOf(d, RequestTimeout)

    def test_sameDeadlineAllTimeOut(self) -> None:
        """Requests sharing a deadline all time out when it comes, in the order they were made."""
        order: list[int] = []
        for n in range(3):
            self.protocol.request("echo", n, timeout=5).addErrback(lambda _, n=n: order.append(n))
        self.clock.advance(5)
        self.assertEqual(order, [0, 1, 2])
        self.assertEqual(self.protocol.pending_requests, {})

    def test_lossInTimeoutErrback(self) -> None:
        """A timeout's errback losing the connection fails the other due requests with the loss."""
        first = self.protocol.request("echo", 1, timeout=5)
        second = self.protocol.request("echo", 2, timeout=5)
        first.addErrback(lambda _: self.lose(Failure(ConnectionLost())))
        self.clock.advance(5)
        self.failureResultOf(second, DisconnectionException)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.protocol.requests.deadlines, [])

    def test_pongReplyRecordsRoundTrip(self) -> None:
        """A pong arriving as the reply to a ping request records the round trip too."""
        self.clock.advance(3)
        d = self.protocol.request("ping", 3.0)
        [request] = sent(self.transport)
        self.clock.advance(0.5)
        self.feed(frame({"type": "pong", "payload": 3.0, "reply_to": request["id"]}))
        self.assertEqual(self.successResultOf(d).type, "pong")
        self.assertAlmostEqual(self.protocol.rtt_ms, 500.0)

    def test_latePongRecordsRoundTrip(self) -> None:
        """A pong replying to a request no longer waiting still records the round trip."""
        self.clock.advance(10)
        self.feed(frame({"type": "pong", "payload": 9.75, "reply_to": 999}))
        self.assertAlmostEqual(self.protocol.rtt_ms, 250.0)
        self.assertEqual(self.transport.value(), b"")

    def test_lateReplyLogged(self) -> None:
        """A reply to no waiting request is noted at debug level, naming its type and id."""
        with capturedLogs() as events:
            self.feed(frame({"type": "uuid", "reply_to": 42}))
        [event] = events
        self.assertEqual(
            formatEvent(event), "Ignoring uuid from peer 10.0.0.2:4321: reply to unknown request 42"
        )
        self.assertEqual(event["log_level"].name, "debug")

    def test_replyEnvelope(self) -> None:
        """A request fires with the reply's type and payload; keys envelopes do not have are ignored."""
        d = self.protocol.request("echo", 1)
        [request] = sent(self.transport)
        self.feed(frame({"type": "echoed", "payload": [1], "reply_to": request["id"], "extra": True}))
        self.assertEqual(self.successResultOf(d), Reply("echoed", [1]))

    def test_replyDecodedAsDeclared(self) -> None:
        """A declared answer arrives in its declared shape; a malformed one fails the request."""
        d = self.protocol.request("hello", {"version": 1})
        [request] = sent(self.transport)
        welcome = {"uuid": "a" * 32, "keepalive": 5, "dead_after": 15}
        self.feed(frame({"type": "welcome", "payload": welcome, "reply_to": request["id"]}))
        self.assertEqual(self.successResultOf(d), Reply("welcome", Welcome("a" * 32, 5.0, 15.0)))
        d = self.protocol.request("hello", {"version": 1})
        [request] = sent(self.transport)
        with capturedLogs() as events:
            self.feed(frame({"type": "welcome", "payload": {"uuid": 7}, "reply_to": request["id"]}))
        [event] = events
        self.assertEqual(formatEvent(event), "Bad welcome reply from peer 10.0.0.2:4321:"
                                             " Expected `str`, got `int` - at `$.uuid`")
        self.assertEqual(event["address"], "10.0.0.2:4321")
        failure = self.failureResultOf(d, BadReply)
        self.assertEqual((failure.value.request_type, failure.value.reply_type), ("hello", "welcome"))
        self.assertIn("$.uuid", failure.value.problem)
        self.assertEqual(self.transport.value(), b"", "a bad reply is not answered")

    def test_idsCountFromOne(self) -> None:
        """Request ids on a connection are 1, 2, 3, ..."""
        for _ in range(3):
            self.protocol.request("echo", None)
        self.assertEqual([r["id"] for r in sent(self.transport)], [1, 2, 3])

    def test_pendingEntry(self) -> None:
        """What waits for a reply is its Deferred, type, deadline and timeout."""
        self.clock.advance(2)
        d = self.protocol.request("echo", None, timeout=8)
        self.assertEqual(self.protocol.pending_requests, {1: (d, "echo", 10.0, 8)})

    def test_oversizeRequest(self) -> None:
        """A request too large for a frame fails at once with FrameTooLarge, pending nothing."""
        d = self.protocol.request("store", "x" * 5000)
        self.failureResultOf(d, FrameTooLarge)
        self.assertEqual(self.protocol.pending_requests, {})
        self.assertEqual(self.protocol.requests.deadlines, [])



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

    def test_freshExceptionEach(self) -> None:
        """Each waiter gets its own DisconnectionException, all saying the same."""
        requests = [self.protocol.request("echo", n) for n in range(2)]
        self.lose()
        first, second = (self.failureResultOf(d, DisconnectionException).value for d in requests)
        self.assertIsNot(first, second)
        self.assertIsNot(first, self.protocol.lost)
        self.assertEqual(str(first), str(second))
        self.assertEqual((first.peer, first.cause), ("peer 10.0.0.2:4321", "connection closed by peer"))

    def test_statsFolded(self) -> None:
        """The connection's counts join the factory's totals when it is lost."""
        self.feed(frame({"type": "ping"}) + raw_frame(b"junk"))
        self.assertEqual(self.factory.stats.connections, 1)
        self.lose()
        self.assertEqual(
            self.factory.stats.totals([]),
            {"frames_in": 2, "frames_out": 2, "bad_messages": 1,
             "connections": 1, "disconnections": 1, "reconnections": 0},
        )

    def test_handlerToldLast(self) -> None:
        """The handler hears of the loss after every request and waiter has."""
        seen: list[str] = []
        self.protocol.request("echo", 1).addErrback(lambda _: seen.append("request"))
        self.protocol.when_lost().addCallback(lambda _: seen.append("waiter"))
        self.handler.connection_lost = lambda failure: seen.append("handler")  # type: ignore[method-assign]
        self.lose()
        self.assertEqual(seen, ["request", "waiter", "handler"])

    def test_closeFirstCauseWins(self) -> None:
        """Closing twice keeps the first cause."""
        self.protocol.close("first")
        self.protocol.close("second")
        self.lose()
        self.assertEqual(self.protocol.lost.cause, "first")

    def test_closeCleanly(self) -> None:
        """close() loses the connection cleanly, and says it is closing."""
        self.assertFalse(self.protocol.closing)
        self.protocol.close("bye")
        self.assertTrue(self.protocol.closing)
        self.assertTrue(self.transport.disconnecting)
        self.assertFalse(self.transport.disconnected)

    def test_closeAbort(self) -> None:
        """close(abort=True) aborts the connection."""
        self.protocol.close("bye", abort=True)
        self.assertTrue(self.transport.disconnected)

    def test_closingOnceLost(self) -> None:
        """A connection lost without our closing it counts as closing too."""
        self.lose()
        self.assertTrue(self.protocol.closing)

    def test_peerNamedByHandler(self) -> None:
        """The loss names the peer as the connection's handler does."""
        self.handler.describe_peer = lambda: "slave pi-one"  # type: ignore[method-assign]
        self.lose()
        self.assertEqual(str(self.protocol.lost), "Lost connection to slave pi-one: connection closed by peer")



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

    def test_pingSparedAfterPeerSpoke(self) -> None:
        """A peer heard from within the interval is not pinged: it lives, and knows we do."""
        self.protocol.start_keepalive(5)
        self.clock.advance(3)
        self.feed(frame({"type": "ping", "payload": 1.0}))
        self.transport.clear()
        self.clock.advance(2)  # heard 2 s ago
        self.assertEqual(sent(self.transport), [])
        self.clock.advance(5)  # heard 7 s ago
        self.assertEqual(sent(self.transport), [{"type": "ping", "payload": 10.0}])

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
        """A large frame trickling in within its deadline keeps its sender alive."""
        data = frame({"type": "store", "payload": "x" * 100})
        pieces = range(0, len(data), 10)
        for i in pieces:
            self.clock.advance(DEFAULT_FRAME_DEADLINE / (len(pieces) + 1))
            self.feed(data[i : i + 10])
        self.assertFalse(self.transport.disconnecting)
        self.assertEqual(self.handler.received, ["x" * 100])

    def test_oneTimerPerConnection(self) -> None:
        """Frames do not pile up timers: the liveness check is one delayed call."""
        for _ in range(100):
            self.feed(frame({"type": "store", "payload": 1}))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_quietAfterSpeaking(self) -> None:
        """A peer that spoke and then went quiet is dropped dead_after seconds after its last bytes."""
        self.clock.advance(10)
        self.feed(frame({"type": "store", "payload": 1}))
        self.clock.advance(5)  # the first check, at 15 s: heard from 5 s ago
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(9.9)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(self.transport.disconnecting)
        self.lose()
        self.assertEqual(self.protocol.lost.cause, "no sign of life for 15 s")

    def test_deadPeerAborted(self) -> None:
        """A dead peer's connection is aborted, not flushed, and the drop is logged."""
        with capturedLogs() as events:
            self.clock.advance(15)
        self.assertTrue(self.transport.disconnected)
        [event] = events
        self.assertEqual(formatEvent(event), "Closing connection to peer 10.0.0.2:4321: nothing received for 15.0 s")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_emptyReadIsNoLife(self) -> None:
        """Only bytes are a sign of life: an empty read (as resuming makes) is not."""
        self.clock.advance(10)
        self.protocol.dataReceived(b"")
        self.clock.advance(5)
        self.assertTrue(self.transport.disconnecting)

    def test_lastReceived(self) -> None:
        """last_received is when the connection was made, then when bytes last came."""
        self.assertEqual(self.protocol.last_received, 0)
        self.clock.advance(100)
        protocol, transport = connect(self.factory)
        self.assertEqual(protocol.last_received, 100)
        self.clock.advance(3)
        protocol.dataReceived(b"\0")
        self.assertEqual(protocol.last_received, 103)

    def test_deadAfterFromFactory(self) -> None:
        """The dead-peer delay is the factory's dead_after, counted from the connection."""
        self.clock.advance(50)
        factory = RecordingFactory(keepalive=5, dead_after=4, clock=self.clock)
        protocol, transport = connect(factory)
        self.clock.advance(3.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnecting)

    def test_noPingsOnceClosing(self) -> None:
        """Keepalive pings stop once we are closing."""
        self.protocol.start_keepalive(5)
        self.protocol.close("bye")
        self.clock.advance(5)
        self.assertEqual(self.transport.value(), b"")

    def test_restartKeepalive(self) -> None:
        """Starting the keepalive again replaces the old loop rather than adding one."""
        self.protocol.start_keepalive(5)
        self.protocol.start_keepalive(2)
        self.clock.pump([1] * 5)
        self.assertEqual([e["payload"] for e in sent(self.transport)], [2.0, 4.0])

    def test_stopKeepalive(self) -> None:
        """stop_keepalive stops the pings; stopping again is harmless."""
        self.protocol.start_keepalive(5)
        self.protocol.stop_keepalive()
        self.protocol.stop_keepalive()
        self.clock.advance(20)
        self.assertEqual(self.transport.value(), b"")

    def test_keepaliveFailureLogged(self) -> None:
        """A ping that cannot be sent stops the keepalive, logged."""
        self.protocol.start_keepalive(5)

        def broken(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError("cannot send")

        self.protocol.send = broken  # type: ignore[method-assign]
        with capturedLogs() as events:
            self.clock.advance(5)
        self.assertEqual([formatEvent(e) for e in events], ["Keepalive stopped"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.clock.advance(5)
        self.assertEqual(self.flushLoggedErrors(RuntimeError), [])

    def test_pongBounds(self) -> None:
        """Round trips from 0 to dead_after are recorded; others, and non-numbers, are not."""
        for _ in range(10):  # alive all along
            self.clock.advance(10)
            self.feed(frame({"type": "pong", "payload": "not a time"}))
        self.assertIsNone(self.protocol.rtt_ms)
        self.feed(frame({"type": "pong", "payload": 85}))  # 15 s: dead_after, just
        self.assertEqual(self.protocol.rtt_ms, 15000.0)
        self.feed(frame({"type": "pong", "payload": 84.5}))  # longer than dead_after
        self.assertEqual(self.protocol.rtt_ms, 15000.0)
        self.feed(frame({"type": "pong", "payload": 100}))
        self.assertEqual(self.protocol.rtt_ms, 0.0)
        self.feed(frame({"type": "pong", "payload": 100.5}))  # from the future
        self.assertEqual(self.protocol.rtt_ms, 0.0)
        self.feed(frame({"type": "pong", "payload": 99.5}))
        self.assertEqual(self.protocol.rtt_ms, 500.0)
        self.feed(frame({"type": "pong", "payload": True}) + frame({"type": "pong", "payload": [99]}))
        self.assertEqual(self.protocol.rtt_ms, 500.0)
        self.feed(frame({"type": "pong", "payload": 99}))
        self.assertEqual(self.protocol.rtt_ms, 1000.0)



@implementer(ITCPTransport)
class TCPStringTransport(StringTransport):
    """A StringTransport that says it is TCP, remembering the socket options set."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.options: dict[str, bool] = {}

    def setTcpKeepAlive(self, enabled: bool) -> None:
        self.options["keepalive"] = enabled

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.options["nodelay"] = enabled


class ConnectionMadeTests(ProtocolTestCase):
    """
    connectionMade sets the connection up: back-pressure, socket options, names.
    """

    def test_registersStreamingProducer(self) -> None:
        """The protocol registers itself as its transport's streaming (push) producer."""
        self.assertIs(self.transport.producer, self.protocol)
        self.assertTrue(self.transport.streaming)

    def test_pauseStopsDelivery(self) -> None:
        """While paused, frames wait unhandled and unanswered; resuming delivers them in order."""
        self.protocol.pauseProducing()
        self.assertEqual(self.transport.producerState, "paused")
        self.feed(frame({"type": "store", "payload": 1}) + frame({"type": "ping", "payload": 2}))
        self.assertEqual(self.handler.received, [])
        self.assertEqual(self.transport.value(), b"")
        self.protocol.resumeProducing()
        self.assertEqual(self.transport.producerState, "producing")
        self.assertEqual(self.handler.received, [1])
        self.assertEqual(sent(self.transport), [{"type": "pong", "payload": 2}])

    def test_pausedTransportPausesProtocol(self) -> None:
        """A transport pausing its producer pauses frame delivery, as back-pressure wants."""
        self.transport.producer.pauseProducing()
        self.feed(frame({"type": "store", "payload": 1}))
        self.assertEqual(self.handler.received, [])
        self.transport.producer.resumeProducing()
        self.assertEqual(self.handler.received, [1])

    def test_tcpOptions(self) -> None:
        """On TCP, Nagle's algorithm is turned off and TCP keepalive on."""
        protocol = self.factory.buildProtocol(None)
        transport = TCPStringTransport(peerAddress=IPv4Address("TCP", "10.0.0.3", 1))
        protocol.makeConnection(transport)
        self.assertEqual(transport.options, {"keepalive": True, "nodelay": True})

    def test_peerAddress(self) -> None:
        """The peer is named by its address, IPv6 ones in brackets."""
        self.assertEqual(self.protocol.peer_address, "10.0.0.2:4321")
        protocol = self.factory.buildProtocol(None)
        protocol.makeConnection(StringTransport(peerAddress=IPv6Address("TCP", "::1", 80)))
        self.assertEqual(protocol.peer_address, "[::1]:80")
        self.assertEqual(protocol.handler.describe_peer(), "peer [::1]:80")

    def test_handlerMade(self) -> None:
        """The factory's handler is made for the connection, and told it is up."""
        made: list[PiClusterProtocol] = []

        class Handler(RecordingHandler):
            def connection_made(self) -> None:
                made.append(self.protocol)

        self.factory.make_handler = Handler  # type: ignore[method-assign, assignment]
        protocol, transport = connect(self.factory)
        self.assertIsInstance(protocol.handler, Handler)
        self.assertEqual(made, [protocol])

    def test_opened(self) -> None:
        """Each connection made is counted by its factory."""
        self.assertEqual(self.factory.stats.connections, 1)
        connect(self.factory)
        self.assertEqual(self.factory.stats.connections, 2)


class BrokenHandlerFactory(RecordingFactory):
    def make_handler(self, protocol: Any) -> RecordingHandler:
        raise ZeroDivisionError("no handler")


class PeerlessTransport(StringTransport):
    def getPeer(self) -> Any:
        raise OSError("not connected")


class ConnectionMadeFailureTests(unittest.TestCase):
    """
    A connection whose connectionMade failed can still be lost cleanly.
    """

    def setUp(self) -> None:
        self.clock = Clock()

    def test_handlerNotMade(self) -> None:
        """If making the handler fails, connectionLost still runs whole, naming the peer."""
        factory = BrokenHandlerFactory(keepalive=5, clock=self.clock)
        protocol = factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.2", 4321))
        self.assertRaises(ZeroDivisionError, protocol.makeConnection, transport)
        waiter = protocol.when_lost()
        protocol.connectionLost(Failure(ConnectionLost()))
        lost = self.successResultOf(waiter)
        self.assertEqual(str(lost), "Lost connection to peer 10.0.0.2:4321: connection lost")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual((factory.stats.connections, factory.stats.disconnections), (1, 1))
        self.assertRaises(DisconnectionException, protocol.send, "store", 1)

    def test_peerUnknown(self) -> None:
        """If even the peer's address cannot be had, the loss names an unknown peer."""
        factory = RecordingFactory(keepalive=5, clock=self.clock)
        protocol = factory.buildProtocol(None)
        self.assertRaises(OSError, protocol.makeConnection, PeerlessTransport())
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(str(protocol.lost), "Lost connection to peer unknown: connection closed by peer")
        self.assertEqual(factory.stats.disconnections, 1)


class FormatAddressTests(unittest.TestCase):
    """
    format_address names an address for humans.
    """

    def test_ipv4(self) -> None:
        """An IPv4 address is host:port."""
        self.assertEqual(format_address(IPv4Address("TCP", "192.168.1.5", 12345)), "192.168.1.5:12345")

    def test_ipv6(self) -> None:
        """An IPv6 address is [host]:port."""
        self.assertEqual(format_address(IPv6Address("TCP", "fe80::1", 443)), "[fe80::1]:443")

    def test_other(self) -> None:
        """An address without a host and a port is named as it names itself."""
        address = UNIXAddress(b"/run/picluster.sock")
        self.assertEqual(format_address(address), str(address))
        self.assertEqual(format_address("somewhere"), "somewhere")

        class HostOnly:
            host = "10.0.0.1"

            def __str__(self) -> str:
                return "host only"

        class PortOnly:
            port = 5

            def __str__(self) -> str:
                return "port only"

        self.assertEqual(format_address(HostOnly()), "host only")
        self.assertEqual(format_address(PortOnly()), "port only")


class FactoryTests(unittest.TestCase):
    """
    PiClusterFactory holds the settings every connection shares.
    """

    def test_defaults(self) -> None:
        """By default: 5 s keepalive, dead after three missed, 1 MiB frames, 30 s requests, the reactor."""
        from twisted.internet import reactor

        factory = PiClusterFactory()
        self.assertEqual(
            (factory.keepalive, factory.dead_after, factory.max_frame, factory.request_timeout),
            (5.0, 15.0, wire.DEFAULT_MAX_FRAME, 30.0),
        )
        self.assertEqual(DEFAULT_REQUEST_TIMEOUT, 30.0)
        self.assertIs(factory.clock, reactor)
        self.assertIsInstance(factory.stats, WireStats)
        self.assertFalse(factory.noisy)
        self.assertIs(factory.protocol, PiClusterProtocol)

    def test_deadAfter(self) -> None:
        """dead_after is three keepalives unless given, 0 included."""
        self.assertEqual(PiClusterFactory(keepalive=2).dead_after, 6)
        self.assertEqual(PiClusterFactory(keepalive=2, dead_after=7).dead_after, 7)
        self.assertEqual(PiClusterFactory(keepalive=2, dead_after=0).dead_after, 0)

    def test_settingsKept(self) -> None:
        """Given settings are kept as given; each factory has its own stats."""
        clock = Clock()
        factory = PiClusterFactory(max_frame=100, request_timeout=3, clock=clock)
        self.assertEqual((factory.max_frame, factory.request_timeout), (100, 3))
        self.assertIs(factory.clock, clock)
        self.assertEqual(PiClusterFactory(max_frame=2**32 - 1).max_frame, 2**32 - 1)
        self.assertIsNot(PiClusterFactory().stats, factory.stats)

    def test_defaultHandler(self) -> None:
        """The base factory gives a connection a plain PeerHandler, which answers pings."""
        clock = Clock()
        protocol, transport = connect(PiClusterFactory(clock=clock))
        self.assertIs(type(protocol.handler), PeerHandler)
        self.assertIs(protocol.handler.protocol, protocol)
        protocol.dataReceived(frame({"type": "ping", "payload": 1, "id": 2}))
        self.assertEqual(sent(transport), [{"type": "pong", "payload": 1, "reply_to": 2}])


class PeerHandlerTests(ProtocolTestCase):
    """
    The messages every handler serves, and how it names its peer.
    """

    def test_logFields(self) -> None:
        """Every log event about the connection names the peer and its address."""
        self.assertEqual(self.handler.log_fields(), {"peer": "peer 10.0.0.2:4321", "address": "10.0.0.2:4321"})

    def test_messageLogged(self) -> None:
        """A free-text message is logged with the peer's name."""
        with capturedLogs() as events:
            self.feed(frame({"type": "message", "payload": "hello"}))
        self.assertEqual([formatEvent(e) for e in events], ["Message from peer 10.0.0.2:4321: hello"])

    def test_refusalsLogged(self) -> None:
        """The peer's bad_message and error are logged as warnings, saying what they were."""
        with capturedLogs() as events:
            self.feed(frame({"type": "bad_message", "payload": {"error": "what?"}}))
            self.feed(frame({"type": "error", "payload": {"error": "oops"}}))
        self.assertEqual(
            [formatEvent(e) for e in events],
            ["peer 10.0.0.2:4321 could not accept a message of ours: what?",
             "peer 10.0.0.2:4321 reported an error: oops"],
        )
        self.assertEqual([e["log_level"].name for e in events], ["warn", "warn"])
        self.assertEqual(self.transport.value(), b"")

    def test_pongHandled(self) -> None:
        """A pong that is not a reply is handled by recording the round trip, unanswered."""
        self.clock.advance(2)
        self.feed(frame({"type": "pong", "payload": 1.5, "id": None}))
        self.assertAlmostEqual(self.protocol.rtt_ms, 500.0)
        self.assertEqual(self.transport.value(), b"")

    def test_baseHooks(self) -> None:
        """The base handler's connection hooks do nothing and return nothing."""
        handler = PeerHandler(self.protocol)
        self.assertIsNone(handler.connection_made())
        self.assertIsNone(handler.connection_lost(Failure(ConnectionDone())))

    def test_messageNotText(self) -> None:
        """A message whose payload is not text is refused, saying so."""
        self.feed(frame({"type": "message", "payload": ["hello"], "id": 5}))
        self.assertEqual(
            sent(self.transport),
            [{"type": "bad_message", "payload": {"error": "bad message payload: Expected `str`, got `array`"},
              "reply_to": 5}],
        )

    def test_badFieldNamed(self) -> None:
        """A declared payload with a bad field is refused naming the field; the handler never runs."""
        self.handler.msg_worker = lambda payload: self.fail("handled")  # type: ignore[attr-defined]
        self.feed(frame({"type": "worker", "payload": {"slots": 0, "tasks": []}, "id": 6}))
        [reply] = sent(self.transport)
        self.assertEqual(reply["payload"]["field"], "slots")
        self.assertTrue(reply["payload"]["error"].startswith("bad worker payload at slots: "))

    def test_payloadNumberOutOfRange(self) -> None:
        """1e400 inside a payload is refused as invalid JSON, naming where it was."""
        self.feed(raw_frame(b'{"type": "ping", "payload": 1e400, "id": 2}'))
        [reply] = sent(self.transport)
        self.assertEqual((reply["payload"]["error"], reply["reply_to"]), ("frame is not valid JSON", 2))
        self.assertEqual(reply["payload"]["detail"], "Number out of range")

    def test_declaredRefusalFacts(self) -> None:
        """A refusal carries what the type's declaration adds: a hello's closes, naming the versions."""
        self.handler.msg_hello = lambda payload: self.fail("handled")  # type: ignore[attr-defined]
        self.feed(frame({"type": "hello", "payload": {"uuid": 5}, "id": 1}))
        [reply] = sent(self.transport)
        self.assertEqual(reply["payload"], {
            "error": "bad hello payload at uuid: Expected `str | null`, got `int`",
            "field": "uuid", "supported": [1, 2],
        })
        self.assertTrue(self.transport.disconnecting)

    def test_indexedRefusal(self) -> None:
        """A bad spec of a submit is named by its index and the field's path."""
        self.handler.msg_submit = lambda payload: self.fail("handled")  # type: ignore[attr-defined]
        self.feed(frame({"type": "submit", "payload": {"tasks": [{"name": "a"}, {"name": 3}]}, "id": 2}))
        [reply] = sent(self.transport)
        self.assertEqual((reply["payload"]["index"], reply["payload"]["field"]), (1, "tasks[1].name"))
        self.assertFalse(self.transport.disconnecting)




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
        self.assertEqual(reply.type, "pong")
        [server] = accepted
        for end in (client, server):
            self.assertTrue(end.transport.getTcpNoDelay())
            self.assertTrue(end.transport.getTcpKeepAlive())
        lost = client.when_lost()
        client.transport.loseConnection()
        yield lost
        yield server.when_lost()
