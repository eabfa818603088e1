"""
Steps of the system clock are said in the log (L{picluster.clockwatch}).
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial import unittest

from picluster.clockwatch import INTERVAL, STEP, ClockWatch
from tests.helpers import SetTime


class ClockWatchTests(unittest.TestCase):
    def setUp(self) -> None:
        self.wall = Clock()
        self.wall.advance(1_700_000_000)
        self.monotonic = SetTime(1000.0)
        self.watch = ClockWatch(self.wall, monotonic=self.monotonic)
        self.watch.startService()
        self.addCleanup(lambda: self.watch.running and self.watch.stopService())

    def tick(self, wall: float, monotonic: float | None = None) -> list[str]:
        """Move both clocks (the monotonic one as the wall, unless told) and let the watch look."""
        self.monotonic.now += wall if monotonic is None else monotonic
        with capturedLogs() as events:
            self.wall.advance(wall)
        return [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]

    def test_quietWhileTheClocksAgree(self) -> None:
        """Seconds that pass on both clocks, however late the reactor looks, are no step."""
        self.assertEqual(self.tick(INTERVAL), [])
        self.assertEqual(self.tick(30 * INTERVAL), [])
        self.assertEqual(self.watch.steps, 0)

    def test_slewIsNoStep(self) -> None:
        """A wall clock a little ahead (NTP's slewing, a slow look) is under the step."""
        self.assertEqual(self.tick(INTERVAL, INTERVAL - STEP * 0.9), [])
        self.assertEqual(self.watch.steps, 0)

    def test_steppedForward(self) -> None:
        """A Pi's first NTP sync, an hour ahead of its fake clock, is said once, with its size."""
        warnings = self.tick(3600 + INTERVAL, INTERVAL)
        self.assertEqual(len(warnings), 1)
        self.assertIn("stepped forward by 3,600 s", warnings[0])
        self.assertIn("Timers keep to the monotonic clock and are not moved", warnings[0])
        self.assertIn("time-sync.target", warnings[0])
        self.assertEqual(self.tick(INTERVAL), [])
        self.assertEqual(self.watch.steps, 1)

    def test_steppedBack(self) -> None:
        """A clock set back is said too: times of day shown from now on may come before earlier ones."""
        self.wall.rightNow -= 120
        self.monotonic.now += INTERVAL
        with capturedLogs() as events:
            self.watch.look()
        warnings = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warnings), 1)
        self.assertIn("stepped back by 121 s", warnings[0])

    def test_stopped(self) -> None:
        """A stopped watch leaves no timer behind, and looks afresh when started again."""
        self.watch.stopService()
        self.assertEqual(self.wall.getDelayedCalls(), [])
        self.monotonic.now += 5
        self.wall.advance(500)
        self.watch.startService()
        self.assertEqual(self.tick(INTERVAL), [])
