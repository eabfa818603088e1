"""
One timer for a deadline of each of many connections.

A master holds thousands of idle connections, and each has deadlines: the
time by which its peer must have been heard from, and, while a frame
arrives in pieces, the time by which it must be whole.  A C{callLater}
each costs a connection some 400 bytes (the L{DelayedCall}, its dict, two
bound methods, its arguments) and an entry in the reactor's heap of
timers.  L{Deadlines} keeps them in a heap of its own, one small entry a
connection, and one C{callLater} waits for the earliest; each deadline
still comes at the time it was set for, as its own timer would have.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Hashable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

log = Logger()

# Tolerance for float arithmetic when a deadline lands exactly on time.
_EPSILON = 1e-6


class Deadlines:
    """
    At most one deadline for each owner (a connection); C{due(owner)} is
    called when it comes.

    Replaced and cancelled deadlines are left in the heap to be skipped
    when they come up; the heap is rebuilt from the live ones once they are
    outnumbered, so that it stays within twice what waits, and it is
    emptied, its timer stopped, when none waits.

    @ivar clock: The L{IReactorTime} of the deadlines.
    """

    def __init__(self, clock: IReactorTime, due: Callable[[Any], object]):
        self.clock = clock
        self._due = due
        #: Each owner's deadline, in the clock's seconds.
        self._deadlines: dict[Hashable, float] = {}
        #: (deadline, order of setting, owner); stale entries are skipped.
        self._heap: list[tuple[float, int, Hashable]] = []
        self._order = itertools.count()
        self._timer: Any = None
        self._timer_at = 0.0
        #: While deadlines come: the timer is set once they all have.
        self._firing = False

    def __len__(self) -> int:
        return len(self._deadlines)

    def __contains__(self, owner: object) -> bool:
        return owner in self._deadlines

    def set(self, owner: Hashable, delay: float) -> None:
        """Call C{due(owner)} C{delay} seconds from now, instead of at any time set before."""
        when = self.clock.seconds() + delay
        self._deadlines[owner] = when
        heapq.heappush(self._heap, (when, next(self._order), owner))
        if len(self._heap) > 2 * len(self._deadlines) + 64:
            self._rebuild()
        if not self._firing and (self._timer is None or when < self._timer_at):
            self._wait_until(when)

    def cancel(self, owner: Hashable) -> None:
        """Forget C{owner}'s deadline, if it has one."""
        if self._deadlines.pop(owner, None) is not None and not self._deadlines:
            self._heap = []
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _rebuild(self) -> None:
        order = self._order
        self._heap = [(when, next(order), owner) for owner, when in self._deadlines.items()]
        heapq.heapify(self._heap)

    def _wait_until(self, when: float) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer_at = when
        self._timer = self.clock.callLater(max(0.0, when - self.clock.seconds()), self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = self.clock.seconds() + _EPSILON
        deadlines = self._deadlines
        self._firing = True
        try:
            # A due() may set or cancel deadlines (its own or others'), and
            # the heap may be rebuilt under us: read it afresh each time.
            while self._heap and self._heap[0][0] <= now:
                when, _, owner = heapq.heappop(self._heap)
                if deadlines.get(owner) is not when:
                    continue
                del deadlines[owner]
                try:
                    self._due(owner)
                except Exception:
                    # One owner's trouble must not hold back the others' deadlines.
                    log.failure("Deadline of {owner!r} failed", owner=owner)
        finally:
            self._firing = False
        heap = self._heap
        while heap and deadlines.get(heap[0][2]) is not heap[0][0]:
            heapq.heappop(heap)
        if not deadlines:
            self._heap = []
        elif self._timer is None or heap[0][0] < self._timer_at:
            self._wait_until(heap[0][0])
