"""
A deterministic fuzzer of picluster frames, for C{tests/test_fuzz.py}.

L{Mutator} starts from valid envelopes of every message type and spoils
them as a broken or hostile peer would: a field's value swapped for one of
another type, a huge or unreadable number, nesting thousands deep, keys
dropped or added, the message type or the payload of another
message, then bytes flipped, cut off, inserted, deleted or repeated, and
framed with a length prefix that lies, several frames in one write, or one
frame in many.  Everything is drawn from one C{random.Random}, so a seed
names a run; L{Probe} feeds a protocol and checks what it answers.
"""

from __future__ import annotations

import copy
import json
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher

from picluster.wire import envelope as wire
from picluster.wire import messages
from picluster.wire.protocol import PiClusterProtocol

#: The length prefix of a frame.
_PREFIX = struct.Struct("!I")

_UUID = "0123456789abcdef" * 2

COMPUTER_DETAILS = {
    "hostname": "pi-fuzz", "model": "Raspberry Pi 4 Model B Rev 1.4", "cpu": "Cortex-A72",
    "cpu_cores": 4, "cpu_frequency_max": 1800.0, "cpu_frequency_min": 600.0, "ram": 4 * 2**30,
    "swap": 2**20, "architecture": "aarch64", "os": "Debian GNU/Linux 12", "python": "3.11.2",
    "picluster_version": "1.0", "boot_time": 1.7e9,
}
VITALS = {
    "cpu_percentage": 12.5, "cpu_frequency": 1500.0, "ram_free": 2**30, "swap_free": 2**20,
    "cpu_temperature": 48.2, "under_voltage": False, "load_average": [0.5, 0.25, 0.1],
    "disk_free": 2**33, "disk_total": 2**34, "uptime": 3600.0, "process_rss": 2**25,
    "throttling": {"raw": 0, "under_voltage": False, "frequency_capped": False, "throttled": False,
                   "soft_temperature_limit": False, "under_voltage_occurred": True,
                   "frequency_capped_occurred": False, "throttled_occurred": False,
                   "soft_temperature_limit_occurred": False},
}
TASK_SPEC = {
    "name": "primes", "args": {"start": 0, "stop": 100}, "timeout": 10.0, "retries": 2, "key": "k1",
    "requirements": {"min_ram": 0, "min_cores": 1, "tags": [], "hostname": None},
}
TASK_RECORD = {
    "id": 1, "name": "primes", "state": "done", "key": None, "args": {}, "attempts": 1,
    "result": 25, "error": None, "submitted_at": 1.0, "finished_at": 2.0,
}
REFUSAL = {"error": "unknown message type", "type": "launch", "field": "x", "got": 1}


def envelope(message_type: str, payload: Any = None, **ids: int) -> dict[str, Any]:
    return {"type": message_type, "payload": payload, **ids}


#: What a master is sent: every message a slave or client sends, each kind of
#: reply, and messages only a master sends (which it must refuse).
TO_MASTER = [
    envelope("hello", {"version": 1, "uuid": None, "role": "slave"}, id=1),
    envelope("hello", {"version": 1, "uuid": _UUID, "role": "client"}, id=1),
    envelope("hello", {"version": 2, "uuid": None, "role": "slave", "credential": "slave",
                       "proof": "ab" * 32, "node_proof": None}, id=1),
    envelope("hello", {"version": 2, "uuid": _UUID, "role": "client", "credential": "client",
                       "proof": "cd" * 32, "node_proof": "ef" * 32}, id=1),
    envelope("ping", 12.5, id=2), envelope("ping", None), envelope("pong", 3.0, reply_to=1),
    envelope("message", "hello master"),
    envelope("computer_details", COMPUTER_DETAILS, id=3),
    envelope("vitals", VITALS),
    *[envelope("info", question, id=4) for question in messages.INFO_QUESTIONS],
    envelope("worker", {"slots": 2, "tasks": ["primes", "sleep"], "refused": {"sleep": "no"},
                        "tags": ["fast"], "holding": [{"id": 1, "attempt": 1}]}, id=5),
    envelope("task_result", {"id": 1, "attempt": 1, "outcome": "done", "result": [2, 3],
                             "error": None, "retry": False}, id=6),
    envelope("task_result", {"id": 2, "attempt": 1, "outcome": "failed", "result": None, "retry": True,
                             "error": {"message": "boom", "type": "ValueError", "traceback": None,
                                       "kind": "crashed"}}, id=6),
    envelope("submit", {"tasks": [TASK_SPEC, {"name": "sleep", "args": {"seconds": 1}}]}, id=7),
    envelope("tasks", {"ids": [1, 2], "state": "queued", "limit": 10, "after": None}, id=8),
    envelope("tasks", None, id=8),
    envelope("cancel", {"id": 1}, id=9),
    envelope("watch", {"ids": [1, 2, 3]}, id=10),
    envelope("ack", None, reply_to=1), envelope("ack", None, reply_to=2),
    envelope("bad_message", REFUSAL, reply_to=1), envelope("bad_message", REFUSAL),
    envelope("error", {"error": "boom"}, reply_to=2), envelope("error", {"error": "boom"}, id=11),
    envelope("welcome", {"uuid": _UUID, "keepalive": 5.0, "dead_after": 15.0}, id=12),
    envelope("run_task", {"id": 1, "attempt": 1, "name": "primes", "args": {}, "timeout": 5.0}, id=13),
    envelope("task_update", {"task": TASK_RECORD}),
    envelope("no_such_type", {"a": 1}, id=14),
]

#: What a slave is sent: the master's replies to its requests (hello is 1,
#: computer_details 2, info 3, worker 4, results after), the master's own
#: messages, and messages only a slave sends.
TO_SLAVE = [
    envelope("welcome", {"uuid": _UUID, "keepalive": 5.0, "dead_after": 15.0}, reply_to=1),
    envelope("welcome", {"uuid": _UUID, "keepalive": 1.0, "dead_after": 3.0, "node_key": "a" * 43},
             reply_to=1),
    envelope("ack", None, reply_to=2),
    envelope("master_info", COMPUTER_DETAILS, reply_to=3),
    envelope("worker_accepted", {"drop": [{"id": 1, "attempt": 1}]}, reply_to=4),
    envelope("ack", None, reply_to=5), envelope("ack", None, reply_to=6),
    envelope("bad_message", REFUSAL, reply_to=1), envelope("bad_message", REFUSAL, reply_to=5),
    envelope("error", {"error": "boom"}, reply_to=4), envelope("error", {"error": "boom"}),
    envelope("ping", 12.5, id=20), envelope("pong", 1.0, reply_to=7),
    envelope("message", "hello slave"),
    envelope("run_task", {"id": 1, "attempt": 1, "name": "answer", "args": {}, "timeout": 5.0}, id=21),
    envelope("run_task", {"id": 2, "attempt": 1, "name": "echo", "args": {"value": [1, "x"]},
                          "timeout": None}, id=22),
    envelope("run_task", {"id": 3, "attempt": 2, "name": "wait", "args": None, "timeout": 0.5}, id=23),
    envelope("cancel_task", {"id": 3, "attempt": 2}, id=24),
    envelope("task_update", {"task": TASK_RECORD}),
    envelope("info", "uuid", id=25),
    envelope("hello", {"version": 1, "uuid": None, "role": "slave"}, id=26),
    envelope("tasks", {"ids": [1]}, reply_to=3),
]


class Raw:
    """JSON text put into an envelope as it is (C{1e400}, C{NaN}, deep nesting)."""

    def __init__(self, text: str):
        self.text = text


def _deep(depth: int, kind: str) -> Raw:
    if kind == "list":
        return Raw("[" * depth + "]" * depth)
    return Raw('{"a":' * depth + "null" + "}" * depth)


#: Values that break a field: each a different type, a number no field
#: holds, text no JSON reader likes, or nesting deep enough to hurt.
HOSTILE_VALUES: list[Any] = [
    None, True, False, 0, -1, 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30,
    -(10**40), 0.5, -0.0, 1e308, -1e308, 5e-324, "", "x", "0", "null", "é✓😀", "\x00", "a" * 70,
    "a" * 5000, [], {}, [None], {"": None}, [1, "a", None, [], {}],
    Raw("1e400"), Raw("-1e400"), Raw("1E+999"), Raw("NaN"), Raw("Infinity"), Raw("-Infinity"),
    Raw("1" * 5000), Raw("-" + "9" * 4300), Raw("0.0000e-999999"), Raw('"\\ud800"'),
    Raw('"\\udfff\\ud800"'), Raw('"\\u0000"'),
    _deep(40, "list"), _deep(40, "dict"), _deep(3000, "list"), _deep(3000, "dict"),
    _deep(50_000, "list"),
]

#: Bytes that upset a JSON reader or a UTF-8 decoder.
HOSTILE_BYTES = [b"{", b"}", b"[", b"]", b'"', b",", b":", b"\\", b"\x00", b"\xff", b"\xc0\x80",
                 b"\xed\xa0\x80", b"\xe2\x82", b"\xf4\x90\x80\x80", b" ", b"\n", b"0", b"-", b"e9"]

#: Message types a peer may put where another one was.
TYPE_NAMES = [*messages.MESSAGES, "", "no_such_type", "msg_hello", "__class__", "hello ", "HELLO"]


@dataclass
class Sent:
    """
    One burst of bytes for a protocol: its chunks, the one frame it holds if
    exactly framed, and whether a lying length prefix leaves the framing
    astray from there on.
    """

    chunks: list[bytes]
    body: bytes | None
    astray: bool = False


class Mutator:
    """Spoiled frames from a corpus of valid envelopes, drawn from C{rng}."""

    def __init__(self, rng: random.Random, corpus: list[dict[str, Any]], max_frame: int):
        self.rng = rng
        self.corpus = corpus
        self.max_frame = max_frame

    # -- the JSON ----------------------------------------------------------

    def hostile_value(self, original: Any) -> Any:
        rng = self.rng
        roll = rng.random()
        if roll < 0.6:
            # A copy: a later change to this frame must not change the list.
            return copy.deepcopy(rng.choice(HOSTILE_VALUES))
        if roll < 0.7:
            return copy.deepcopy(rng.choice(self.corpus)["payload"])
        if roll < 0.8:
            return [original] * (100 if original is None or isinstance(original, (int, float, str)) else 2)
        if roll < 0.9:
            return {rng.choice(("a", "payload", "type", "id")): original}
        # The same facts, as another type.
        if isinstance(original, str):
            return len(original)
        if isinstance(original, (int, float)):
            return str(original)
        if isinstance(original, list):
            return {str(n): value for n, value in enumerate(original)}
        if isinstance(original, dict):
            return list(original.values())
        return copy.deepcopy(rng.choice(HOSTILE_VALUES))

    def _containers(self, value: Any) -> list[tuple[Any, Any]]:
        """Every (container, key) pair under C{value}, for a mutation to pick from."""
        found: list[tuple[Any, Any]] = []
        if isinstance(value, dict):
            for key in list(value):
                found.append((value, key))
                found.extend(self._containers(value[key]))
        elif isinstance(value, list):
            for index in range(len(value)):
                found.append((value, index))
                found.extend(self._containers(value[index]))
        return found

    def spoil(self, message: dict[str, Any]) -> Any:
        """One structural change to C{message} (a fresh copy); may return another value entirely."""
        rng = self.rng
        places = self._containers(message)
        operation = rng.randrange(8)
        if operation == 0 and places:
            container, key = rng.choice(places)
            container[key] = self.hostile_value(container[key])
        elif operation == 1 and places:
            container, key = rng.choice(places)
            del container[key]
        elif operation == 2:
            dicts = [message] + [c[k] for c, k in places if isinstance(c[k], dict)]
            rng.choice(dicts)[rng.choice(("extra", "type", "id", "reply_to", "payload", ""))] = (
                self.hostile_value(None))
        elif operation == 3:
            message["type"] = rng.choice(TYPE_NAMES)
        elif operation == 4:
            message["payload"] = copy.deepcopy(rng.choice(self.corpus)["payload"])
        elif operation == 5:
            message[rng.choice(("id", "reply_to"))] = rng.choice(
                (0, 1, 2, 3, 4, 5, 6, rng.randrange(2**31), -1, 2**64, None, "1", 1.0, True))
        elif operation == 6:
            return self.hostile_value(message)
        else:
            message.pop("payload", None)
        return message

    def serialize(self, value: Any) -> bytes:
        raws: list[str] = []

        def placeholder(raw: Any) -> str:
            raws.append(raw.text)
            return f"\x00raw{len(raws) - 1}\x00"

        text = json.dumps(value, default=placeholder, ensure_ascii=self.rng.random() < 0.5)
        for index, raw in enumerate(raws):
            text = text.replace(f'"\\u0000raw{index}\\u0000"', raw, 1)
        return text.encode("utf-8", "surrogatepass")

    # -- the bytes ---------------------------------------------------------

    def damage(self, body: bytes) -> bytes:
        """One change to the bytes of a frame."""
        rng = self.rng
        data = bytearray(body)
        at = rng.randrange(len(data) + 1)
        operation = rng.randrange(6)
        if operation == 0 and data:
            data[min(at, len(data) - 1)] ^= 1 << rng.randrange(8)
        elif operation == 1:
            del data[at:]
        elif operation == 2:
            data[at:at] = b"".join(rng.choice(HOSTILE_BYTES) for _ in range(rng.randint(1, 4)))
        elif operation == 3:
            del data[at : at + rng.randint(1, 16)]
        elif operation == 4:
            end = min(len(data), at + rng.randint(1, 64))
            data[at:at] = data[at:end] * rng.randint(1, 3)
        else:
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        return bytes(data)

    def body(self) -> bytes:
        """A frame's body: a corpus envelope, spoiled and damaged (or left whole, now and then)."""
        rng = self.rng
        value: Any = copy.deepcopy(rng.choice(self.corpus))
        for _ in range(rng.choice((0, 1, 1, 1, 2, 3))):
            if not isinstance(value, dict):
                break
            value = self.spoil(value)
        body = self.serialize(value)
        if rng.random() < 0.3:
            for _ in range(rng.randint(1, 3)):
                body = self.damage(body)
        return body

    # -- the framing -------------------------------------------------------

    def prefix(self, length: int) -> bytes:
        """A length prefix that lies: a little or a lot, or past the frame limit."""
        rng = self.rng
        lie = rng.choice((
            length + rng.randint(1, 8), max(0, length - rng.randint(1, 8)), 0,
            rng.randrange(2**32), self.max_frame + 1, 2**32 - 1,
        ))
        return _PREFIX.pack(lie)

    def burst(self) -> Sent:
        """The bytes of one write, or of several writes in a row, and the exact frame if there is one."""
        rng = self.rng
        roll = rng.random()
        astray = False
        if roll < 0.8:
            body = self.body()
            data, exact = _PREFIX.pack(len(body)) + body, body
        elif roll < 0.9:
            body = self.body()
            data, exact, astray = self.prefix(len(body)) + body, None, True
        else:
            data = b"".join(_PREFIX.pack(len(b)) + b for b in (self.body() for _ in range(rng.randint(2, 4))))
            exact = None
        if len(data) > 1 and rng.random() < 0.2:
            cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 6))))
            chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]
        else:
            chunks = [data]
        return Sent(chunks, exact, astray)


class BusyLoopClock(Clock):
    """
    A Clock that fails a test looping on it rather than run forever: a
    timer that keeps rescheduling itself for now (a LoopingCall of 1e-300
    seconds) makes more than 10,000 calls in one advance.
    """

    scheduled = 0

    def advance(self, amount: float) -> None:
        self.scheduled = 0
        super().advance(amount)

    def callLater(self, delay: float, *args: Any, **kwargs: Any) -> Any:
        self.scheduled += 1
        if self.scheduled > 10_000:
            raise RuntimeError("a busy loop: over 10,000 timed calls in one advance of the clock")
        return super().callLater(delay, *args, **kwargs)


class FailureWatch:
    """Every C{log_failure} event (an unhandled error) logged while it watches."""

    def __init__(self) -> None:
        self.failures: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self)

    def __call__(self, event: dict[str, Any]) -> None:
        if "log_failure" in event:
            self.failures.append(event)

    def stop(self) -> None:
        globalLogPublisher.removeObserver(self)


@dataclass
class Answer:
    """One frame a protocol sent: its envelope's fields, the payload as JSON text."""

    type: str
    payload: bytes
    id: int | None
    reply_to: int | None


def split_frames(data: bytes) -> list[Answer]:
    """Every envelope in C{data}, which must hold whole frames of JSON envelopes."""
    answers = []
    while data:
        assert len(data) >= 4, f"partial prefix in output: {data!r}"
        (length,) = _PREFIX.unpack(data[:4])
        assert len(data) >= 4 + length, f"partial frame in output: {data[:200]!r}"
        # Read by the stdlib: an id of 4300 digits, which msgspec refuses and
        # a reply may echo, is still JSON.
        message = wire.loads(data[4 : 4 + length].decode("utf-8"))
        assert type(message["type"]) is str, message
        for key in ("id", "reply_to"):
            assert type(message.get(key)) in (int, type(None)), message
        answers.append(Answer(message["type"], msgspec.json.encode(message.get("payload")),
                              message.get("id"), message.get("reply_to")))
        data = data[4 + length :]
    return answers


def check_declared(sent: Answer) -> None:
    """C{sent}'s payload has the shape declared for its type (as a reply, where it is one)."""
    if sent.type == "tasks":
        # A request, or the reply to one: to a tasks, cancel or watch that
        # carried no id, the answer goes out without a reply_to too.
        try:
            messages.reply_decoder("tasks", "tasks").decode(sent.payload)
            return
        except msgspec.ValidationError:
            if sent.reply_to is not None:
                raise
    messages.DECODERS[sent.type].decode(sent.payload)


def expected_reply(body: bytes) -> int | None:
    """The id a reply must answer, if C{body} is a request both JSON readers see alike."""
    try:
        message = wire.loads(body.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    if type(message) is not dict or type(message.get("type")) is not str:
        return None
    if message.get("reply_to") is not None or type(message.get("id")) is not int:
        return None
    return message["id"]


class Probe:
    """
    Feeds bursts to one protocol and checks what it sends: whole frames of
    the types C{allowed}, each of its declared shape; exactly one reply to
    each request that both JSON readers read alike, even when the protocol
    closes after it; nothing at all once it is closing.
    """

    def __init__(self, protocol: PiClusterProtocol, transport: StringTransport,
                 allowed: frozenset[str], settle: Callable[[], None]):
        self.protocol = protocol
        self.transport = transport
        self.allowed = allowed
        self.settle = settle
        #: Whether a lying length prefix has been sent: frames are no longer where they seem.
        self.astray = False

    def feed(self, burst: Sent, context: Callable[[], str]) -> list[Answer]:
        protocol, transport = self.protocol, self.transport
        was_closing = protocol.closing
        # A frame over the connection's limit (a stranger's is small) closes
        # it unanswered.
        limit = protocol.MAX_LENGTH
        self.astray = self.astray or burst.astray
        # What the clock made it send meanwhile (pings, tasks): checked, then set aside.
        self.check(context)
        transport.clear()
        for chunk in burst.chunks:
            try:
                protocol.dataReceived(chunk)
            except Exception as e:
                raise AssertionError(f"dataReceived raised {e!r}\n{context()}") from e
        self.settle()
        answers = self.check(context)
        if was_closing:
            assert not answers, f"answered after closing: {answers}\n{context()}"
        if protocol.closing:
            assert transport.disconnecting, f"closing, yet the transport is open\n{context()}"
        if burst.body is not None and len(burst.body) <= limit and not (was_closing or self.astray):
            request_id = expected_reply(burst.body)
            if request_id is not None:
                replies = [a for a in answers if a.reply_to == request_id]
                assert len(replies) == 1, f"{len(replies)} replies to request {request_id}\n{context()}"
        return answers

    def check(self, context: Callable[[], str]) -> list[Answer]:
        """What the protocol sent since the transport was last cleared, each frame checked."""
        sent = self.transport.value()
        try:
            answers = split_frames(sent)
            for answer in answers:
                assert answer.type in self.allowed, f"unexpected {answer.type}"
                check_declared(answer)
        except Exception as e:
            raise AssertionError(f"bad answer {sent[:500]!r}: {e}\n{context()}") from e
        return answers
