"""
Envelopes: the JSON objects carried in picluster's frames.

A frame is a 4-byte big-endian length and that many bytes of UTF-8 JSON
holding one object, C{{"type": str, "payload": any}}, with an optional
integer C{"id"} (a request) or C{"reply_to"} (a reply).  The framing itself
is Twisted's L{Int32StringReceiver}; this module turns frame bytes into
L{Envelope}s and back, and says precisely what is wrong with a bad one.

Two ways in.  L{message_decoder} reads a frame of a declared type in one
pass, envelope and payload together, into a L{TypedMessage}: what nearly
every frame is, and the protocol's fast path.  Whatever it does not take (an
undeclared type, a payload of the wrong shape, anything malformed) goes the
careful way: L{decode} reads the envelope with its payload left undecoded
(C{msgspec.Raw}) until the protocol knows which declared shape
(L{picluster.wire.messages}) it must have, and says what is wrong.
"""

from __future__ import annotations

import json
import re
from typing import Any, ClassVar, Union, cast

import msgspec

from picluster.wire import messages

#: The largest frame accepted unless configured otherwise (C{--max-frame}).
DEFAULT_MAX_FRAME = 1024 * 1024

#: The most a 4-byte length prefix can say.
LARGEST_FRAME = 2**32 - 1

#: The payload of an envelope that has none.
NULL = msgspec.Raw(b"null")


class Envelope(msgspec.Struct, gc=False):
    """One frame's object, its payload not yet decoded."""

    type: str
    payload: msgspec.Raw = NULL
    id: int | None = None
    reply_to: int | None = None


class Outgoing(msgspec.Struct, omit_defaults=True, gc=False):
    """
    An envelope to send, written as an L{Envelope} reads: C{type} and
    C{payload} (null or not), then C{id} or C{reply_to} where set.
    """

    type: str
    payload: Any
    id: int | None = None
    reply_to: int | None = None


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


class TypedMessage(msgspec.Struct, tag_field="type", gc=False):
    """
    A frame of one declared type, its payload decoded into its declared
    shape: one member of L{message_decoder}'s union, made for each type of
    L{messages.MESSAGES}.  A payload absent from the frame is null, as in an
    L{Envelope}; where null is not a valid payload, such a frame is left to
    L{decode}, which says so.
    """

    #: The message type (the tag in the frame).
    message_type: ClassVar[str]
    #: The handler's method for it, C{msg_<type>}.
    method_name: ClassVar[str]
    #: The largest frame that holds a payload within the type's own limit.
    max_frame: ClassVar[int]


def _typed_message(message: messages.Message) -> type[TypedMessage]:
    try:
        msgspec.convert(None, message.payload)
    except msgspec.ValidationError:
        payload: tuple[Any, ...] = ("payload", message.payload)
    else:
        payload = ("payload", message.payload, None)
    limit = message.max_bytes if message.max_bytes is not None else LARGEST_FRAME
    # A subclass of its base, which defstruct's own type does not say.
    return cast(type[TypedMessage], msgspec.defstruct(
        f"Typed_{message.type}", [payload, ("id", int | None, None), ("reply_to", int | None, None)],
        bases=(TypedMessage,), tag=message.type, module=__name__,
        namespace={"message_type": message.type, "method_name": f"msg_{message.type}",
                   "max_frame": limit},
    ))


_TYPED = {name: _typed_message(message) for name, message in messages.MESSAGES.items()}

#: Decodes a frame of any declared type, payload and all, in one pass, into
#: its L{TypedMessage}; it raises C{msgspec.DecodeError} (or
#: C{RecursionError}) for anything else, which L{decode} then reads and
#: judges.  Its caller still applies the type's own size limit: a frame
#: larger than the message's C{max_frame} may hold a payload over it.
message_decoder = msgspec.json.Decoder(Union[tuple(_TYPED.values())])  # noqa: UP007

#: (request type, reply type) pairs whose reply's declared shape is the reply
#: type's own, so its L{TypedMessage} payload is the reply's; C{None}: a
#: request no longer waited for, whose pong is checked all the same.
TYPED_REPLIES = frozenset(
    {(name, reply) for name, message in messages.MESSAGES.items()
     for reply, shape in message.replies.items()
     if reply in messages.MESSAGES and shape == messages.MESSAGES[reply].payload}
    | {(None, "pong")}
)


_envelope_decoder = msgspec.json.Decoder(Envelope)
_any_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    # 1e400 is valid JSON but reads as infinity, which no JSON can carry on:
    # stored, it would make every later reply that includes it unsendable.
    value = float(text)
    if value - value != 0:
        raise ValueError(f"number {text} is out of range")
    return value


# The slow path, for frames msgspec refuses: it says what is wrong in the
# words the protocol reference promises.
_strict_decoder = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)
_strict_encoder = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def loads(text: str) -> Any:
    """
    Parse JSON text as the wire does: C{NaN}, C{Infinity} and numbers such
    as C{1e400} are refused (C{ValueError}), since no frame could carry them.
    """
    return _strict_decoder.decode(text)


def strict_json(value: Any) -> str:
    """
    C{value} as compact JSON text, refusing what JSON cannot carry.

    For values a task or a user made (arguments, results): the frame encoder
    would write a NaN as C{null}, silently changing them.

    @raise ValueError: for NaN and infinities.
    @raise TypeError: for values that are not JSON types at all.
    @raise RecursionError: for values nested too deeply, or circular.
    """
    return _strict_encoder.encode(value)


def to_builtins(value: Any) -> Any:
    """
    For C{json.dumps(..., default=to_builtins)}: a declared message as
    plain values, and JSON kept undecoded (L{msgspec.Raw}, as the master
    keeps a task's arguments) decoded.  The frame encoder needs neither: it
    writes both as they are.
    """
    if isinstance(value, msgspec.Raw):
        return msgspec.json.decode(value)
    return msgspec.to_builtins(value)


def encode(envelope: Any) -> bytes:
    """
    Serialise an envelope (or any payload) to frame bytes.

    @raise TypeError: for values that are not JSON types at all.
    """
    return _encoder.encode(envelope)


def decode_payload(raw: msgspec.Raw, decoder: msgspec.json.Decoder[Any] | None = None) -> Any:
    """
    A payload as its declared shape (C{decoder}), or as plain JSON values.

    @raise msgspec.ValidationError: the payload does not have that shape.
    @raise msgspec.DecodeError: the payload is not JSON this side accepts.
    """
    return (decoder or _any_decoder).decode(raw)


def decode(frame: bytes) -> Envelope:
    """
    Parse frame bytes into an envelope.

    @raise BadMessage: saying what is wrong, with C{reply_to} set when the
        frame held a readable request id.
    """
    try:
        return _envelope_decoder.decode(frame)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise _explain(frame, str(e)) from None
    except RecursionError:
        raise BadMessage(messages.NOT_JSON, detail="nested too deeply") from None


_PATH = re.compile(r" - at `\$\.?(.*)`$")


def field_path(error: msgspec.ValidationError) -> tuple[str, str | None]:
    """msgspec's message without its location, and the location as a path."""
    text = str(error)
    found = _PATH.search(text)
    if found is None:
        return text, None
    return text[: found.start()], found.group(1) or None


def _is_scalar(value: Any) -> bool:
    """Whether C{value} may be quoted back in a refusal: a scalar that can be sent."""
    if isinstance(value, str):
        # The stdlib reads a lone surrogate ("\ud800"), which UTF-8 cannot carry.
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    return value is None or isinstance(value, (bool, int, float))


def _explain(frame: bytes, problem: str) -> BadMessage:
    """
    The L{BadMessage} that says what is wrong with C{frame}, which msgspec
    refused saying C{problem}: read again by the stdlib, for the words the
    protocol reference promises and the id to answer.
    """
    try:
        text = frame.decode("utf-8")
    except UnicodeDecodeError as e:
        return BadMessage(messages.NOT_UTF8, position=e.start)
    try:
        obj = _strict_decoder.decode(text)
    except ValueError as e:
        return BadMessage(messages.NOT_JSON, detail=str(e))
    except RecursionError:
        return BadMessage(messages.NOT_JSON, detail="nested too deeply")
    if type(obj) is not dict:
        return BadMessage(messages.NOT_OBJECT, got=type(obj).__name__)
    msg_id = obj.get("id")
    if msg_id is not None and type(msg_id) is not int:
        return BadMessage(messages.BAD_ID, got=msg_id if _is_scalar(msg_id) else None)
    if type(obj.get("type")) is not str:
        return BadMessage(messages.NO_TYPE, reply_to=msg_id)
    reply_to = obj.get("reply_to")
    if reply_to is not None and type(reply_to) is not int:
        return BadMessage(
            messages.BAD_REPLY_TO,
            got=reply_to if _is_scalar(reply_to) else None, reply_to=msg_id,
        )
    # The stdlib took what msgspec did not (a lone surrogate, say): say
    # what msgspec found.
    return BadMessage(messages.NOT_JSON, detail=problem, reply_to=msg_id)
