"""
Tests for L{picluster.tasks.logbudget}: per-task log lines within a budget.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, capturedLogs, formatEvent
from twisted.trial import unittest

from picluster.logbudget import LogBudget


class LogBudgetTests(unittest.TestCase):
    """
    A few lines an interval go out one by one; the rest are counted and summed up.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.budget = LogBudget(Logger(), self.clock, "Left out in {seconds:g} s: {kinds}",
                                lines=3, interval=10.0)

    def log(self, count: int, kind: str = "done") -> list[str]:
        with capturedLogs() as events:
            for n in range(count):
                self.budget.info(kind, "Task {id} {kind}", id=n, kind=kind)
        return [formatEvent(event) for event in events]

    def summary(self, advance: float = 10.0) -> list[dict]:
        with capturedLogs() as events:
            self.clock.advance(advance)
        return list(events)

    def test_fewLinesAsTheyCome(self) -> None:
        """Within the budget every line is logged as given, at its level."""
        self.assertEqual(self.log(3), ["Task 0 done", "Task 1 done", "Task 2 done"])
        self.assertEqual(self.summary(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_theRestSummedUp(self) -> None:
        """Past the budget lines are counted by kind and summed up at the interval's end."""
        self.assertEqual(len(self.log(5)), 3)
        self.assertEqual(self.log(1, "failed"), [])
        self.assertEqual(self.summary(9.9), [])
        (event,) = self.summary(0.1)
        self.assertEqual(formatEvent(event), "Left out in 10 s: 2 done, 1 failed")
        self.assertEqual(event["left_out"], {"done": 2, "failed": 1})
        self.assertEqual(event["log_level"], LogLevel.info)

    def test_nextInterval(self) -> None:
        """After a summary, the next interval has its whole budget again."""
        self.log(4)
        self.summary()
        self.assertEqual(len(self.log(3)), 3)

    def test_quietIntervalStartsAfresh(self) -> None:
        """An interval that ended without overflow leaves nothing to say."""
        self.log(2)
        self.clock.advance(11)
        self.assertEqual(len(self.log(3)), 3)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_bigNumbers(self) -> None:
        """Counts are written with thousands separators."""
        self.log(3 + 12_345)
        (event,) = self.summary()
        self.assertEqual(formatEvent(event), "Left out in 10 s: 12,345 done")

    def test_flush(self) -> None:
        """flush says at once what was left out, and leaves no call behind."""
        self.log(5)
        with capturedLogs() as events:
            self.budget.flush()
        self.assertEqual([formatEvent(e) for e in events], ["Left out in 10 s: 2 done"])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        with capturedLogs() as events:
            self.budget.flush()
        self.assertEqual(list(events), [])

    def test_level(self) -> None:
        """emit keeps the level it is given."""
        with capturedLogs() as events:
            self.budget.emit(LogLevel.warn, "lost", "Task {id} lost", id=1)
        self.assertEqual(events[0]["log_level"], LogLevel.warn)
