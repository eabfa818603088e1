"""
What each submitter may hold in the task queue, so that one cannot fill it
for everyone.

A submitter is the credential its hello proved (secure mode), or its one
connection (C{--insecure}, where nobody proves anything).  Each has three
bounds: its open tasks, the bytes of arguments those tasks hold in the
master's memory, and a rate of new tasks (a token bucket on the master's
clock).  A submission past any of them is refused whole, before anything is
stored, naming the bound; other submitters do not notice.  The global limit
on open tasks (L{picluster.master.scheduler.DEFAULT_MAX_OPEN_TASKS}) stays
as the last line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from picluster.wire.errors import ServiceError
from picluster.wire.messages import MAX_SPECS_PER_SUBMIT

#: Open (queued or running) tasks one submitter may have.
DEFAULT_QUOTA_OPEN = 10_000
#: Bytes of JSON arguments one submitter's open tasks may hold.
DEFAULT_QUOTA_ARGS = 256 * 1024 * 1024
#: New tasks a second one submitter may submit, on average...
DEFAULT_QUOTA_RATE = 1000.0
#: ...and at once: a whole C{submit} of the most specs it may carry.
DEFAULT_QUOTA_BURST = MAX_SPECS_PER_SUBMIT

#: Idle submitters kept before the idle ones are forgotten.
_KEPT_IDLE = 256


def submitter_key(submitted_by: str | None) -> str | None:
    """
    Whose quota a task counts against, from its C{submitted_by}
    (C{"CREDENTIAL at ADDRESS"}, see L{picluster.master.connection.PeerConnection.submitter}):
    the credential of a proven hello and the host it came from (every user
    of the client token holds the same credential: their machines, at
    least, are told apart); the whole text, so the one connection, of a
    plain (C{"plain ..."}) one.  Tasks stored before C{submitted_by}
    existed count against C{None}.
    """
    if submitted_by is None or submitted_by.startswith("plain "):
        return submitted_by
    credential, _, address = submitted_by.partition(" at ")
    host = address.rpartition(":")[0] or address
    return f"{credential} at {host}"


@dataclass
class Share:
    """What one submitter holds: its open tasks, their arguments, its rate bucket."""

    open: int = 0
    args: int = 0
    tokens: float = 0.0
    refilled_at: float = 0.0


@dataclass(frozen=True)
class Charge:
    """Tasks and argument bytes charged to a submitter, to give back as tasks end."""

    key: Any
    tasks: int
    args: int


class Quotas:
    """Each submitter's share of the queue, checked and charged at each submit."""

    def __init__(self, clock: Any, *, max_open: int = DEFAULT_QUOTA_OPEN,
                 max_args: int = DEFAULT_QUOTA_ARGS, rate: float = DEFAULT_QUOTA_RATE,
                 burst: int = DEFAULT_QUOTA_BURST):
        self.clock = clock
        self.max_open = max_open
        self.max_args = max_args
        self.rate = rate
        self.burst = burst
        self.shares: dict[Any, Share] = {}
        self._swept_at = _KEPT_IDLE

    def charge(self, key: Any, tasks: int, args: int) -> Charge:
        """
        Take C{tasks} new tasks holding C{args} bytes from C{key}'s quotas,
        or take nothing and refuse.

        @raise ServiceError: naming the quota the submission would go over.
        """
        share = self._share(key)
        if share.open + tasks > self.max_open:
            raise ServiceError(
                f"over your quota of open tasks: {share.open} open, {tasks} more would pass"
                f" the {self.max_open} a submitter may have (--quota-open); wait for some to end"
            )
        if share.args + args > self.max_args:
            raise ServiceError(
                f"over your quota of argument bytes: your open tasks hold {share.args} bytes,"
                f" {args} more would pass the {self.max_args} a submitter may hold (--quota-args)"
            )
        if tasks > self.burst:
            raise ServiceError(
                f"over your quota of submissions: {tasks} tasks at once, more than the burst of"
                f" {self.burst} a submitter may send (--quota-burst); submit them in parts"
            )
        if tasks > share.tokens:
            raise ServiceError(
                f"over your quota of submissions: {tasks} tasks now, but {int(share.tokens)} of a"
                f" burst of {self.burst} are left, refilled at {self.rate:g} tasks a second"
                " (--quota-rate, --quota-burst); submit more slowly"
            )
        share.tokens -= tasks
        share.open += tasks
        share.args += args
        return Charge(key, tasks, args)

    def give_back(self, charge: Charge) -> None:
        """Tasks of C{charge} have ended (or were never stored): free their share."""
        share = self.shares.get(charge.key)
        if share is None:
            return
        share.open = max(0, share.open - charge.tasks)
        share.args = max(0, share.args - charge.args)

    def hold(self, key: Any, args: int) -> Charge:
        """Count a task found open at start against C{key}, whatever the quotas say."""
        share = self._share(key)
        share.open += 1
        share.args += args
        return Charge(key, 1, args)

    def _share(self, key: Any) -> Share:
        now = self.clock.seconds()
        share = self.shares.get(key)
        if share is None:
            if len(self.shares) >= self._swept_at:
                self._forget_idle(now)
            share = self.shares[key] = Share(tokens=float(self.burst), refilled_at=now)
            return share
        share.tokens = min(float(self.burst), share.tokens + (now - share.refilled_at) * self.rate)
        share.refilled_at = now
        return share

    def _forget_idle(self, now: float) -> None:
        """Drop submitters that hold nothing and whose bucket is full again: they start afresh alike."""
        for key, share in list(self.shares.items()):
            full = share.tokens + (now - share.refilled_at) * self.rate >= self.burst
            if share.open == 0 and share.args == 0 and full:
                del self.shares[key]
        self._swept_at = max(_KEPT_IDLE, 2 * len(self.shares))
