"""
The runs a slave holds ready beyond its slots (its prefetch).

A slave handed only as many runs as it has slots leaves each freed slot idle
for a round trip to the master, which for short tasks costs more than the
tasks.  So, as Celery's prefetch and Dask's worker saturation do, the master
may hand a slave a few runs more: L{ReadyRuns} keeps them, in the order they
came, and the L{TaskRunner<picluster.slave.runner.TaskRunner>} starts the
oldest whenever a slot frees.  The master counts on that order: when it reads
the result of a running run, it counts the oldest ready run as started.

A ready run holds no slot, thread or process, only its arguments: up to a
frame each, chosen by the master and whoever submitted the task.  So the
runs held are bounded in bytes as well as in number (L{MAX_READY_BYTES}): a
master that hands a slave more is refused C{no free slot}, as when the runs
are too many, and queues the run again, spending none of its retries.

The arguments wait as their JSON, decoded again when the run starts: as
Python objects the same arguments take up to a dozen times the room (a list
of short strings: some 60 bytes an item against 5), so the bytes counted
are the bytes held.
"""

from __future__ import annotations

from collections import OrderedDict

import msgspec

from picluster import wire
from picluster.wire.messages import Run, RunTask

#: Bytes of arguments (as JSON) the ready runs may hold together.  One run is
#: held whatever its size (a frame at most), so that a task with arguments
#: past this bound still runs, one at a time.  A Pi 3 has 1 GiB of memory;
#: 1,024 ready runs (C{MAX_PREFETCH}) of a 1 MiB frame each would take it all.
MAX_READY_BYTES = 16 * 1024 * 1024


def packed(run: RunTask) -> tuple[RunTask, bytes]:
    """
    C{run} as it waits among the ready runs: without its arguments, and
    those as JSON (empty for none), whose size is what they weigh against
    L{MAX_READY_BYTES}.
    """
    if not run.args:
        return run, b""
    return msgspec.structs.replace(run, args=None), wire.encode(run.args)


def unpacked(run: RunTask, arguments: bytes) -> RunTask:
    """A run that waited, with its arguments back as L{packed} took them."""
    if not arguments:
        return run
    return msgspec.structs.replace(run, args=msgspec.json.decode(arguments))


class ReadyRuns:
    """
    At most C{room} runs waiting for a slot, oldest first, by task id, and
    at most C{max_bytes} of their arguments.

    @ivar room: How many runs may wait: the slave's C{--prefetch}, which it
        tells the master in its offer.  The master chooses what to hand out;
        this is the bound on what it may make the slave hold.
    @ivar max_bytes: How many bytes of arguments (as JSON) they may hold
        together, beyond the first run's.
    @ivar bytes: How many they hold: the runs' arguments wait as JSON
        (L{packed}), so these are the bytes held.
    """

    def __init__(self, room: int, max_bytes: int = MAX_READY_BYTES):
        if room < 0:
            raise ValueError("prefetch must not be negative")
        self.room = room
        self.max_bytes = max_bytes
        self.bytes = 0
        # popitem(last=False) takes the oldest at once, however many came and went.
        self._runs: OrderedDict[int, tuple[RunTask, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._runs)

    @property
    def full(self) -> bool:
        """Whether another run would be one too many."""
        return len(self._runs) >= self.room

    def fits(self, size: int) -> bool:
        """Whether a run of C{size} bytes of arguments may wait here too."""
        return not self.full and (not self._runs or self.bytes + size <= self.max_bytes)

    def get(self, task_id: int) -> RunTask | None:
        """The run of this task waiting here, if any."""
        held = self._runs.get(task_id)
        return held[0] if held is not None else None

    def add(self, run: RunTask, arguments: bytes) -> None:
        """
        Keep a run, as L{packed} gave it (C{run} and its C{arguments} as
        JSON), until a slot frees, after those already waiting.
        """
        if not self.fits(len(arguments)) or run.id in self._runs:
            raise ValueError(f"no room for task {run.id} among the ready runs")
        self._runs[run.id] = (run, arguments)
        self.bytes += len(arguments)

    def pop_oldest(self) -> RunTask:
        """Take the run that has waited longest, its arguments back, to start it."""
        run, arguments = self._runs.popitem(last=False)[1]
        self.bytes -= len(arguments)
        return unpacked(run, arguments)

    def drop(self, task_id: int, attempt: int) -> bool:
        """Forget a run (cancelled: it held no slot, so nothing else starts); whether it was here."""
        held = self._runs.get(task_id)
        if held is None or held[0].attempt != attempt:
            return False
        del self._runs[task_id]
        self.bytes -= len(held[1])
        return True

    def clear(self) -> None:
        """Forget every run, as a stopping slave does."""
        self._runs.clear()
        self.bytes = 0

    def holding(self) -> list[Run]:
        """The runs waiting, in the order they will start."""
        return [Run(run.id, run.attempt) for run, _ in self._runs.values()]
