"""
Two clocks: a monotonic one for timers, the wall clock for timestamps.

Twisted times every timer by the wall clock (C{reactor.seconds} is
C{time.time}; Twisted issue #2424), so a step of the system clock makes
timers set before it come early or late.  On a Raspberry Pi a step is the
common case: a Pi has no battery-backed clock, boots at the time it last
shut down, and is stepped forward once NTP answers, by as long as it was
off.  A master running across such a step would find every slave silent at
once and drop it, and fail task runs as timed out that had time left.

So a node's reactor keeps its timers on the monotonic clock
(L{monotonic_timers}, installed by the twistd plugins and the C{picluster}
command): every C{callLater}, C{LoopingCall}, deadline and interval
measured from C{reactor.seconds()} is immune to steps.  What is shown or stored as a time of day (when a task
was submitted, when a slave's vitals came, when it left) is read from the
wall clock instead (L{wall_time}), and follows a step as a person would
expect.  The reactor's monotonic seconds start out equal to the wall
clock's, so they only part when the clock is stepped.

Code given a test clock (C{twisted.internet.task.Clock}) gets that clock's
time for both, as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["has_monotonic_timers", "monotonic_timers", "wall_time"]


def monotonic_timers(reactor: Any, *, monotonic: Callable[[], float] = time.monotonic,
                     wall: Callable[[], float] = time.time) -> None:
    """
    Make C{reactor} time its timers by C{monotonic}, and L{wall_time} of it
    read C{wall}.

    Its C{seconds()} go on from the wall clock's reading now, so timers set
    before (none, when the twistd plugins call this) keep their places; from
    then on they move with C{monotonic} alone.  Calling it again changes
    nothing.
    """
    if has_monotonic_timers(reactor):
        return
    offset = wall() - monotonic()

    def seconds() -> float:
        return monotonic() + offset

    # The wall clock goes with the seconds it stands beside.
    seconds.wall = wall  # type: ignore[attr-defined]
    # The reactor reads self.seconds() for every callLater, every timeout of
    # its poll and every run of its due calls: an attribute of the instance
    # is all it takes.
    reactor.seconds = seconds


def has_monotonic_timers(reactor: Any) -> bool:
    """Whether L{monotonic_timers} was given C{reactor}."""
    return hasattr(reactor.seconds, "wall")


def wall_time(clock: Any) -> float:
    """
    The time of day, for what is shown or stored as one: the wall clock of a
    reactor made L{monotonic_timers}, or C{clock.seconds()} of any other
    (a test's C{Clock}, a reactor left as Twisted made it).
    """
    seconds = clock.seconds
    wall = getattr(seconds, "wall", None)
    return wall() if wall is not None else seconds()
