"""
How long finished tasks are kept in the task database.

Every task ever submitted would otherwise stay on the master's SD card for
good.  A finished task is pruned once it is older than C{keep_days} (by
when it finished), or once C{keep} newer tasks have finished.  Pruning
runs every L{PRUNE_INTERVAL} seconds on the master's clock, one small
batch a transaction, so that submissions and saves wait for at most one
batch; the database gives the freed pages back to the file system as it
goes (L{picluster.master.store}, C{auto_vacuum=INCREMENTAL}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from picluster.master.store import TaskStore
from picluster.timebase import wall_time

log = Logger()

#: Days a finished task is kept.
DEFAULT_KEEP_DAYS = 7.0
#: Finished tasks kept at most: the newest.
DEFAULT_KEEP = 100_000
#: Seconds between two rounds of pruning.
PRUNE_INTERVAL = 60.0
#: Tasks deleted in one transaction.
PRUNE_BATCH = 500


class Retention:
    """
    Prunes finished tasks from a store, now and then, a batch at a time.

    @ivar pruned: Called with the number of tasks pruned in each final state,
        after each batch (the scheduler keeps its counts right with it).
    """

    def __init__(self, clock: Any, *, keep_days: float = DEFAULT_KEEP_DAYS, keep: int = DEFAULT_KEEP,
                 interval: float = PRUNE_INTERVAL, batch: int = PRUNE_BATCH,
                 pruned: Callable[[dict[str, int]], None] = lambda counts: None):
        self.clock = clock
        self.keep_days = keep_days
        self.keep = keep
        self.interval = interval
        self.batch = batch
        self.pruned = pruned
        self.store: TaskStore | None = None
        self._loop: LoopingCall | None = None
        self._next_batch: Any = None
        self._pruning = False
        #: Tasks pruned in the current round, for its one log line.
        self._round = 0

    def start(self, store: TaskStore) -> None:
        """Prune C{store} now, and every C{interval} seconds."""
        self.store = store
        self._loop = LoopingCall(self.prune)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True).addErrback(
            lambda failure: log.failure("Pruning finished tasks stopped", failure))

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._next_batch is not None and self._next_batch.active():
            self._next_batch.cancel()
        self._next_batch = None

    def prune(self) -> None:
        """One round: batch after batch until nothing is left to prune."""
        if self._pruning or self.store is None:
            return
        self._pruning = True
        self._round = 0
        self._prune_batch()

    def _prune_batch(self) -> None:
        self._next_batch = None
        assert self.store is not None
        before = wall_time(self.clock) - self.keep_days * 86400.0
        pruning = self.store.prune(before, self.keep, self.batch)
        pruning.addCallbacks(self._batch_pruned, self._batch_failed)
        pruning.addErrback(lambda failure: log.failure("Pruning finished tasks broke", failure))

    def _batch_pruned(self, counts: dict[str, int]) -> None:
        count = sum(counts.values())
        self._round += count
        if count:
            self.pruned(counts)
        if count >= self.batch and self._loop is not None:
            # More to do: let whatever waits for the database go first.
            self._next_batch = self.clock.callLater(0, self._prune_batch)
            return
        self._pruning = False
        if self._round:
            log.info("Pruned {count} finished tasks (kept: the newest {keep}, none older than"
                     " {days:g} days)", count=self._round, keep=self.keep, days=self.keep_days)

    def _batch_failed(self, failure: Failure) -> None:
        self._pruning = False
        log.warn("Cannot prune finished tasks now: {problem}; trying again in {interval:g} s",
                 problem=failure.getErrorMessage(), interval=self.interval)
