"""
Tests for L{picluster.wire.deadlines}: a deadline for each of many owners,
one timer for them all, each deadline at the time it was set for.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial import unittest

from picluster.wire.deadlines import Deadlines


class Owner:
    """Something with a deadline; hashed by identity, as a connection is."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


class DeadlinesTests(unittest.TestCase):
    """Each owner's C{due} comes at its own time, from one timer."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.came: list[tuple[float, Any]] = []
        self.deadlines = Deadlines(self.clock, lambda owner: self.came.append((self.clock.seconds(), owner)))

    def test_atItsTime(self) -> None:
        """A deadline comes when it was set for, not sooner."""
        a = Owner("a")
        self.deadlines.set(a, 15)
        self.clock.advance(14.9)
        self.assertEqual(self.came, [])
        self.assertIn(a, self.deadlines)
        self.clock.advance(0.1)
        self.assertEqual(self.came, [(1015.0, a)])
        self.assertNotIn(a, self.deadlines)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_oneTimerForMany(self) -> None:
        """A thousand deadlines wait on one timer, and each comes in its turn."""
        owners = [Owner(str(i)) for i in range(1000)]
        for i, owner in enumerate(owners):
            self.deadlines.set(owner, 10 + (i * 7919) % 1000 / 100)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(len(self.deadlines), 1000)
        self.clock.pump([0.01] * 2100)
        self.assertEqual(len(self.came), 1000)
        expected = {owner: 1010 + (i * 7919) % 1000 / 100 for i, owner in enumerate(owners)}
        for when, owner in self.came:
            # The pump adds up 0.01s: its clock drifts by far less than a microsecond.
            self.assertTrue(expected[owner] - 1e-6 <= when < expected[owner] + 0.011, (when, expected[owner]))
        self.assertEqual([when for when, _ in self.came], sorted(when for when, _ in self.came))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_setAgainReplaces(self) -> None:
        """Setting a deadline again replaces the one before, sooner or later."""
        a, b = Owner("a"), Owner("b")
        self.deadlines.set(a, 10)
        self.deadlines.set(b, 20)
        self.deadlines.set(a, 30)
        self.clock.pump([5] * 5)
        self.assertEqual(self.came, [(1020.0, b)])
        self.deadlines.set(a, 1)
        self.clock.advance(1)
        self.assertEqual(self.came, [(1020.0, b), (1026.0, a)])
        self.clock.advance(100)
        self.assertEqual(len(self.came), 2, "the replaced deadlines never come")

    def test_cancel(self) -> None:
        """A cancelled deadline never comes; the last one cancelled stops the timer."""
        a, b = Owner("a"), Owner("b")
        self.deadlines.set(a, 10)
        self.deadlines.set(b, 20)
        self.deadlines.cancel(a)
        self.deadlines.cancel(Owner("never set"))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.deadlines.cancel(b)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(100)
        self.assertEqual(self.came, [])

    def test_dueSetsAgain(self) -> None:
        """What comes due may set its next deadline, and it comes in turn."""
        a = Owner("a")
        deadlines = Deadlines(self.clock, lambda owner: (self.came.append((self.clock.seconds(), owner)),
                                                          deadlines.set(owner, 5)))
        deadlines.set(a, 5)
        self.clock.pump([5, 5, 5])
        self.assertEqual(self.came, [(1005.0, a), (1010.0, a), (1015.0, a)])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_dueCancelsOthers(self) -> None:
        """What comes due may cancel another's deadline due at the same time."""
        a, b = Owner("a"), Owner("b")
        deadlines = Deadlines(self.clock, lambda owner: (self.came.append(owner), deadlines.cancel(b)))
        deadlines.set(a, 5)
        deadlines.set(b, 5)
        self.clock.advance(5)
        self.assertEqual(self.came, [a])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_failingDue(self) -> None:
        """A due that raises is logged, and the deadlines after it still come."""
        a, b = Owner("a"), Owner("b")

        def due(owner: Owner) -> None:
            self.came.append((self.clock.seconds(), owner))
            if owner is a:
                raise RuntimeError("broken")

        deadlines = Deadlines(self.clock, due)
        deadlines.set(a, 5)
        deadlines.set(b, 5)
        deadlines.set(Owner("c"), 10)
        self.clock.advance(5)
        self.assertEqual(self.came, [(1005.0, a), (1005.0, b)])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.clock.advance(5)
        self.assertEqual(len(self.came), 3)

    def test_oneTimerWhileDue(self) -> None:
        """Deadlines set again as they come move the timer once, to the earliest."""
        owners = [Owner(str(i)) for i in range(3)]
        # Each set again sooner than the one before it.
        deadlines = Deadlines(self.clock, lambda owner: deadlines.set(owner, 10 - int(owner.name)))
        for owner in owners:
            deadlines.set(owner, 1)
        timers: list[float] = []
        call_later = self.clock.callLater

        def counted(delay: float, *args: Any) -> Any:
            timers.append(self.clock.seconds() + delay)
            return call_later(delay, *args)

        self.clock.callLater = counted  # type: ignore[method-assign]
        self.clock.advance(1)
        self.assertEqual(timers, [1009.0])
        [timer] = self.clock.getDelayedCalls()
        self.assertEqual(timer.getTime(), 1009.0)

    def test_lateClock(self) -> None:
        """A reactor late by several deadlines brings them all, in order."""
        owners = [Owner(str(i)) for i in range(5)]
        for i, owner in enumerate(owners):
            self.deadlines.set(owner, i + 1)
        self.clock.advance(10)
        self.assertEqual([owner for _, owner in self.came], owners)

    def test_heapBounded(self) -> None:
        """Deadlines set again and again leave at most twice what waits (and a little) behind."""
        owners = [Owner(str(i)) for i in range(10)]
        for round in range(100):
            for owner in owners:
                self.deadlines.set(owner, 50 + round)
            self.assertLessEqual(len(self.deadlines._heap), 2 * len(owners) + 64)
        self.clock.pump([1] * 200)
        self.assertEqual(sorted(self.came, key=lambda c: c[1].name),
                         [(1149.0, owner) for owner in sorted(owners, key=lambda o: o.name)],
                         "each once, at its last deadline")
