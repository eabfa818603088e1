"""
The master's keepalive pings: one timer for every connection.

A master may hold thousands of idle slaves, so it pings them all from one
timer rather than a timer each (L{Keepalives}); a slave's own pings are
L{picluster.wire.protocol.PiClusterProtocol.start_keepalive}'s.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from picluster.wire.protocol import PiClusterProtocol

log = Logger()


class Keepalives:
    """
    Pings each of a master's connections every C{interval} seconds, from
    one timer.

    A L{LoopingCall} per connection, as
    L{PiClusterProtocol.start_keepalive} gives a slave, costs each idle
    connection a timer, a Deferred and their bookkeeping (about 1 KB), and
    puts an entry per connection in the reactor's heap of timers, sorted on
    every ping; a master of thousands of idle slaves would pay that
    thousands of times.  Here the connections wait in L{SLOTS} buckets and
    each tick of one timer (C{interval / SLOTS} seconds) pings one bucket:
    a connection is pinged one C{interval} after it joined (less at most a
    tick), and every C{interval} after that.  The timer runs only while
    there are connections to ping.

    A slave pings the master every keepalive too, unless it heard from it
    meanwhile, and anything it sends is a sign of life: a connection heard
    from within the last C{interval} (L{heard_within}) is not pinged, but for
    one round in L{RTT_EVERY}, which keeps its round trip on the dashboard
    current (and spares the slave its next ping).  A quiet link settles on
    one exchange a keepalive, where each side's made two; and a peer that
    never pings is still pinged often enough never to go silent for
    C{dead_after}.
    """

    #: Ticks per interval: a ping comes at most C{interval / SLOTS} early.
    SLOTS = 50

    #: Every this many rounds, every connection is pinged, heard from or not.
    RTT_EVERY = 6

    def __init__(self, clock: Any, interval: float, dead_after: float | None = None):
        self.clock = clock
        self.interval = interval
        tick = interval / self.SLOTS
        # Skipped at a check, a peer that never pings is pinged at the next
        # one, an interval later: the gap between two things heard from it
        # is under heard_within + interval + its answer's time (half an
        # interval, amply), which must stay under dead_after.
        room = (3 * interval if dead_after is None else dead_after) - 1.5 * interval
        self.heard_within = max(0.0, min(interval - 1.5 * tick, room))
        self._rounds = 0
        self._buckets: list[dict[PiClusterProtocol, None]] = [{} for _ in range(self.SLOTS)]
        self._bucket_of: dict[PiClusterProtocol, int] = {}
        # The bucket the next tick pings.
        self._next = 0
        self._loop: LoopingCall | None = None

    def __len__(self) -> int:
        return len(self._bucket_of)

    def add(self, protocol: PiClusterProtocol) -> None:
        """Ping C{protocol} every C{interval}, first about one C{interval} from now."""
        if protocol in self._bucket_of:
            return
        if self._loop is None:
            self._next = 0
            self._loop = LoopingCall.withCount(self._tick)
            self._loop.clock = self.clock
            self._loop.start(self.interval / self.SLOTS, now=False).addErrback(
                lambda failure: log.failure("Keepalive pings stopped", failure)
            )
        # The bucket just pinged: its next turn is a whole interval away.
        at = (self._next - 1) % self.SLOTS
        self._buckets[at][protocol] = None
        self._bucket_of[protocol] = at

    def discard(self, protocol: PiClusterProtocol) -> None:
        """Ping C{protocol} no more."""
        at = self._bucket_of.pop(protocol, None)
        if at is None:
            return
        del self._buckets[at][protocol]
        if not self._bucket_of and self._loop is not None:
            if self._loop.running:
                self._loop.stop()
            self._loop = None

    def _tick(self, ticks: int) -> None:
        # A late reactor makes one call of several ticks: ping every bucket
        # whose turn has come (each once at most).
        now = self.clock.seconds()
        for _ in range(min(ticks, self.SLOTS)):
            bucket = self._buckets[self._next]
            self._next = (self._next + 1) % self.SLOTS
            if not self._next:
                self._rounds += 1
            # A connection heard from since this is alive, and needs no ping.
            heard = now - self.heard_within if self._rounds % self.RTT_EVERY else now + 1.0
            for protocol in list(bucket):
                if protocol.closing or protocol.last_received > heard:
                    continue
                try:
                    protocol.send("ping", now)
                except Exception:
                    # One connection's trouble must not stop everyone's pings.
                    log.failure("Could not ping {peer}", peer=protocol.handler.describe_peer())
        if ticks > self.SLOTS:
            self._next = (self._next + ticks - self.SLOTS) % self.SLOTS
