"""
Request bookkeeping: the requests one connection sent and still waits on.

The middle layer of a connection, between framing and dispatch, as AMP's
box dispatcher keeps its outstanding-request map: ids handed out in order,
each with the Deferred that waits for its reply and a deadline.  One timer
serves every deadline, and when the connection goes every waiter fails at
once, with the same reason.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from picluster.wire.errors import RequestTimeout

# Tolerance for float arithmetic when a deadline lands exactly on time.
_EPSILON = 1e-6

#: A request waiting for its reply: its Deferred, its type, when it times
#: out (in the clock's seconds), and its timeout.
Pending = tuple["defer.Deferred[Any]", str, float, float]


class PendingRequests:
    """
    The requests of one connection that wait for a reply.

    Not a timer per request (C{Deferred.addTimeout}): scheduling and
    cancelling one cost as much as the rest of a request.  One timer fires at
    the earliest deadline of a heap, times out what is due and looks for the
    next; an answered request leaves its deadline to be skipped then, so
    steady traffic moves the timer once a timeout.  The heap is rebuilt from
    what still waits once answered requests are most of it, so it stays
    within twice what waits.

    @ivar waiting: Request id to what waits for its reply.
    @ivar deadlines: A heap of (deadline, request id), answered ones left in it.
    @ivar clock: The L{IReactorTime} of the deadlines.
    """

    def __init__(self, clock: IReactorTime):
        self.clock = clock
        self.waiting: dict[int, Pending] = {}
        self.deadlines: list[tuple[float, int]] = []
        self._ids = itertools.count(1)
        self._timer: Any = None
        self._timer_at = 0.0

    def next_id(self) -> int:
        """The id of the next request: 1, 2, 3, ... on each connection."""
        return next(self._ids)

    def wait(self, request_id: int, message_type: str, timeout: float) -> defer.Deferred[Any]:
        """
        Wait for the reply to the request C{request_id}, sent just now.

        @return: A Deferred that L{settle} fires, a timeout fails with
            L{RequestTimeout} and L{fail_all} fails with its reason;
            cancelling it forgets the request.
        """
        def forget(_: defer.Deferred[Any]) -> None:
            self.waiting.pop(request_id, None)

        waiting: defer.Deferred[Any] = defer.Deferred(forget)
        deadline = self.clock.seconds() + timeout
        self.waiting[request_id] = (waiting, message_type, deadline, timeout)
        heapq.heappush(self.deadlines, (deadline, request_id))
        if len(self.deadlines) > 2 * len(self.waiting) + 64:
            self.deadlines = [(entry[2], rid) for rid, entry in self.waiting.items()]
            heapq.heapify(self.deadlines)
        if self._timer is None or deadline < self._timer_at:
            self._time_out_at(deadline)
        return waiting

    def settle(self, request_id: int) -> Pending | None:
        """Take the request a reply answers; C{None} when none waits (late, or cancelled)."""
        return self.waiting.pop(request_id, None)

    def fail_all(self, failure: Callable[[], Failure]) -> None:
        """
        The connection is gone: fail every waiter with a C{failure()} of its
        own, and time nothing out any more.
        """
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.deadlines = []
        # Swap the map out first: an errback may well try to send again.
        waiting, self.waiting = self.waiting, {}
        for entry in waiting.values():
            entry[0].errback(failure())

    def _time_out_at(self, when: float) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer_at = when
        self._timer = self.clock.callLater(max(0.0, when - self.clock.seconds()), self._time_out)

    def _time_out(self) -> None:
        self._timer = None
        now = self.clock.seconds() + _EPSILON
        # An errback below may send requests (pushing deadlines, perhaps
        # rebuilding the heap) or lose the connection (emptying it): read
        # the heap afresh each time.
        while self.deadlines and self.deadlines[0][0] <= now:
            _, request_id = heapq.heappop(self.deadlines)
            entry = self.waiting.pop(request_id, None)
            if entry is not None:
                entry[0].errback(RequestTimeout(entry[1], entry[3]))
        deadlines, waiting = self.deadlines, self.waiting
        while deadlines and deadlines[0][1] not in waiting:
            heapq.heappop(deadlines)
        if deadlines:
            earliest = deadlines[0][0]
            if self._timer is None or earliest < self._timer_at:
                self._time_out_at(earliest)
