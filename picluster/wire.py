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
    """
    return _encoder.encode(envelope).encode("ascii")


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
        obj = _decoder.decode(text)
    except ValueError as e:
        raise BadMessage("frame is not valid JSON", detail=str(e)) from None
    except RecursionError:
        raise BadMessage("frame is not valid JSON", detail="nested too deeply") from None
    if not isinstance(obj, dict):
        raise BadMessage("frame is not a JSON object", got=type(obj).__name__)
    msg_id = _optional_int(obj, "id")
    if not isinstance(obj.get("type"), str):
        raise BadMessage('envelope has no string "type"', reply_to=msg_id)
    try:
        _optional_int(obj, "reply_to")
    except BadMessage as e:
        e.reply_to = msg_id
        raise
    return obj
