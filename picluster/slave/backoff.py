"""
How long a slave waits before it dials its master again.

A master restart is seen by every slave at the same instant, and the
master then takes them in only as fast as it can do their handshakes,
turning the rest away at its caps (L{picluster.master.admission}).  With
Twisted's policy (each failed attempt doubles the delay, a little jitter
around it) a herd of thousands came back in waves a doubling apart, the
master idle between them, and the last slaves waited a minute for a master
that had room after twenty seconds.  So the wait depends on how the last
attempt ended:

  - B{after a session} (the master had welcomed us): a first retry at a
    random moment within C{initialDelay}, so that the herd's first wave is
    spread instead of one instant;
  - B{turned away} (the connection closed before a welcome, without a word
    from the master: it is up, and at its cap on handshakes): "decorrelated
    jitter" (AWS, "Exponential Backoff And Jitter"), each wait drawn between
    C{initialDelay} and three times the last, but never above
    C{busyDelay}: the slaves that wait keep the master busy without waves,
    and one that was turned away five times is not made to wait a minute
    for a master that will soon have room;
  - B{failed} (connection refused or timed out: the master is down or
    unreachable; or it refused our token, or its certificate): the same
    jitter up to C{maxDelay}, so that a master down for an hour costs each
    slave a line in its log a minute, not every few seconds.

A slave does not know how many others wait with it: the master's turning
it away is the sign of a crowd, and the jitter spreads the crowd over what
the master takes in.  Being turned away is cheap for a master (an accept
and a close), so even 20,000 slaves each retrying within C{busyDelay} cost
it little beside the handshakes it does (the scale benchmark's rejoin).
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.protocol import ReconnectingClientFactory

__all__ = ["Backoff", "BUSY_DELAY"]

#: Longest wait, in seconds, before trying again a master that turned us away.
BUSY_DELAY = 8.0

#: How an attempt ended: its session was welcomed; the master closed it
#: before a welcome without a word; it failed (no connection, or a refusal).
WELCOMED, TURNED_AWAY, FAILED = "welcomed", "turned away", "failed"


class Backoff(ReconnectingClientFactory):
    """
    A L{ReconnectingClientFactory} whose delays follow how the last attempt
    ended (see the module's docstring): call L{joined} once welcomed (it
    resets the delay, as C{resetDelay} does) and L{rebuffed} when the
    master refuses us; a connection lost with neither was turned away.

    @ivar random: Where the jitter is drawn from; tests give their own.
    """

    #: Seconds: the window of the first retry after a session; the shortest wait after an attempt.
    initialDelay = 1.0
    # (Twisted's default, 3600, has mypy take it for an int; it is seconds, any number.)
    #: Longest wait between attempts that failed.
    maxDelay = 60.0  # type: ignore[assignment]
    #: Longest wait between attempts that were turned away (at most C{maxDelay}).
    busyDelay = BUSY_DELAY
    #: Each wait is drawn up to this many times the last.
    growth = 3.0
    #: What L{ReconnectingClientFactory.retry} would multiply and blur the
    #: wait by: nothing, since L{next_delay} has drawn it.
    factor = 1.0
    jitter = 0.0
    random: Any = random

    #: How the current attempt has ended so far: C{None} until welcomed or rebuffed.
    _outcome: str | None = None

    def joined(self) -> None:
        """The master welcomed us: the next loss is a lost session."""
        self._outcome = WELCOMED
        self.resetDelay()

    def rebuffed(self) -> None:
        """The master refused us, or we refused it: back off as after a failure."""
        self._outcome = FAILED

    def startedConnecting(self, connector: Any) -> None:
        self._outcome = None

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        self._outcome = FAILED
        super().clientConnectionFailed(connector, reason)

    def clientConnectionLost(self, connector: Any, reason: Any) -> None:
        if self._outcome is None:
            self._outcome = TURNED_AWAY
        super().clientConnectionLost(connector, reason)

    def next_delay(self) -> float:
        """The wait before the next attempt, after one that ended as it did."""
        outcome, self._outcome = self._outcome, None
        if outcome == WELCOMED:
            self.delay = self.initialDelay
            return self.random.uniform(0.0, self.initialDelay)
        ceiling = self.maxDelay
        if outcome == TURNED_AWAY:
            ceiling = max(self.initialDelay, min(self.busyDelay, ceiling))
        self.delay = min(ceiling, self.random.uniform(self.initialDelay, self.delay * self.growth))
        return self.delay

    def retry(self, connector: Any = None) -> None:
        """
        L{ReconnectingClientFactory.retry}, waiting L{next_delay} (RCF's own
        draws its jitter around a delay it then multiplies; here C{factor}
        is 1 and C{jitter} 0, so it waits what is drawn).  C{delay} goes on
        holding the last draw's bound, which the next draw grows from.
        """
        if not self.continueTrying:
            return
        wait = self.next_delay()
        bound, self.delay = self.delay, wait
        try:
            super().retry(connector)
        finally:
            self.delay = bound
