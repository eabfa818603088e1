"""
The handing out of work: which slave gets which queued task, and which run
held ready moves to an idle slot.

A slave's free slots are filled first, anywhere; its ready places (its
C{prefetch}: runs handed to it beyond its slots, to start there as a slot
frees, with no round trip to the master) only once no free slot can take
the task; and a slot left idle while nothing queued suits it takes a run
another slave holds ready.  A ready run counts as started (its row says
C{running}, its deadline runs) once the master reads the result that freed
its slot.

The L{Dispatcher} keeps the books of who holds which run; the
L{picluster.master.scheduler.Scheduler} that owns it keeps the books of the
tasks, the store and the outcomes, and is told through the calls it hands
in when a run starts, when a slave refuses one, and when a queued task no
slave may run is to be given up on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from picluster.logbudget import LogBudget
from picluster.master.taskqueue import Kind, TaskQueue
from picluster.master.workers import OpenTask, Worker
from picluster.wire import messages
from picluster.wire.errors import DisconnectionException, RemoteError
from picluster.wire.messages import BUSY_REFUSALS

log = Logger()

_NOT_TAKEN = "Slave {uuid} ({hostname}) did not take task {id}: {problem}"


class Dispatcher:
    """
    Hands the queued tasks to the slaves' room, once for everything that
    changed in a reactor turn, and keeps each slave's books of its runs.

    @ivar serving: Whether work is handed out at all: from when the task
        queue has loaded until the dispatcher is stopped.
    @ivar ready_runs: Runs held ready on all slaves, so that a freed slot
        looks for one to take only when there is one.
    """

    def __init__(
        self, clock: Any, workers: dict[Any, Worker], queue: TaskQueue, *,
        started: Callable[[OpenTask, Worker, bool], None],
        lost: Callable[[OpenTask, str, bool], None],
        give_up: Callable[[OpenTask], bool],
    ):
        self.clock = clock
        self.workers = workers
        self.queue = queue
        #: Called when a run takes a slot (reclaimed or not): it is running now.
        self.started = started
        #: Called with a run a slave did not take, why, and whether the run is spent.
        self.lost = lost
        #: Called with a queued head no slave with room may run (see L{TaskQueue}).
        self.give_up = give_up
        self.serving = False
        self.ready_runs = 0
        #: Lines about handouts that did not go as planned: runs moved to
        #: idle slaves (each explains a task handed out twice) and runs a
        #: busy slave refused (one a result at most, but a slave whose ready
        #: runs are full of large arguments refuses one for each), on a
        #: budget of their own, not lost among a busy queue's results.
        self.handout_log = LogBudget(
            log, clock, "Left out of the log in the last {seconds:g} s: {kinds}", lines=100,
        )
        self._dispatch_call: Any = None
        self._assignments = 0

    def stop(self) -> None:
        """Hand out nothing more, and say what the log's budget left out."""
        self.serving = False
        if self._dispatch_call is not None and self._dispatch_call.active():
            self._dispatch_call.cancel()
        self.handout_log.flush()

    def soon(self) -> None:
        """Hand out work soon, once for everything that changed in this turn."""
        if self._dispatch_call is None and self.serving:
            self._dispatch_call = self.clock.callLater(0, self._dispatch)

    def _dispatch(self) -> None:
        """
        Fill the free slots, then the ready places, one task at a time
        (the least loaded slave first: one with a free slot is below any
        without); then give a slot still idle a run held ready elsewhere.
        """
        self._dispatch_call = None
        room = [w for w in self.workers.values() if w.room > 0 and not w.closing]
        while room and self.queue:
            assignment = self.queue.next_assignment(room, self.give_up)
            if assignment is None:
                break
            task, worker = assignment
            self._assign(task, worker)
            if worker.room <= 0:
                room.remove(worker)
        idle = [w for w in room if w.free_slots > 0]
        if idle:
            self._move_ready(idle)

    def _move_ready(self, idle: list[Worker]) -> None:
        """
        Hand slots that nothing queued can fill the runs other slaves hold
        ready, newest first from the slave holding most: a ready run waits
        on its slave's running ones, which may take hours, while a slot
        here sits idle.  Its slave is told to drop it; if it has started it
        meanwhile, whichever run reports first ends the task and the other
        is called off (L{picluster.master.scheduler.Scheduler.task_result}).
        """
        if not self.ready_runs:
            return
        holders = [w for w in self.workers.values() if w.ready and not w.closing]
        # A task of each kind held ready: a slave that can run none of the
        # kinds (a few, however many runs) is passed over at once, not
        # after a look at every run.
        kinds: dict[Kind, OpenTask] = {}
        for each in holders:
            for held in each.ready.values():
                kinds.setdefault(held.kind, held)
        for worker in idle:
            runnable = {kind for kind, example in kinds.items() if worker.may_run(example)}
            while runnable and worker.free_slots > 0:
                task = _newest_ready_for(worker, holders, runnable)
                if task is None:
                    break
                holder = task.worker
                assert holder is not None
                self.release(task)
                task.unstarted += 1
                holder.cancel(task.id, task.attempts)
                if not holder.ready:
                    holders.remove(holder)
                self.handout_log.info(
                    "moved to idle slaves", "Task {id} ({name}) held ready by {holder} moved to"
                    " idle slave {idle}", id=task.id, name=task.name,
                    holder=holder.hostname or holder.uuid, idle=worker.hostname or worker.uuid,
                )
                self._assign(task, worker)

    def refill(self, worker: Worker) -> None:
        """
        Hand the room a slave's result has just made (its slot, or the
        ready place of the run that took the slot) its next tasks at once:
        they leave in the same write as the answers to the read that
        brought the result, rather than two reactor turns later (the next
        dispatch, then the transport's next write), and a slave running
        tiny tasks waits on the master that much less.  A slot that nothing
        queued can fill takes a run held ready elsewhere.

        Only while no dispatch is due: every change that may let another
        slave with room take a queued task calls for one, so with none due
        no other slave with room can run a queued head, and this slave is
        the one the dispatch would choose.  Heads it cannot run are left to
        the dispatch, to give up on or hand out.
        """
        if self._dispatch_call is not None or not self.serving or worker.closing:
            return
        only = [worker]
        while worker.room > 0 and self.queue:
            assignment = self.queue.next_assignment(only, _keep)
            if assignment is None:
                break
            self._assign(*assignment)
        if worker.free_slots > 0:
            # Nothing queued for it: its slot may take a run held ready elsewhere.
            self._move_ready([worker])

    # -- the books of runs -----------------------------------------------------

    def hand(self, task: OpenTask, worker: Worker, attempt: int, reclaimed: bool = False) -> None:
        """Count run C{attempt} of C{task} as C{worker}'s: started, or ready behind its slots."""
        task.worker = worker
        task.ran_by[attempt] = worker.uuid
        task.record["attempts"] = attempt
        if worker.take(task):
            self.started(task, worker, reclaimed)
        else:
            self.ready_runs += 1

    def release(self, task: OpenTask) -> bool:
        """
        Take a run off its slave's books, as the slave does when it ends
        or drops it: the oldest run it held ready starts in a freed slot.
        True if the run had started.
        """
        worker = task.worker
        assert worker is not None
        was_running = task.id in worker.running
        holding = len(worker.ready)
        promoted = worker.drop(task)
        self.ready_runs -= holding - len(worker.ready)
        if promoted is not None:
            self.started(promoted, worker, False)
        return was_running

    def _assign(self, task: OpenTask, worker: Worker) -> None:
        attempt = task.attempts + 1
        self._assignments += 1
        worker.last_assigned = self._assignments
        self.hand(task, worker, attempt)
        # The arguments are the JSON the task was submitted with (a
        # msgspec.Raw, see store.held_arguments), sent on as they are.
        run = messages.RunTask(task.id, attempt, task.name, task.record["args"], task.timeout)
        sent = worker.connection.request("run_task", run)
        sent.addErrback(self._run_refused, task, worker, attempt)
        sent.addErrback(lambda failure: log.failure("Handing out task {id} failed", failure, id=task.id))

    def _run_refused(self, failure: Failure, task: OpenTask, worker: Worker, attempt: int) -> None:
        if failure.check(DisconnectionException):
            return  # The scheduler's forget() puts it back in the queue.
        if task.worker is not worker or task.attempts != attempt:
            return
        busy = failure.check(RemoteError) is not None and _refusal(failure) in BUSY_REFUSALS
        problem = failure.getErrorMessage()
        if busy:
            # Our count of its runs is off (it still runs something we gave
            # up on), or its ready runs hold all the bytes of arguments it
            # allows.  Not the task's fault: the run does not count, and
            # the slave gets nothing more until it next reports a result,
            # rather than refusing run after run in a tight loop.
            worker.full = True
            self.handout_log.emit(LogLevel.warn, "refused by busy slaves", _NOT_TAKEN,
                                  uuid=worker.uuid, hostname=worker.hostname, id=task.id,
                                  problem=problem)
        else:
            log.warn(_NOT_TAKEN, uuid=worker.uuid, hostname=worker.hostname, id=task.id,
                     problem=problem)
        # Any other refusal counts, wherever the run was on our books, or a
        # slave refusing it for good would be handed it for ever.
        self.lost(task, f"slave {worker.hostname or worker.uuid} did not take it: {problem}", not busy)


def _newest_ready_for(worker: Worker, holders: list[Worker], kinds: set[Kind]) -> OpenTask | None:
    """The run of one of C{kinds} held ready longest to go, from the slave holding most."""
    for holder in sorted(holders, key=lambda each: len(each.ready), reverse=True):
        if holder is worker:
            continue
        for task in reversed(holder.ready.values()):
            if task.kind in kinds:
                return task
    return None


def _keep(task: OpenTask) -> bool:
    """A head no slave given may run is kept, for the dispatch to judge."""
    return False


def _refusal(failure: Failure) -> Any:
    """The C{error} a slave gave for refusing a request."""
    payload = failure.value.reply.get("payload")
    return payload.get("error") if isinstance(payload, dict) else None
