"""
Tests for L{picluster.wire}: turning frame bytes into envelopes and back.
"""

from __future__ import annotations

import json

from twisted.trial import unittest

from picluster import wire


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
        """A well-formed envelope comes back as the object it holds."""
        envelope = {"type": "ping", "payload": 1.5, "id": 7}
        self.assertEqual(wire.decode(json.dumps(envelope).encode()), envelope)

    def test_missingPayload(self) -> None:
        """An envelope without payload is accepted; its payload reads as null."""
        self.assertIsNone(wire.decode(b'{"type": "ping"}').get("payload"))

    def test_nullId(self) -> None:
        """A null id counts as no id."""
        self.assertIsNone(wire.decode(b'{"type": "x", "id": null}').get("id"))

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
        self.assertEqual(wire.decode(b' \n{"type": "ping"}'), {"type": "ping"})
        self.assertEqual(wire.decode(b'{"type": "ping"} \r\n'), {"type": "ping"})

    def test_empty(self) -> None:
        """An empty frame, or one of whitespace only, holds no envelope."""
        self.assertBad(b"", "frame is not valid JSON")
        self.assertBad(b"  ", "frame is not valid JSON")

    def test_nan(self) -> None:
        """NaN is not JSON, whatever Python's json module would allow."""
        self.assertBad(b'{"type": "ping", "payload": NaN}', "frame is not valid JSON")

    def test_hugeNumber(self) -> None:
        """A number too large for a float is refused rather than read as infinity."""
        bad = self.assertBad(b'{"type": "vitals", "payload": {"t": 1e400}}', "frame is not valid JSON")
        self.assertIn("out of range", bad.payload()["detail"])

    def test_hugeInteger(self) -> None:
        """A huge integer is exact in JSON and in Python, so it is accepted."""
        self.assertEqual(wire.decode(b'{"type": "x", "payload": 1' + b"0" * 400 + b"}")["payload"], 10**400)

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


class EncodeTests(unittest.TestCase):
    """
    L{wire.encode} writes compact JSON that any peer can read.
    """

    def test_roundTrip(self) -> None:
        """What encode writes, decode reads back unchanged, non-ASCII included."""
        envelope = {"type": "message", "payload": "héllo \r\n ✓", "id": 1}
        self.assertEqual(wire.decode(wire.encode(envelope)), envelope)

    def test_compact(self) -> None:
        """No spaces are spent between tokens."""
        self.assertEqual(wire.encode({"type": "a", "payload": [1, 2]}), b'{"type":"a","payload":[1,2]}')

    def test_circularRefused(self) -> None:
        """A value that holds itself raises, and leaves encode working."""
        loop: list[object] = []
        loop.append(loop)
        self.assertRaises(RecursionError, wire.encode, {"type": "a", "payload": loop})
        self.assertEqual(wire.encode({"type": "a", "payload": [[1]]}), b'{"type":"a","payload":[[1]]}')

    def test_sameAsJSONEncoder(self) -> None:
        """The encoder built once writes what json.dumps would, byte for byte."""
        envelope = {"type": "vitals", "payload": {"f": 0.1, "big": 10**30, "neg": -2.5e-7,
                                                  "s": "\u2713\x00\"", "l": [True, None]}}
        self.assertEqual(
            wire.encode(envelope),
            json.dumps(envelope, separators=(",", ":"), allow_nan=False).encode("ascii"),
        )

    def test_nanRefused(self) -> None:
        """Encoding NaN raises rather than writing invalid JSON."""
        self.assertRaises(ValueError, wire.encode, {"type": "vitals", "payload": float("nan")})
