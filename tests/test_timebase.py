"""
Timers on the monotonic clock, times of day on the wall clock (L{picluster.timebase}).
"""

from __future__ import annotations

from twisted.internet.selectreactor import SelectReactor
from twisted.internet.task import Clock
from twisted.trial import unittest

from picluster.timebase import has_monotonic_timers, monotonic_timers, wall_time
from tests.helpers import SetTime


class MonotonicTimersTests(unittest.TestCase):
    """A real reactor (never run: its due calls are run by hand) across steps of the wall clock."""

    def setUp(self) -> None:
        self.reactor = SelectReactor()
        self.addCleanup(self.close_waker)
        self.monotonic = SetTime(500.0)
        self.wall = SetTime(1_700_000_000.0)
        monotonic_timers(self.reactor, monotonic=self.monotonic, wall=self.wall)
        self.fired: list[str] = []

    def close_waker(self) -> None:
        self.reactor.removeReader(self.reactor.waker)
        self.reactor.waker.connectionLost(None)

    def later(self, seconds: float, name: str) -> None:
        self.reactor.callLater(seconds, self.fired.append, name)

    def test_startsAtTheWallClock(self) -> None:
        """The reactor's seconds go on from the wall clock's reading, then part from it only by steps."""
        self.assertTrue(has_monotonic_timers(self.reactor))
        self.assertEqual((self.reactor.seconds(), wall_time(self.reactor)), (1_700_000_000.0,) * 2)
        self.monotonic.now += 7
        self.wall.now += 7 + 3600
        self.assertEqual((self.reactor.seconds(), wall_time(self.reactor)),
                         (1_700_000_007.0, 1_700_003_607.0))

    def test_stepForwardFiresNothing(self) -> None:
        """A day forward on the wall clock fires no timer; the monotonic seconds do."""
        self.later(5, "five")
        self.later(60, "minute")
        self.wall.now += 86400
        self.reactor.runUntilCurrent()
        self.assertEqual(self.fired, [])
        self.monotonic.now += 5
        self.reactor.runUntilCurrent()
        self.assertEqual(self.fired, ["five"])

    def test_stepBackHoldsNothingBack(self) -> None:
        """A day back on the wall clock holds no timer back."""
        self.later(5, "five")
        self.wall.now -= 86400
        self.monotonic.now += 5
        self.reactor.runUntilCurrent()
        self.assertEqual(self.fired, ["five"])

    def test_pollTimeoutIgnoresSteps(self) -> None:
        """How long the reactor may sleep in its poll is the monotonic time to the next timer."""
        self.later(5, "five")
        self.wall.now += 3600
        self.assertEqual(self.reactor.timeout(), 5)

    def test_once(self) -> None:
        """Installing again changes nothing: the reactor keeps its first offset and wall clock."""
        self.wall.now += 3600
        monotonic_timers(self.reactor, monotonic=SetTime(0.0), wall=SetTime(0.0))
        self.assertEqual((self.reactor.seconds(), wall_time(self.reactor)),
                         (1_700_000_000.0, 1_700_003_600.0))


class WallTimeTests(unittest.TestCase):
    def test_otherClocks(self) -> None:
        """A clock left as it was (a test's Clock, a plain reactor) gives its own seconds."""
        clock = Clock()
        clock.advance(42)
        self.assertEqual((wall_time(clock), has_monotonic_timers(clock)), (42, False))
