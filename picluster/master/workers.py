"""
What the scheduler knows of a task and of a slave that runs tasks.

L{OpenTask} wraps the record of a queued or running task; L{Worker} is a
slave connection that said C{worker}: what it offers, its slots, what it
runs now and what it holds ready to run next.  Both live only in the
master's memory; the record is what goes to disk.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from picluster.master.taskspec import Requirements
from picluster.wire.messages import ComputerDetails, Run

log = Logger()

#: The requirements of most tasks (none), parsed once for all of them.
_NO_REQUIREMENTS = Requirements()


class OpenTask:
    """
    A task that is queued or running.

    @ivar record: The task's row, kept current; what is saved and shown.
    @ivar worker: The L{Worker} running it now, if any.
    @ivar queued: Whether it waits in a queue (stale queue entries skip it).
    @ivar last_run: (slave uuid, attempt) of the run last lost, so that the
        slave may claim it back when it rejoins.
    @ivar deadline: The call that fails it if no result comes in time.
    """

    def __init__(self, record: dict[str, Any]):
        self.record = record
        raw = record["requirements"]
        self.requirements = Requirements.parse(raw) if raw else _NO_REQUIREMENTS
        self.kind = (record["name"], self.requirements)
        self.worker: Worker | None = None
        self.queued = False
        self.last_run: tuple[str | None, int] | None = None
        #: Attempt to the uuid of the slave it was handed to: only that slave
        #: may report that run's result.
        self.ran_by: dict[int, str | None] = {}
        self.deadline: Any = None
        #: What it counts against its submitter's quotas, given back when it ends.
        self.charge: Any = None

    @property
    def id(self) -> int:
        return self.record["id"]

    @property
    def name(self) -> str:
        return self.record["name"]

    @property
    def attempts(self) -> int:
        return self.record["attempts"]

    @property
    def retries(self) -> int:
        return self.record["retries"]

    @property
    def timeout(self) -> float | None:
        return self.record["timeout"]

    @property
    def unstarted(self) -> int:
        """
        Handouts taken back before they started (held ready by a slave that
        was lost or busy, or moved to an idle slave): counted in its
        attempts, since each handout has its own attempt number, but not
        against its retries.  Kept in its row, so that a master restarted
        counts its retries as the one before did.
        """
        return self.record.get("unstarted") or 0

    @unstarted.setter
    def unstarted(self, count: int) -> None:
        self.record["unstarted"] = count

    @property
    def runs(self) -> int:
        """The runs it has started: its attempts less the handouts that never started."""
        return self.record["attempts"] - self.unstarted

    def cancel_deadline(self) -> None:
        if self.deadline is not None and self.deadline.active():
            self.deadline.cancel()
        self.deadline = None


class Worker:
    """
    A slave connection that runs tasks.

    A slave that offers C{prefetch} holds that many runs ready beyond its
    slots and starts the oldest whenever a run ends, before it reports that
    run's result (docs/protocol.rst, "Tasks"): so a master that reads a result
    of a running run knows, without being told, which ready run took the
    slot.  L{take} and L{drop} keep the same books here.

    @ivar connection: The master's L{PeerConnection} for it.
    @ivar running: Task id to the L{OpenTask}s it runs now.
    @ivar ready: Task id to the L{OpenTask}s handed to it beyond its slots,
        in the order it will start them.
    @ivar last_assigned: When it last got a task (a counter), so that equally
        loaded slaves take turns.
    """

    def __init__(self, connection: Any, offers: frozenset[str], refused: dict[str, str],
                 slots: int, tags: frozenset[str], prefetch: int = 0):
        self.connection = connection
        self.offers = offers
        self.refused = refused
        self.slots = slots
        self.prefetch = prefetch
        self.tags = tags
        self.running: dict[int, OpenTask] = {}
        self.ready: dict[int, OpenTask] = {}
        self.last_assigned = 0
        #: Set when it refused a run for want of a slot: it gets nothing
        #: more until it reports a result.
        self.full = False

    @property
    def uuid(self) -> str:
        return self.connection.uuid

    @property
    def hostname(self) -> str | None:
        return self.connection.hostname

    @property
    def computer_details(self) -> ComputerDetails | None:
        return self.connection.computer_details

    @property
    def free_slots(self) -> int:
        return 0 if self.full else self.slots - len(self.running)

    @property
    def room(self) -> int:
        """How many more runs it may be handed now: its free slots, then its ready places."""
        if self.full:
            return 0
        return self.slots + self.prefetch - len(self.running) - len(self.ready)

    @property
    def load(self) -> float:
        """What it holds for each slot: a slave with a free slot is below 1."""
        return (len(self.running) + len(self.ready)) / self.slots

    def take(self, task: OpenTask) -> bool:
        """Count a run handed to it; true if it starts at once, false if it waits ready."""
        if len(self.running) < self.slots:
            self.running[task.id] = task
            return True
        self.ready[task.id] = task
        return False

    def drop(self, task: OpenTask) -> OpenTask | None:
        """
        Forget a run, which has ended or is taken back.  A running one frees
        its slot, which the oldest ready run takes, as the slave does: that
        run is returned, to be counted started.
        """
        if self.ready.pop(task.id, None) is not None:
            return None
        if self.running.pop(task.id, None) is None or not self.ready:
            return None
        next_id = next(iter(self.ready))
        started = self.running[next_id] = self.ready.pop(next_id)
        return started

    @property
    def closing(self) -> bool:
        return self.connection.closing

    def may_run(self, task: OpenTask) -> bool:
        return (task.name in self.offers and task.name not in self.refused
                and task.requirements.unmet(self.computer_details, self.tags) is None)

    def describe_unmet(self, task: OpenTask) -> str | None:
        return task.requirements.unmet(self.computer_details, self.tags)

    def cancel(self, task_id: int, attempt: int) -> None:
        """Tell the slave to stop a run whose result nobody needs any more."""
        if self.closing:
            return
        stopping = self.connection.request("cancel_task", Run(task_id, attempt))
        stopping.addErrback(
            lambda failure: log.info("Could not cancel task {id} on {uuid}: {problem}",
                                     id=task_id, uuid=self.uuid, problem=failure.getErrorMessage())
        )
