"""
Tests for L{picluster.wire.envelope}: turning frame bytes into envelopes
and back.
"""

from __future__ import annotations

import json

import msgspec
from twisted.trial import unittest

from picluster.wire import envelope as wire
from picluster.wire import messages


def payload_of(frame: bytes) -> object:
    """The payload of the envelope in C{frame}, as plain JSON values."""
    return wire.decode_payload(wire.decode(frame).payload)


class DecodeTests(unittest.TestCase):
    """
    L{wire.decode} accepts envelopes and says exactly what is wrong otherwise.
    """

    def assertBad(self, frame: bytes, error: str, reply_to: int | None = None) -> wire.BadMessage:
        bad = self.assertRaises(wire.BadMessage, wire.decode, frame)
        self.assertEqual(bad.error, error)
        self.assertEqual(bad.reply_to, reply_to)
        return bad

    def test_envelope(self) -> None:
        """A well-formed envelope comes back with its type, ids, and its payload still undecoded."""
        envelope = wire.decode(json.dumps({"type": "ping", "payload": [1.5], "id": 7}).encode())
        self.assertEqual((envelope.type, envelope.id, envelope.reply_to), ("ping", 7, None))
        self.assertIsInstance(envelope.payload, msgspec.Raw)
        self.assertEqual(bytes(envelope.payload), b"[1.5]")
        self.assertEqual(wire.decode_payload(envelope.payload), [1.5])

    def test_missingPayload(self) -> None:
        """An envelope without payload is accepted; its payload reads as null."""
        self.assertIsNone(payload_of(b'{"type": "ping"}'))

    def test_unknownKeysIgnored(self) -> None:
        """Keys an envelope does not have are ignored, so peers can grow it."""
        self.assertEqual(wire.decode(b'{"type": "x", "trace": [1]}').type, "x")

    def test_nullId(self) -> None:
        """A null id counts as no id."""
        self.assertIsNone(wire.decode(b'{"type": "x", "id": null}').id)

    def test_notUTF8(self) -> None:
        """Bytes that are not UTF-8 are refused, with the offending position."""
        bad = self.assertBad(b'{"type": "\xff"}', "frame is not valid UTF-8")
        self.assertEqual(bad.payload()["position"], 10)

    def test_notJSON(self) -> None:
        """Text that is not JSON is refused."""
        self.assertBad(b"{type: ping}", "frame is not valid JSON")

    def test_trailingGarbage(self) -> None:
        """Two JSON values in one frame are not one envelope."""
        self.assertBad(b'{"type": "ping"}{"type": "ping"}', "frame is not valid JSON")

    def test_surroundingWhitespace(self) -> None:
        """Whitespace around the object is JSON, and accepted as before."""
        self.assertEqual(wire.decode(b' \n{"type": "ping"}').type, "ping")
        self.assertEqual(wire.decode(b'{"type": "ping"} \r\n').type, "ping")

    def test_empty(self) -> None:
        """An empty frame, or one of whitespace only, holds no envelope."""
        self.assertBad(b"", "frame is not valid JSON")
        self.assertBad(b"  ", "frame is not valid JSON")

    def test_nan(self) -> None:
        """NaN is not JSON, whatever Python's json module would allow."""
        self.assertBad(b'{"type": "ping", "payload": NaN}', "frame is not valid JSON")

    def test_hugeNumber(self) -> None:
        """
        A number too large for a float is refused rather than read as
        infinity: in the envelope at once, in the payload when it is decoded
        (the protocol answers both as invalid JSON).
        """
        bad = self.assertBad(b'{"type": "vitals", "id": 1e400}', "frame is not valid JSON")
        self.assertIn("out of range", bad.payload()["detail"])
        e = self.assertRaises(msgspec.ValidationError, payload_of, b'{"type": "vitals", "payload": {"t": 1e400}}')
        self.assertIn("Number out of range", str(e))

    def test_hugeInteger(self) -> None:
        """A huge integer is exact in JSON and in Python, so it is accepted."""
        self.assertEqual(payload_of(b'{"type": "x", "payload": 1' + b"0" * 400 + b"}"), 10**400)

    def test_deeplyNested(self) -> None:
        """A frame nested deeper than the parser goes is refused, not a crash."""
        self.assertBad(b"[" * 100000 + b"]" * 100000, "frame is not valid JSON")

    def test_notObject(self) -> None:
        """A JSON array is not an envelope; the reply says what it got."""
        bad = self.assertBad(b"[1, 2]", "frame is not a JSON object")
        self.assertEqual(bad.payload(), {"error": "frame is not a JSON object", "got": "list"})

    def test_noType(self) -> None:
        """An object without a string type is refused, answering its id."""
        self.assertBad(b'{"payload": 1, "id": 3}', 'envelope has no string "type"', reply_to=3)
        self.assertBad(b'{"type": 5, "id": 4}', 'envelope has no string "type"', reply_to=4)

    def test_badId(self) -> None:
        """An id that is not an integer is refused; booleans are not integers."""
        self.assertBad(b'{"type": "x", "id": "1"}', '"id" must be an integer')
        self.assertBad(b'{"type": "x", "id": true}', '"id" must be an integer')
        self.assertBad(b'{"type": "x", "id": 1.5}', '"id" must be an integer')

    def test_badReplyTo(self) -> None:
        """A reply_to that is not an integer is refused, answering the id."""
        self.assertBad(b'{"type": "x", "id": 2, "reply_to": "a"}', '"reply_to" must be an integer', 2)

    def test_leadingGarbage(self) -> None:
        """Anything before the object makes the frame invalid, even if an object follows."""
        self.assertBad(b'x{"type": "ping"}', "frame is not valid JSON")
        self.assertBad(b'}{"type": "ping"}', "frame is not valid JSON")

    def test_oneCharacterFrames(self) -> None:
        """A frame of one character that is no value is refused as JSON, not a crash."""
        for data in (b"}", b"x", b"]", b","):
            self.assertBad(data, "frame is not valid JSON")
        bad = self.assertBad(b"7", "frame is not a JSON object")
        self.assertEqual(bad.payload()["got"], "int")

    def test_invalidJSONDetail(self) -> None:
        """The refusal of invalid JSON carries the parser's words on what is wrong."""
        bad = self.assertBad(b'{"type": "ping"}{', "frame is not valid JSON")
        self.assertEqual(bad.payload(), {"error": "frame is not valid JSON",
                                         "detail": "Extra data: line 1 column 17 (char 16)"})

    def test_constantDetail(self) -> None:
        """A NaN or Infinity in a frame is named in the refusal."""
        bad = self.assertBad(b'{"type": "a", "payload": [-Infinity]}', "frame is not valid JSON")
        self.assertEqual(bad.payload()["detail"], "-Infinity is not valid JSON")

    def test_hugeNumberDetail(self) -> None:
        """The refusal of an out-of-range number in an envelope names the number."""
        bad = self.assertBad(b'{"type": "a", "reply_to": -2E999}', "frame is not valid JSON")
        self.assertEqual(bad.payload()["detail"], "number -2E999 is out of range")

    def test_lastResortDetail(self) -> None:
        """What msgspec refuses and the stdlib reads (a lone surrogate) is refused with msgspec's words."""
        frame = b'{"type": "a", "id": 3, "reply_to": 5, "payload": "\\ud800"}'
        try:
            msgspec.json.decode(frame)
        except msgspec.DecodeError as e:
            words = str(e)
        bad = self.assertBad(frame, "frame is not valid JSON", 3)
        self.assertEqual(bad.payload(), {"error": "frame is not valid JSON", "detail": words})

    def test_deepAfterBadId(self) -> None:
        """A bad id before a payload nested too deeply for the stdlib is refused, not a crash."""
        bad = self.assertBad(b'{"type": "a", "id": "x", "payload": ' + b"[" * 100000 + b"]" * 100000 + b"}",
                             "frame is not valid JSON")
        self.assertEqual(bad.payload()["detail"], "nested too deeply")

    def test_floatsKept(self) -> None:
        """Finite floats are read exactly, the extremes included."""
        self.assertEqual(payload_of(b'{"type": "a", "payload": [0.1, -2.5e-7, 1.7976931348623157e308, 0.0]}'),
                         [0.1, -2.5e-7, 1.7976931348623157e308, 0.0])

    def test_deeplyNestedDetail(self) -> None:
        """The refusal of a frame nested too deeply says so."""
        bad = self.assertBad(b'{"type": "a", "payload": ' + b"[" * 100000 + b"]" * 100000 + b"}",
                             "frame is not valid JSON")
        self.assertEqual(bad.payload()["detail"], "nested too deeply")

    def test_notUTF8Position(self) -> None:
        """The position of the first byte that is not UTF-8 is given, whatever comes before."""
        bad = self.assertBad(b"\x80", "frame is not valid UTF-8")
        self.assertEqual(bad.payload(), {"error": "frame is not valid UTF-8", "position": 0})

    def test_notObjectKinds(self) -> None:
        """Each JSON value that is not an object is refused, naming its Python type."""
        for data, got in ((b'"ping"', "str"), (b"null", "NoneType"), (b"true", "bool"), (b"1.5", "float")):
            bad = self.assertBad(data, "frame is not a JSON object")
            self.assertEqual(bad.payload()["got"], got)

    def test_noTypeDetails(self) -> None:
        """A refusal for a missing type carries no details, and answers no id when there is none."""
        bad = self.assertBad(b'{"type": null}', 'envelope has no string "type"')
        self.assertEqual(bad.payload(), {"error": 'envelope has no string "type"'})
        self.assertFalse(bad.close)

    def test_badIdSaysWhatItGot(self) -> None:
        """A refused id names the value it got when that is a scalar, and null otherwise."""
        for data, got in ((b'"1"', "1"), (b"true", True), (b"1.5", 1.5), (b"[1]", None), (b'{"a": 1}', None)):
            bad = self.assertBad(b'{"type": "x", "id": ' + data + b"}", '"id" must be an integer')
            self.assertEqual(bad.payload(), {"error": '"id" must be an integer', "got": got})

    def test_badIdBeforeType(self) -> None:
        """A bad id is refused before a missing type is: the id is what the reply needs."""
        self.assertBad(b'{"id": "a"}', '"id" must be an integer')

    def test_badReplyToSaysWhatItGot(self) -> None:
        """A refused reply_to names the value it got, and answers no id when there is none."""
        for data, got in ((b'"7"', "7"), (b"false", False), (b"2.0", 2.0), (b"[7]", None)):
            bad = self.assertBad(b'{"type": "x", "reply_to": ' + data + b"}", '"reply_to" must be an integer')
            self.assertEqual(bad.payload(), {"error": '"reply_to" must be an integer', "got": got})

    def test_idsKept(self) -> None:
        """Integer ids and reply_tos of either sign, up to 64 bits, are kept as they came."""
        envelope = wire.decode(b'{"type": "x", "id": -5, "reply_to": 12345678901234567890}')
        self.assertEqual((envelope.id, envelope.reply_to), (-5, 12345678901234567890))
        envelope = wire.decode(b'{"type": "x", "id": 0, "reply_to": 0}')
        self.assertEqual((envelope.id, envelope.reply_to), (0, 0))

    def test_nullReplyTo(self) -> None:
        """A null reply_to counts as none."""
        envelope = wire.decode(b'{"type": "x", "reply_to": null, "id": 3}')
        self.assertEqual((envelope.type, envelope.reply_to, envelope.id), ("x", None, 3))


class MessageDecoderTests(unittest.TestCase):
    """
    L{wire.message_decoder} reads a frame of any declared type in one pass,
    and takes nothing that L{wire.decode} and the declarations would not.
    """

    def test_everyDeclaredType(self) -> None:
        """Each declared type decodes, its handler's method and size limit with it."""
        for name, message in messages.MESSAGES.items():
            try:
                msgspec.convert(None, message.payload)
            except msgspec.ValidationError:
                continue  # null is no payload of it: left to the careful way
            typed = wire.message_decoder.decode(wire.encode({"type": name, "id": 3}))
            self.assertEqual((typed.message_type, typed.method_name, typed.id, typed.payload),
                             (name, f"msg_{name}", 3, None))
            limit = message.max_bytes if message.max_bytes is not None else wire.LARGEST_FRAME
            self.assertEqual(typed.max_frame, limit)

    def test_typedPayload(self) -> None:
        """A payload arrives in its declared shape."""
        typed = wire.message_decoder.decode(b'{"type": "vitals", "payload": {"ram_free": 5}}')
        self.assertEqual(typed.payload, messages.Vitals(ram_free=5))

    def test_leftToDecode(self) -> None:
        """Undeclared types, bad payloads, missing payloads that must not be null: not taken."""
        for frame in [b'{"type": "nonsense"}', b'{"type": "vitals", "payload": {"ram_free": -1}}',
                      b'{"type": "vitals"}', b'{"type": "ping", "type": "pong"}', b'[1]',
                      b'{"type": "ping", "id": true}', b'{"type": "ping", "payload": "\xff"}']:
            self.assertRaises(msgspec.DecodeError, wire.message_decoder.decode, frame)

    def test_typedReplies(self) -> None:
        """A reply is taken typed only where its declared shape is its type's own."""
        self.assertIn(("ping", "pong"), wire.TYPED_REPLIES)
        self.assertIn((None, "pong"), wire.TYPED_REPLIES)
        self.assertNotIn(("cancel", "tasks"), wire.TYPED_REPLIES)
        self.assertNotIn(("info", "bad_message"), wire.TYPED_REPLIES)

    def test_outgoing(self) -> None:
        """An outgoing envelope is written as before: type, payload (null too), then id or reply_to."""
        self.assertEqual(wire.encode(wire.Outgoing("pong", None)), b'{"type":"pong","payload":null}')
        self.assertEqual(wire.encode(wire.Outgoing("ack", None, reply_to=0)),
                         b'{"type":"ack","payload":null,"reply_to":0}')
        self.assertEqual(wire.encode(wire.Outgoing("info", "uuid", id=4)),
                         b'{"type":"info","payload":"uuid","id":4}')


class EncodeTests(unittest.TestCase):
    """
    L{wire.encode} writes compact UTF-8 JSON that any peer can read.
    """

    def test_roundTrip(self) -> None:
        """What encode writes, decode reads back unchanged, non-ASCII included."""
        frame = wire.encode({"type": "message", "payload": "héllo \r\n ✓", "id": 1})
        envelope = wire.decode(frame)
        self.assertEqual((envelope.type, envelope.id), ("message", 1))
        self.assertEqual(wire.decode_payload(envelope.payload), "héllo \r\n ✓")

    def test_compact(self) -> None:
        """No spaces are spent between tokens."""
        self.assertEqual(wire.encode({"type": "a", "payload": [1, 2]}), b'{"type":"a","payload":[1,2]}')

    def test_utf8(self) -> None:
        """Text is written as UTF-8, control characters and quotes escaped."""
        self.assertEqual(wire.encode({"type": "é", "payload": "✓\x00\""}),
                         '{"type":"é","payload":"✓\\u0000\\""}'.encode())

    def test_readByJSON(self) -> None:
        """What encode writes is what json.loads reads, floats and big integers exactly."""
        envelope = {"type": "vitals", "payload": {"f": 0.1, "big": 10**30, "neg": -2.5e-7,
                                                  "s": "\u2713\x00\"", "l": [True, None],
                                                  "many": list(range(60000))}}
        self.assertEqual(json.loads(wire.encode(envelope)), envelope)

    def test_structs(self) -> None:
        """A declared payload is written with every field, nulls included."""
        from picluster.wire.messages import Run, Welcome

        self.assertEqual(wire.encode({"type": "cancel_task", "payload": Run(3, 2)}),
                         b'{"type":"cancel_task","payload":{"id":3,"attempt":2}}')
        self.assertEqual(json.loads(wire.encode(Welcome("a" * 32, 5.0, 15.0))),
                         {"uuid": "a" * 32, "keepalive": 5.0, "dead_after": 15.0})

    def test_circularRefused(self) -> None:
        """A value that holds itself raises, and leaves encode working."""
        loop: list[object] = []
        loop.append(loop)
        self.assertRaises(RecursionError, wire.encode, {"type": "a", "payload": loop})
        self.assertEqual(wire.encode({"type": "a", "payload": [[1]]}), b'{"type":"a","payload":[[1]]}')

    def test_nonFiniteWrittenAsNull(self) -> None:
        """
        A NaN or an infinity is written as null, a reading that could not be
        made: what a user gave (arguments, results) is checked with
        strict_json before it gets here.
        """
        self.assertEqual(wire.encode([float("nan"), float("-inf")]), b"[null,null]")

    def test_nonJSONValueRefused(self) -> None:
        """A value of no JSON type raises TypeError rather than being written somehow."""
        self.assertRaises(TypeError, wire.encode, {"type": "a", "payload": object()})

    def test_nonStringKeyRefused(self) -> None:
        """A key JSON cannot name (a tuple) raises TypeError: nothing is dropped."""
        self.assertRaises(TypeError, wire.encode, {"type": "a", "payload": {(1, 2): "x"}})

    def test_keysInInsertionOrder(self) -> None:
        """Keys are written in the order the dict holds them, not sorted."""
        self.assertEqual(
            wire.encode({"type": "a", "payload": {"b": 1, "a": 2}}),
            b'{"type":"a","payload":{"b":1,"a":2}}',
        )

    def test_noIndentation(self) -> None:
        """Nested containers are written on one line, without indentation."""
        self.assertEqual(
            wire.encode({"type": "a", "payload": {"l": [{"x": []}, {}]}}),
            b'{"type":"a","payload":{"l":[{"x":[]},{}]}}',
        )


class StrictJSONTests(unittest.TestCase):
    """
    L{wire.strict_json} checks what users and tasks give: JSON, or an error.
    """

    def test_compact(self) -> None:
        """Compact text, as json.dumps writes it."""
        value = {"f": 0.1, "s": "\u2713", "l": [True, None], 3: 4}
        self.assertEqual(wire.strict_json(value), json.dumps(value, separators=(",", ":")))

    def test_nonFiniteRefused(self) -> None:
        """NaN and the infinities raise ValueError, of either sign."""
        for value in (float("nan"), float("inf"), [float("-inf")]):
            self.assertRaises(ValueError, wire.strict_json, {"result": value})

    def test_nonJSONRefused(self) -> None:
        """Values and keys of no JSON type raise TypeError: skipkeys is off, nothing is dropped."""
        self.assertRaises(TypeError, wire.strict_json, {1, 2})
        self.assertRaises(TypeError, wire.strict_json, {(1, 2): "x"})
        self.assertRaises(TypeError, wire.strict_json, {"ok": 1, b"bytes": 2})

    def test_scalarKeysBecomeStrings(self) -> None:
        """Int, float, bool and None keys are written as strings, as json.dumps does."""
        self.assertEqual(wire.strict_json({1: "i", 2.5: "f", False: "b", None: "n"}),
                         '{"1":"i","2.5":"f","false":"b","null":"n"}')


class LoadsTests(unittest.TestCase):
    """
    L{wire.loads} reads JSON text as the wire reads frames.
    """

    def test_value(self) -> None:
        """Any JSON value is read, not only an object."""
        self.assertEqual(wire.loads('{"a": [1, 2.5, "x", null, true]}'), {"a": [1, 2.5, "x", None, True]})
        self.assertEqual(wire.loads(" 7 "), 7)

    def test_constantsRefused(self) -> None:
        """NaN and the infinities are refused, each named."""
        for constant in ("NaN", "Infinity", "-Infinity"):
            e = self.assertRaises(ValueError, wire.loads, f'{{"t": {constant}}}')
            self.assertEqual(str(e), f"{constant} is not valid JSON")

    def test_hugeNumberRefused(self) -> None:
        """A number that reads as an infinity is refused, saying which."""
        e = self.assertRaises(ValueError, wire.loads, "[-1e400]")
        self.assertEqual(str(e), "number -1e400 is out of range")

    def test_largeFiniteAccepted(self) -> None:
        """The largest and smallest floats are finite, and kept."""
        self.assertEqual(wire.loads("[1.7976931348623157e308, 5e-324, -0.0]"),
                         [1.7976931348623157e308, 5e-324, -0.0])

    def test_notJSON(self) -> None:
        """Text that is not JSON raises ValueError."""
        self.assertRaises(ValueError, wire.loads, "{")
        self.assertRaises(ValueError, wire.loads, "1 2")


class BadMessageTests(unittest.TestCase):
    """
    L{wire.BadMessage} carries what the bad_message reply says.
    """

    def test_defaults(self) -> None:
        """Without more, a BadMessage answers no id, keeps the connection, and says only its error."""
        bad = wire.BadMessage("nope")
        self.assertEqual((bad.error, bad.reply_to, bad.close, bad.details), ("nope", None, False, {}))
        self.assertEqual(str(bad), "nope")
        self.assertEqual(bad.payload(), {"error": "nope"})

    def test_details(self) -> None:
        """Details join the error in the payload; reply_to and close stay out of it."""
        bad = wire.BadMessage("too old", reply_to=4, close=True, supported=[1], got=0)
        self.assertEqual((bad.reply_to, bad.close), (4, True))
        self.assertEqual(bad.payload(), {"error": "too old", "supported": [1], "got": 0})


class ConstantsTests(unittest.TestCase):
    """
    The limits and version other modules build on.
    """

    def test_values(self) -> None:
        """1 MiB frames by default, no more than a 4-byte length says, protocol version 1."""
        self.assertEqual(wire.DEFAULT_MAX_FRAME, 1048576)
        self.assertEqual(wire.LARGEST_FRAME, 4294967295)
        self.assertEqual((messages.PROTOCOL_VERSION, messages.PLAIN_VERSION), (2, 1))
