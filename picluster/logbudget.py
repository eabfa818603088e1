"""
Log lines about single tasks, while there are few enough of them to read.

A busy cluster runs thousands of tiny tasks a second.  A log line for each
start and end would cost more than the tasks (formatting and writing one
line takes Twisted some 30-50 microseconds, on the master's one core) and
would fill a Pi's SD card with lines nobody reads; the task database keeps
every task's record anyway.  So a L{LogBudget} lets a few lines an interval
through one by one, counts the rest by kind, and says at the end of the
interval how many it left out.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger, LogLevel

#: Lines logged one by one per interval, and the interval in seconds.
DEFAULT_LINES = 100
DEFAULT_INTERVAL = 10.0


class LogBudget:
    """
    At most C{lines} log lines per C{interval} seconds; one summary for the rest.

    @ivar summary: The summary line's format: C{{count}} lines left out,
        C{{seconds}} of the interval, and C{{kinds}} (e.g. C{"2,310 done,
        4 failed"}).
    """

    def __init__(self, log: Logger, clock: Any, summary: str, *,
                 lines: int = DEFAULT_LINES, interval: float = DEFAULT_INTERVAL):
        self.log = log
        self.clock = clock
        self.summary = summary
        self.lines = lines
        self.interval = interval
        self._window_end = float("-inf")
        self._logged = 0
        #: Kind to how many lines of it were left out in this interval.
        self._left_out: dict[str, int] = {}
        self._summary_call: Any = None

    def emit(self, level: LogLevel, kind: str, format: str, /, **fields: Any) -> None:
        """Log one line about one task, if the interval has room for it."""
        now = self.clock.seconds()
        if now >= self._window_end and self._summary_call is None:
            self._window_end = now + self.interval
            self._logged = 0
        if self._logged < self.lines:
            self._logged += 1
            self.log.emit(level, format, **fields)
            return
        self._left_out[kind] = self._left_out.get(kind, 0) + 1
        if self._summary_call is None:
            self._summary_call = self.clock.callLater(
                max(self._window_end - now, 0), self._summarise
            )

    def info(self, kind: str, format: str, /, **fields: Any) -> None:
        self.emit(LogLevel.info, kind, format, **fields)

    def flush(self) -> None:
        """Say now what was left out (before stopping), and start afresh."""
        if self._summary_call is not None and self._summary_call.active():
            self._summary_call.cancel()
        self._summarise()

    def _summarise(self) -> None:
        self._summary_call = None
        self._window_end = float("-inf")
        left_out, self._left_out = self._left_out, {}
        if not left_out:
            return
        kinds = ", ".join(f"{count:,} {kind}" for kind, count in left_out.items())
        self.log.info(self.summary, count=sum(left_out.values()), seconds=self.interval,
                      kinds=kinds, left_out=left_out)


class FailureLog:
    """
    Tracebacks logged once per cause, then counted.

    A peer that finds a way to make a handler fail can make it fail on every
    message; a traceback each (dozens of lines) would fill the log.  A cause
    is the exception's type and the line that raised it: its first failure
    is logged whole, the next ones within C{interval} seconds only counted,
    and the count said with the next traceback of that cause after it.

    @ivar limit: Causes remembered at once; past it the oldest is forgotten
        (and its next failure is logged whole again).
    """

    def __init__(self, log: Logger, clock: Any, *, interval: float = 3600.0, limit: int = 256):
        self.log = log
        self.clock = clock
        self.interval = interval
        self.limit = limit
        #: Cause to (when its traceback was last logged, failures since).
        self._causes: dict[tuple[str, str], tuple[float, int]] = {}

    def failure(self, format: str, failure: Any, /, **fields: Any) -> None:
        """Log C{failure} with C{format}, unless its cause was logged lately."""
        cause = _cause_of(failure)
        now = self.clock.seconds()
        seen = self._causes.get(cause)
        if seen is not None and now - seen[0] < self.interval:
            self._causes[cause] = (seen[0], seen[1] + 1)
            return
        repeated = seen[1] if seen is not None else 0
        self._causes.pop(cause, None)
        if len(self._causes) >= self.limit:
            del self._causes[next(iter(self._causes))]
        self._causes[cause] = (now, 0)
        if repeated:
            format += " ({repeated} more of the same since it was last logged)"
        self.log.failure(format, failure, repeated=repeated, **fields)


def _cause_of(failure: Any) -> tuple[str, str]:
    """The type of C{failure}'s exception, and where it was raised."""
    frames = getattr(failure, "frames", None) or []
    where = f"{frames[-1][1]}:{frames[-1][2]}" if frames else ""
    return (getattr(failure.type, "__qualname__", str(failure.type)), where)
