"""
The results a slave keeps for its master, until the master acknowledges them.

A result waits here from the end of its run until the master has it on
disk, across lost connections.  Every result is made sendable first (one
frame carries it), and what waits is bounded, in count and in bytes: a
master that never acknowledges (a broken or hostile one) costs the slave
the newest results, not its memory.  A result waits as its JSON (a
L{msgspec.Raw}, which the frame encoder writes as it is), so the bytes
counted are the bytes held: as Python objects the same result could take a
dozen times the room.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
from twisted.logger import Logger, LogLevel

from picluster import wire
from picluster.logbudget import LogBudget
from picluster.tasks.errors import error_payload
from picluster.text import clip

log = Logger()

#: Bytes a frame needs around a task_result payload (its envelope, with the
#: type and a request id, takes under 60).
RESULT_ENVELOPE_ROOM = 256

#: The largest task_result payload, in bytes of JSON, unless told otherwise:
#: what a frame of the default C{--max-frame} carries.  A larger result
#: fails its task with C{ResultTooLarge} rather than making a frame that
#: cannot be sent.
DEFAULT_MAX_RESULT = wire.DEFAULT_MAX_FRAME - RESULT_ENVELOPE_ROOM

#: Results kept for a master that has not acknowledged them: at most this
#: many (or the slots, if more) and this many bytes of JSON (or one result,
#: if larger).  Past either, the oldest is dropped: the master has it
#: already, or it runs the task again (it does when it loses the slave, and
#: after its restart, when the slave rejoins without it).
MAX_WAITING_RESULTS = 100
MAX_WAITING_BYTES = 16 * 1024 * 1024

Run = tuple[int, int]


class WaitingResults:
    """
    The task_result payloads not yet acknowledged, oldest first, by (id, attempt).

    @ivar max_result_bytes: The largest payload, in bytes of JSON: C{own_max_result}
        (C{--max-result}), or less where the master takes smaller frames.
    @ivar max_count: How many wait at most.
    @ivar max_bytes: How many bytes of them wait at most.
    @ivar bytes: How many bytes of them wait now.
    """

    def __init__(self, clock: Any, *, max_result_bytes: int = DEFAULT_MAX_RESULT,
                 max_count: int = MAX_WAITING_RESULTS, max_bytes: int = MAX_WAITING_BYTES):
        self.max_result_bytes = self.own_max_result = max_result_bytes
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.bytes = 0
        self._waiting: dict[Run, tuple[dict[str, Any], int]] = {}
        #: Lines about results dropped: a few a minute.
        self.drop_log = LogBudget(
            log, clock, "Left out of the log in the last {seconds:g} s: {kinds} (the master has"
                        " them, or runs their tasks again)", lines=10, interval=60.0,
        )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (payload for payload, _ in self._waiting.values())

    def __len__(self) -> int:
        return len(self._waiting)

    def get(self, run: Run) -> dict[str, Any] | None:
        kept = self._waiting.get(run)
        return kept[0] if kept is not None else None

    def sendable(self, payload: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """
        The payload as a frame carries it, its result as JSON (see the
        module's docstring), and its size in bytes; a failure saying why
        instead, if it is not JSON or larger than L{max_result_bytes}.
        """
        try:
            # What the master stores is what JSON says: a tuple is a list, a
            # key 1 is "1", a NaN refused, whatever the task returned; and
            # the frame's own codec refuses what UTF-8 cannot say (a lone
            # surrogate), then writes the result as a frame carries it.
            result = payload.get("result")
            if result is not None:
                result = msgspec.json.decode(wire.strict_json(result))
                payload = {**payload, "result": msgspec.Raw(wire.encode(result))}
            size = len(wire.encode(payload))
        except (TypeError, ValueError, RecursionError) as e:
            problem = str(e).encode("ascii", "backslashreplace").decode("ascii")
            return self._failed(payload, "ResultNotJSON", f"the result is not JSON: {clip(problem)}")
        if size > self.max_result_bytes:
            return self._too_large(payload, size)
        return payload, size

    def _too_large(self, payload: dict[str, Any], size: int) -> tuple[dict[str, Any], int]:
        return self._failed(payload, "ResultTooLarge", f"the result is {size} bytes of JSON;"
                                                       f" the limit is {self.max_result_bytes}")

    def _failed(self, payload: dict[str, Any], kind: str, why: str) -> tuple[dict[str, Any], int]:
        # Small, and made of our own words: it fits any frame.
        failed = {"id": payload["id"], "attempt": payload["attempt"], "outcome": "failed",
                  "result": None, "error": error_payload(kind, why)}
        return failed, len(wire.encode(failed))

    def fit_frame(self, max_frame: int) -> None:
        """
        The master takes frames of C{max_frame} bytes at most (its welcome
        says so): a result that would not fit fails instead of being sent,
        since a frame over the master's limit closes the connection, and the
        result would be sent again, and again closed, on every connection.
        Results already waiting (for an earlier master) are checked again.
        """
        self.max_result_bytes = min(self.own_max_result, max(0, max_frame - RESULT_ENVELOPE_ROOM))
        for run, (payload, size) in list(self._waiting.items()):
            if size > self.max_result_bytes:
                failed, failed_size = self._too_large(payload, size)
                self._waiting[run] = (failed, failed_size)
                self.bytes += failed_size - size

    def keep(self, payload: dict[str, Any], size: int) -> None:
        """Keep a sendable payload of C{size} bytes, dropping the oldest past the bounds."""
        self._waiting[payload["id"], payload["attempt"]] = (payload, size)
        self.bytes += size
        while len(self._waiting) > 1 and (len(self._waiting) > self.max_count
                                          or self.bytes > self.max_bytes):
            (task_id, attempt), (_, dropped_size) = next(iter(self._waiting.items()))
            self.forget((task_id, attempt))
            self.drop_log.emit(
                LogLevel.warn, "results dropped unacknowledged",
                "Dropped the result of task {task_id} attempt {attempt} ({size} bytes), never"
                " acknowledged: {count} results of {total} bytes wait for the master, at most"
                " {most} of {most_bytes}", task_id=task_id, attempt=attempt, size=dropped_size,
                count=len(self._waiting), total=self.bytes, most=self.max_count,
                most_bytes=self.max_bytes,
            )

    def forget(self, run: Run) -> None:
        """Forget a result (the master has it); unknown runs are fine."""
        kept = self._waiting.pop(run, None)
        if kept is not None:
            self.bytes -= kept[1]
