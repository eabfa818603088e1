"""
Envelopes: the JSON objects carried in picluster's frames.

A frame is a 4-byte big-endian length and that many bytes of UTF-8 JSON
holding one object, C{{"type": str, "payload": any}}, with an optional
integer C{"id"} (a request) or C{"reply_to"} (a reply).  The framing itself
is Twisted's L{Int32StringReceiver}; this module only turns frame bytes into
envelopes and back, and says precisely what is wrong with a bad one.
"""

from __future__ import annotations

import json
from typing import Any

#: The largest frame accepted unless configured otherwise (C{--max-frame}).
DEFAULT_MAX_FRAME = 1024 * 1024

#: The most a 4-byte length prefix can say.
LARGEST_FRAME = 2**32 - 1

#: The version of the hello handshake this code speaks.
PROTOCOL_VERSION = 1

_encoder = json.JSONEncoder(separators=(",", ":"), allow_nan=False)

# JSONEncoder.encode builds a new C encoder for every call, which costs a
# small frame as much again as its encoding does; this one is built once.
# It keeps no state between calls: without check_circular there is no dict
# of the containers being encoded to share, so it is safe from any thread,
# and a circular value runs into Python's recursion limit instead, as one
# nested too deeply does.
def _make_c_encoder() -> Any:
    """The C encoder JSONEncoder would build, or C{None} where there is none."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return None
    try:
        return make(None, _encoder.default, json.encoder.encode_basestring_ascii, None,
                    ":", ",", False, False, False)
    except TypeError:  # another Python's private signature
        return None


_c_encode = _make_c_encoder()


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    # 1e400 is valid JSON but reads as infinity, which no JSON can carry on:
    # stored, it would make every later reply that includes it unsendable.
    value = float(text)
    if value - value != 0:
        raise ValueError(f"number {text} is out of range")
    return value


_decoder = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)

# The scanner underneath _decoder.decode: called directly on a frame, it
# skips the two whitespace matches and two method calls of the full path,
# a tenth of the cost of a small frame.  It reads one value from the start;
# a frame it cannot take whole (leading or trailing whitespace, no value,
# extra values) goes through _decoder.decode, which says what is wrong.
_scan_once = _decoder.scan_once


class BadMessage(Exception):
    """
    A frame or payload that this side cannot accept.

    Raised while decoding or handling a message; the protocol answers it with
    a C{bad_message} reply whose payload is L{payload}.

    @ivar error: What was wrong, in a few words.
    @ivar details: More JSON-able facts for the payload (the offending type,
        the versions supported, ...).
    @ivar reply_to: The id of the offending request, when one could be read.
    @ivar close: Whether the connection must be closed after the reply.
    """

    def __init__(
        self, error: str, *, reply_to: int | None = None, close: bool = False, **details: Any
    ):
        super().__init__(error)
        self.error = error
        self.details = details
        self.reply_to = reply_to
        self.close = close

    def payload(self) -> dict[str, Any]:
        return {"error": self.error, **self.details}


def loads(text: str) -> Any:
    """
    Parse JSON text as the wire does: C{NaN}, C{Infinity} and numbers such
    as C{1e400} are refused (C{ValueError}), since no frame could carry them.
    """
    return _decoder.decode(text)


def encode(envelope: dict[str, Any]) -> bytes:
    """
    Serialise an envelope to frame bytes.

    @raise ValueError: for values JSON cannot carry (NaN, infinities).
    @raise TypeError: for values that are not JSON types at all.
    @raise RecursionError: for values nested too deeply, or circular.
    """
    if _c_encode is None:
        return _encoder.encode(envelope).encode("ascii")
    return "".join(_c_encode(envelope, 0)).encode("ascii")


def _optional_int(obj: dict[str, Any], key: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if type(value) is not int:
        raise BadMessage(f'"{key}" must be an integer', got=value if _is_scalar(value) else None)
    return value


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def decode(frame: bytes) -> dict[str, Any]:
    """
    Parse frame bytes into an envelope.

    The object is returned as it came, once checked: its C{type} is a string
    and its C{id} and C{reply_to} are ints or absent (null counts as absent),
    so handlers read C{envelope.get("payload")} without further checks.

    @raise BadMessage: saying what is wrong, with C{reply_to} set when the
        frame held a readable request id.
    """
    try:
        text = frame.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadMessage("frame is not valid UTF-8", position=e.start) from None
    try:
        try:
            obj, end = _scan_once(text, 0)
        except StopIteration:
            end = -1
        if end != len(text):
            obj = _decoder.decode(text)
    except ValueError as e:
        raise BadMessage("frame is not valid JSON", detail=str(e)) from None
    except RecursionError:
        raise BadMessage("frame is not valid JSON", detail="nested too deeply") from None
    if type(obj) is not dict:
        raise BadMessage("frame is not a JSON object", got=type(obj).__name__)
    # The checks below cost a frame that passes them three dict lookups.
    msg_id = obj.get("id")
    if msg_id is not None and type(msg_id) is not int:
        _optional_int(obj, "id")
    if type(obj.get("type")) is not str:
        raise BadMessage('envelope has no string "type"', reply_to=msg_id)
    reply_to = obj.get("reply_to")
    if reply_to is not None and type(reply_to) is not int:
        try:
            _optional_int(obj, "reply_to")
        except BadMessage as e:
            e.reply_to = msg_id
            raise
    return obj
