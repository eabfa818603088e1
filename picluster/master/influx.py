"""
Optional export of the slaves' vitals to InfluxDB 1.x.

The master already holds every connected slave's latest vitals; an
L{InfluxExporter} samples them on its own timer (so handling a message costs
nothing more), queues the points as line protocol, and posts them in batches
to InfluxDB's C{/write} endpoint.  InfluxDB being slow, down or missing must
never block or break the master: points wait in a bounded buffer, the oldest
go first when it fills, and writes are retried with exponential backoff.
"""

from __future__ import annotations

import json
import math
import re
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlencode, urlsplit

import msgspec
from twisted.application import service
from twisted.internet import defer, interfaces, task
from twisted.logger import Logger
from twisted.python.failure import Failure

if TYPE_CHECKING:
    from picluster.wire.messages import Vitals

#: The measurement every point is written to.
MEASUREMENT = "vitals"

#: Seconds before the first retry of a failed write; each further failure
#: doubles it, up to L{MAX_RETRY_DELAY}.
FIRST_RETRY_DELAY = 1.0
MAX_RETRY_DELAY = 300.0

#: Answers that say the points themselves are wrong (unparseable, a field
#: of the wrong type, a body too large): sending them again would fail again.
BAD_DATA_CODES = (400, 413)

#: Readings that count bytes and are written as integers.  Every other number
#: is written as a float: InfluxDB fixes a field's type at its first write and
#: refuses later points of another type, so a slave that reports C{0} where
#: others report C{0.5} must not lose its points.
INTEGER_FIELDS = frozenset(
    {"ram_free", "swap_free", "disk_free", "disk_total", "process_rss", "throttling_raw"}
)

#: The names C{load_average}'s three values are written under.
LOAD_FIELDS = ("load1", "load5", "load15")

_INT64 = range(-(2**63), 2**63)
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Line protocol 1.x cannot carry a backslash at the end of a tag value or in
# front of a character it escapes, nor any line break; hostnames never hold
# them, so they become "_" rather than break a whole batch.
_TAG_UNSAFE = re.compile(r"[\\\x00-\x1f\x7f]")
_TAG_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "})


def influx_url(text: str) -> str:
    """
    Check an InfluxDB base URL such as C{http://127.0.0.1:8086}.

    @return: The URL without a trailing slash.
    @raise ValueError: Unless it is an http or https URL with a host.
    """
    url = text.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"InfluxDB URL must start with http:// or https://, not {text!r}")
    try:
        parts.port  # noqa: B018 - reading it checks the port
    except ValueError:
        raise ValueError(f"InfluxDB URL has a bad port: {text!r}") from None
    if not parts.hostname:
        raise ValueError(f"InfluxDB URL names no host: {text!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"InfluxDB URL must not hold credentials: {text!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"InfluxDB URL must not have a query or fragment: {text!r}")
    return url


def escape_tag(value: str) -> str:
    """A tag value escaped for line protocol."""
    return _TAG_UNSAFE.sub("_", value).translate(_TAG_ESCAPES)


def _field_value(name: str, value: Any) -> str | None:
    """One field's value in line protocol, or C{None} to leave it out."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if not isinstance(value, (int, float)):
        return None
    if name in INTEGER_FIELDS:
        if isinstance(value, float) and not value.is_integer():
            return None
        whole = int(value)
        return f"{whole}i" if whole in _INT64 else None
    number = float(value)
    return repr(number) if math.isfinite(number) else None


def _readings(vitals: Vitals | dict[str, Any]) -> Iterable[tuple[str, Any]]:
    """The vitals as flat C{(field name, value)} pairs."""
    if not isinstance(vitals, dict):
        vitals = msgspec.structs.asdict(vitals)
    for key, value in vitals.items():
        if key == "load_average" and isinstance(value, list):
            yield from zip(LOAD_FIELDS, value)
        elif isinstance(value, (dict, msgspec.Struct)):
            if not isinstance(value, dict):
                value = msgspec.structs.asdict(value)
            for sub_key, sub_value in value.items():
                yield f"{key}_{sub_key}", sub_value
        else:
            yield key, value


def vitals_fields(vitals: dict[str, Any]) -> list[tuple[str, str]]:
    """
    Every numeric or boolean reading of C{vitals} as a line-protocol field:
    C{load_average} as C{load1}, C{load5}, C{load15}; a dict such as
    C{throttling} as C{throttling_raw}, C{throttling_under_voltage}, ...
    Missing (C{None}), non-finite and non-numeric readings are left out.
    """
    fields = []
    for name, value in _readings(vitals):
        if not isinstance(name, str) or not _FIELD_NAME.fullmatch(name):
            continue
        text = _field_value(name, value)
        if text is not None:
            fields.append((name, text))
    return fields


def vitals_line(
    uuid: str, hostname: str | None, vitals: dict[str, Any], received_at: float
) -> str | None:
    """
    One slave's vitals as a line of line protocol, timestamped in whole
    seconds, or C{None} when it holds no reading worth a point.
    """
    fields = vitals_fields(vitals)
    if not fields:
        return None
    tags = ""
    if hostname:
        tags += f",hostname={escape_tag(hostname)}"
    tags += f",uuid={escape_tag(uuid)}"
    field_text = ",".join(f"{name}={text}" for name, text in fields)
    return f"{MEASUREMENT}{tags} {field_text} {int(received_at)}"


def _error_text(body: bytes) -> str:
    """InfluxDB's own words from an error answer (C{{"error": ...}})."""
    text = body.decode("utf-8", "replace").strip()
    try:
        error = json.loads(text).get("error")
    except (ValueError, AttributeError):
        error = None
    text = error if isinstance(error, str) else text
    return text if len(text) <= 500 else text[:500] + "..."


class InfluxExporter(service.Service):
    """
    Writes every connected slave's vitals to an InfluxDB 1.x database.

    Every C{interval} seconds each slave in C{registry} whose vitals arrived
    since the previous sample adds one point to a buffer of at most
    C{max_points}; up to C{batch_size} of them go out in one request, one
    request at a time.

    @ivar points_written: Points InfluxDB accepted.
    @ivar points_dropped: Points given up: pushed out of a full buffer, or
        refused by InfluxDB as bad data.
    @ivar write_failures: Write requests that failed, for whatever reason.
    """

    log = Logger()

    def __init__(
        self,
        url: str,
        database: str,
        registry: Any,
        *,
        clock: interfaces.IReactorTime | None = None,
        interval: float = 10.0,
        max_points: int = 10_000,
        batch_size: int = 5_000,
        http_client: Any = None,
        timeout: float = 10.0,
    ):
        if not interval > 0 or not timeout > 0:
            raise ValueError("interval and timeout must be positive")
        if max_points < 1 or batch_size < 1:
            raise ValueError("max_points and batch_size must be at least 1")
        if clock is None:
            from twisted.internet import reactor

            clock = cast(interfaces.IReactorTime, reactor)
        if http_client is None:
            # Imported here so that a master without InfluxDB never needs treq.
            import treq as http_client
        self.url = influx_url(url)
        self.database = database
        self.write_url = f"{self.url}/write?" + urlencode({"db": database, "precision": "s"})
        self.query_url = f"{self.url}/query"
        self.registry = registry
        self.clock = clock
        self.interval = interval
        self.max_points = max_points
        self.batch_size = batch_size
        self.timeout = timeout
        self._post: Callable[..., defer.Deferred[Any]] = http_client.post
        self.points_written = 0
        self.points_dropped = 0
        self.write_failures = 0
        self._buffer: deque[str] = deque()
        self._batch: list[str] = []
        self._writing: defer.Deferred[Any] | None = None
        self._retry: interfaces.IDelayedCall | None = None
        self._retry_delay = FIRST_RETRY_DELAY
        self._failing = False
        self._warned_full = False
        self._dropped_before = 0
        self._sampled: dict[str, float] = {}
        self._loop: task.LoopingCall | None = None
        self._idle_waiters: list[defer.Deferred[None]] = []
        self._created_at: float | None = None
        self._creating: defer.Deferred[None] | None = None

    @property
    def pending(self) -> int:
        """Points waiting to be written, including any being written now."""
        return len(self._buffer) + len(self._batch)

    def when_idle(self) -> defer.Deferred[None]:
        """Fire once no write is in flight (at once if none is)."""
        if self._writing is None:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()
        self._idle_waiters.append(waiter)
        return waiter

    # -- service -------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._loop = task.LoopingCall(self._sample)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False).addErrback(
            lambda failure: self.log.failure("InfluxDB export stopped", failure)
        )
        self._flush()

    def stopService(self) -> None:
        """Stop sampling and writing at once; unwritten points are not waited for."""
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._writing is not None:
            self._writing.cancel()
        if self._creating is not None:
            self._creating.cancel()

    # -- sampling ------------------------------------------------------------

    def _sample(self) -> None:
        sampled = {}
        for slave in self.registry:
            received_at, vitals = slave.vitals_received_at, slave.vitals
            if received_at is None or vitals is None:
                continue
            sampled[slave.uuid] = received_at
            if self._sampled.get(slave.uuid) == received_at:
                continue
            try:
                line = vitals_line(slave.uuid, slave.hostname, vitals, received_at)
            except Exception:
                self.log.failure("Cannot export the vitals of slave {uuid}", uuid=slave.uuid)
                continue
            if line is not None:
                self._buffer.append(line)
        # Only slaves still here are remembered, so this stays as small as the cluster.
        self._sampled = sampled
        self._trim()
        self._flush()

    def _trim(self) -> None:
        """Drop the oldest points past C{max_points}, warning once per outage."""
        excess = len(self._buffer) - self.max_points
        if excess <= 0:
            return
        for _ in range(excess):
            self._buffer.popleft()
        self.points_dropped += excess
        if not self._warned_full:
            self._warned_full = True
            self.log.warn(
                "InfluxDB export buffer is full ({max_points} points): dropping the "
                "oldest until {url} takes writes again",
                max_points=self.max_points, url=self.url,
            )

    # -- writing -------------------------------------------------------------

    def _flush(self) -> None:
        """Send the next batch, unless one is in flight or a retry is due later."""
        if not self.running or self._writing is not None or self._retry is not None:
            return
        if not self._buffer:
            return
        count = min(self.batch_size, len(self._buffer))
        self._batch = [self._buffer.popleft() for _ in range(count)]
        body = "\n".join(self._batch).encode("utf-8")
        writing = defer.maybeDeferred(
            self._post,
            self.write_url,
            data=body,
            headers={b"Content-Type": [b"text/plain; charset=utf-8"]},
        )
        writing.addCallback(self._read_answer)
        writing.addTimeout(self.timeout, self.clock, onTimeoutCancel=self._timed_out)
        self._writing = writing
        writing.addCallbacks(self._answered, self._unreachable)
        writing.addErrback(lambda failure: self.log.failure("InfluxDB export failed", failure))
        writing.addBoth(self._write_finished)

    @staticmethod
    def _read_answer(response: Any) -> defer.Deferred[tuple[int, bytes]]:
        return response.content().addCallback(lambda body: (response.code, body))

    def _timed_out(self, result: Any, timeout: float) -> Failure:
        return Failure(defer.TimeoutError(f"no answer within {timeout:g} s"))

    def _answered(self, answer: tuple[int, bytes]) -> None:
        code, body = answer
        batch, self._batch = self._batch, []
        if 200 <= code < 300:
            self.points_written += len(batch)
            self._succeeded(len(batch))
        elif code in BAD_DATA_CODES:
            self.write_failures += 1
            self.points_dropped += len(batch)
            self.log.error(
                "InfluxDB at {url} refused {count} points (HTTP {code}: {error}); dropping them",
                url=self.url, count=len(batch), code=code, error=_error_text(body),
            )
            self._succeeded(0)
        else:
            error = _error_text(body)
            if code == 404 and "database not found" in error:
                self._create_database()
            self._failed(batch, f"HTTP {code}: {error}")

    def _create_database(self) -> None:
        """
        Create the database: what a user who named it expects, and harmless
        where it exists (C{CREATE DATABASE} is idempotent).  Tried again at
        most every L{MAX_RETRY_DELAY} seconds while writes find no database;
        a server with authentication may refuse it, and then the database
        must be made by hand, as the warning says.
        """
        now = self.clock.seconds()
        if self._created_at is not None and now - self._created_at < MAX_RETRY_DELAY:
            return
        self._created_at = now
        name = self.database.replace("\\", "\\\\").replace('"', '\\"')
        creating = defer.maybeDeferred(
            self._post, self.query_url,
            data=urlencode({"q": f'CREATE DATABASE "{name}"'}).encode(),
            headers={b"Content-Type": [b"application/x-www-form-urlencoded"]},
        )
        creating.addCallback(self._read_answer)
        creating.addTimeout(self.timeout, self.clock)
        creating.addCallback(self._database_created)
        creating.addErrback(self._not_created)
        creating.addBoth(lambda _: setattr(self, "_creating", None))
        self._creating = creating

    def _not_created(self, failure: Failure) -> None:
        if not self.running:
            return  # Cancelled by stopService.
        self.log.warn(
            "Cannot create InfluxDB database {database} at {url} ({reason}); create it by hand",
            database=self.database, url=self.url, reason=failure.getErrorMessage(),
        )

    def _database_created(self, answer: tuple[int, bytes]) -> None:
        code, body = answer
        if code != 200 or b'"error"' in body:
            raise RuntimeError(f"HTTP {code}: {_error_text(body)}")
        self.log.info("Created InfluxDB database {database} at {url}",
                      database=self.database, url=self.url)
        if self._retry is not None and self._retry.active():
            # Write at once rather than after the backoff delay.
            self._retry.cancel()
            self._retry_now()

    def _unreachable(self, failure: Failure) -> None:
        batch, self._batch = self._batch, []
        if not self.running:
            # Cancelled by stopService: keep the points for a restart, say nothing.
            self._buffer.extendleft(reversed(batch))
            self._trim()
            return
        self._failed(batch, failure.getErrorMessage() or failure.type.__name__)

    def _failed(self, batch: list[str], reason: str) -> None:
        """
        Keep C{batch} for later and retry after the backoff delay.  Only the
        first failure of an outage is logged: twistd logs every level, and a
        line per retry would bury the rest of the master's log.
        """
        self.write_failures += 1
        self._buffer.extendleft(reversed(batch))
        self._trim()
        if not self._failing:
            self._failing = True
            self.log.warn(
                "InfluxDB at {url} cannot take points ({reason}); keeping up to "
                "{max_points} and retrying with backoff",
                url=self.url, reason=reason, max_points=self.max_points,
            )
        self._retry = self.clock.callLater(self._retry_delay, self._retry_now)
        self._retry_delay = min(self._retry_delay * 2, MAX_RETRY_DELAY)

    def _retry_now(self) -> None:
        self._retry = None
        self._flush()

    def _succeeded(self, written: int) -> None:
        """InfluxDB answered: an outage (if any) is over."""
        self._retry_delay = FIRST_RETRY_DELAY
        if self._failing:
            self._failing = False
            self.log.info(
                "InfluxDB at {url} is back; wrote {written} points, dropped {dropped}",
                url=self.url, written=written, dropped=self.points_dropped - self._dropped_before,
            )
        self._warned_full = False
        self._dropped_before = self.points_dropped

    def _write_finished(self, _: Any) -> None:
        self._writing = None
        self._flush()
        if self._writing is None:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)
