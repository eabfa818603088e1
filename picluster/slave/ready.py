"""
The runs a slave holds ready beyond its slots (its prefetch).

A slave handed only as many runs as it has slots leaves each freed slot idle
for a round trip to the master, which for short tasks costs more than the
tasks.  So, as Celery's prefetch and Dask's worker saturation do, the master
may hand a slave a few runs more: L{ReadyRuns} keeps them, in the order they
came, and the L{TaskRunner<picluster.slave.runner.TaskRunner>} starts the
oldest whenever a slot frees.  The master counts on that order: when it reads
the result of a running run, it counts the oldest ready run as started.
"""

from __future__ import annotations

from collections import OrderedDict

from picluster.wire.messages import Run, RunTask


class ReadyRuns:
    """
    At most C{room} runs waiting for a slot, oldest first, by task id.

    @ivar room: How many runs may wait: the slave's C{--prefetch}, which it
        tells the master in its offer.  The master chooses what to hand out;
        this is the bound on what it may make the slave hold.
    """

    def __init__(self, room: int):
        if room < 0:
            raise ValueError("prefetch must not be negative")
        self.room = room
        # popitem(last=False) takes the oldest at once, however many came and went.
        self._runs: OrderedDict[int, RunTask] = OrderedDict()

    def __len__(self) -> int:
        return len(self._runs)

    @property
    def full(self) -> bool:
        """Whether another run would be one too many."""
        return len(self._runs) >= self.room

    def get(self, task_id: int) -> RunTask | None:
        """The run of this task waiting here, if any."""
        return self._runs.get(task_id)

    def add(self, run: RunTask) -> None:
        """Keep a run until a slot frees, after those already waiting."""
        if self.full or run.id in self._runs:
            raise ValueError(f"no room for task {run.id} among the ready runs")
        self._runs[run.id] = run

    def pop_oldest(self) -> RunTask:
        """Take the run that has waited longest, to start it."""
        return self._runs.popitem(last=False)[1]

    def drop(self, task_id: int, attempt: int) -> bool:
        """Forget a run (cancelled: it held no slot, so nothing else starts); whether it was here."""
        run = self._runs.get(task_id)
        if run is None or run.attempt != attempt:
            return False
        del self._runs[task_id]
        return True

    def clear(self) -> None:
        """Forget every run, as a stopping slave does."""
        self._runs.clear()

    def holding(self) -> list[Run]:
        """The runs waiting, in the order they will start."""
        return [Run(run.id, run.attempt) for run in self._runs.values()]
