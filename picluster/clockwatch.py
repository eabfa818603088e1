"""
Steps of the system clock, said in the log.

Twisted times every timer by the wall clock (C{time.time}; Twisted issue
#2424), so when the system clock is stepped, timers set before the step come
early or late.  On a Raspberry Pi this is the common case, not the odd one:
a Pi has no battery-backed clock, boots at the time it last shut down
(C{fake-hwclock}), and is stepped forward once NTP answers, by as long as it
was off.  A node running across such a step sees every timer set before it
come at once: keepalive checks find every peer silent and drop it (slaves
rejoin), and task timeouts fail runs that had time left; a step back holds
every timer back by as long.  The log is then full of dropped slaves and
timed-out tasks, with no cause in sight.

A L{ClockWatch} compares, once a second, how far the wall clock moved with
how far the monotonic clock did, and says when they part by more than
L{STEP}, next to what the step caused.  The systemd units start a node only
once the clock is synchronised (C{time-sync.target}), which takes the
boot-time step out of its life (docs/operating.rst).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()

#: Seconds the wall clock may move apart from the monotonic one between two
#: looks before it counts as stepped: NTP slews smaller errors gradually,
#: and a busy reactor delays both looks alike.
STEP = 2.0

#: Seconds between two looks.
INTERVAL = 1.0


class ClockWatch(service.Service):
    """
    Logs a warning whenever the wall clock C{reactor.seconds} is stepped.

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
        now = (self.reactor.seconds(), self.monotonic())
        last, self._last = self._last, now
        if last is None:
            return
        stepped = (now[0] - last[0]) - (now[1] - last[1])
        if abs(stepped) < self.step:
            return
        self.steps += 1
        if stepped > 0:
            log.warn(
                "The system clock was stepped forward by {seconds:,.0f} s (set by NTP or by hand, or"
                " the machine was suspended): timers set before it came early, so slaves may have"
                " been dropped as silent and running tasks timed out before their time. Start"
                " picluster once the clock is synchronised (the systemd units wait for"
                " time-sync.target)",
                seconds=stepped,
            )
        else:
            log.warn(
                "The system clock was stepped back by {back:,.0f} s: timers set before it come that"
                " much late (keepalives, task timeouts). Start picluster once the clock is"
                " synchronised (the systemd units wait for time-sync.target)",
                back=-stepped, seconds=stepped,
            )
