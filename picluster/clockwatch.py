"""
Steps of the system clock, said in the log.

A Raspberry Pi has no battery-backed clock: it boots at the time it last
shut down (C{fake-hwclock}) and is stepped forward once NTP answers, by as
long as it was off.  A node's timers keep to the monotonic clock
(L{picluster.timebase}), so a step moves none of them; but every time of
day a node shows or stores from then on (when a task was submitted, when a
slave was last seen, the points sent to InfluxDB) jumps with it, and an
operator reading the dashboard or the task list deserves to know why.

A L{ClockWatch} compares, once a second, how far the wall clock moved with
how far the monotonic clock did, and says when they part by more than
L{STEP}.  The systemd units start a node only once the clock is
synchronised (C{time-sync.target}), which takes the boot-time step out of
its life (docs/operating.rst).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from picluster.timebase import wall_time

log = Logger()

#: Seconds the wall clock may move apart from the monotonic one between two
#: looks before it counts as stepped: NTP slews smaller errors gradually,
#: and a busy reactor delays both looks alike.
STEP = 2.0

#: Seconds between two looks.
INTERVAL = 1.0

#: What the warning of a step says, whichever way the clock went.
_WHAT_A_STEP_DOES = (
    "Timers keep to the monotonic clock and are not moved; times of day shown and stored from"
    " now on (tasks, slaves last seen, InfluxDB points) follow the new clock. Start picluster"
    " once the clock is synchronised (the systemd units wait for time-sync.target)."
)


class ClockWatch(service.Service):
    """
    Logs a warning whenever the wall clock (L{wall_time} of C{reactor}) is stepped.

    @ivar steps: How many steps were seen, for tests and the curious.
    """

    def __init__(self, reactor: Any, monotonic: Callable[[], float] = time.monotonic,
                 interval: float = INTERVAL, step: float = STEP):
        self.reactor = reactor
        self.monotonic = monotonic
        self.interval = interval
        self.step = step
        self.steps = 0
        self._last: tuple[float, float] | None = None
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        self._last = None
        self._loop = LoopingCall(self.look)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=True).addErrback(
            lambda failure: log.failure("The clock watch stopped", failure)
        )

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def look(self) -> None:
        """Compare both clocks' moves since the last look; warn of a step."""
        now = (wall_time(self.reactor), self.monotonic())
        last, self._last = self._last, now
        if last is None:
            return
        stepped = (now[0] - last[0]) - (now[1] - last[1])
        if abs(stepped) < self.step:
            return
        self.steps += 1
        if stepped > 0:
            log.warn("The system clock was stepped forward by {seconds:,.0f} s (set by NTP or by"
                     " hand, or the machine was suspended). " + _WHAT_A_STEP_DOES, seconds=stepped)
        else:
            log.warn("The system clock was stepped back by {back:,.0f} s. " + _WHAT_A_STEP_DOES
                     + " Times of day may now come before earlier ones.", back=-stepped, seconds=stepped)
