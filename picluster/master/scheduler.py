"""
The master's scheduler: the life of every task, from its submission to its
outcome, and what happens when a slave that runs tasks goes away.

It holds every open task (queued or running) in memory and saves each
change through the L{TaskStore}.  Slaves that said C{worker} are
L{Worker}s with slots; queued tasks wait in the L{TaskQueue}, and the
L{Dispatcher} it owns hands them to the slaves (L{picluster.master.dispatch}
says how).  A slave lost under running tasks puts them
back in the queue until their retries are spent; a result that comes late
is kept only if the task is still open, so it is recorded once.

Each open task is in exactly one of four places: a queue (waiting), the
C{held} map (found running at start, waiting for its slave to rejoin), a
worker's C{running} map, or a worker's C{ready} map (handed to a slave
beyond its slots, to start there as a slot frees, with no round trip to the
master: a slave's C{prefetch}).

The scheduler and its dispatcher only decide and record; how tasks are listed, watched and
counted for clients and the dashboard is L{picluster.master.taskview}'s,
which reads the scheduler through the narrow L{picluster.master.taskview.TaskBook} interface.  The
slaves are reached through their connections' own C{request}, never their
protocol.
"""

from __future__ import annotations

from typing import Any, NoReturn

import msgspec
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from picluster import wire
from picluster.logbudget import LogBudget
from picluster.master.dispatch import Dispatcher
from picluster.master.quotas import Charge, Quotas, submitter_key
from picluster.master.retention import Retention
from picluster.master.space import DEFAULT_MAX_DB
from picluster.master.store import FINAL_STATES, KeyConflict, StoreError, TaskStore, held_result
from picluster.master.taskqueue import TaskQueue
from picluster.master.taskspec import DEFAULT_MAX_ARGS, TaskSpec, parse_submission
from picluster.master.taskview import TaskView, store_failed
from picluster.master.workers import OpenTask, Worker
from picluster.timebase import wall_time
from picluster.wire import messages
from picluster.wire.errors import ServiceError
from picluster.wire.protocol import DISK_BACKLOG

log = Logger()

#: Open tasks the master keeps at most, whoever submitted them; a submit
#: past it is refused.  Each submitter's own quotas come first
#: (L{picluster.master.quotas}).
DEFAULT_MAX_OPEN_TASKS = 100_000

#: Bytes of results (their JSON, and failures' texts) that may wait for
#: their rows to be on disk, from every slave together: past it, a slave
#: that sends another is not read until half of them are stored
#: (C{--max-results-waiting}).  Each slave has its own cap of 32 besides
#: (L{picluster.master.connection.PeerConnection.stored_answers}); this one
#: keeps a disk that stalls under a large cluster from taking the master's
#: memory, one result a slave at most beyond it.
DEFAULT_MAX_RESULTS_WAITING = 64 * 1024 * 1024


#: Bytes of a submit's answer per task, besides its key: its id, state and
#: whether it was a duplicate, as JSON.
_ANSWER_BYTES = 64

#: Task names a submit's warnings name at most, and the room they take.
_WARNED_NAMES = 10
_WARNINGS_BYTES = 4096

class Scheduler:
    """
    Open tasks, the slaves that can run them, and who watches them.

    @ivar open: Task id to L{OpenTask}, for every queued or running task.
    @ivar workers: Slave connection to its L{Worker}.
    """

    def __init__(
        self, clock: Any, *, overdue_grace: float = 15.0, rejoin_grace: float = 30.0,
        max_args: int = DEFAULT_MAX_ARGS, max_open_tasks: int = DEFAULT_MAX_OPEN_TASKS,
        max_reply: int = wire.DEFAULT_MAX_FRAME - 4096, max_db: int = DEFAULT_MAX_DB,
        max_results_waiting: int = DEFAULT_MAX_RESULTS_WAITING,
    ):
        self.clock = clock
        #: Task name to why this master refuses to queue it at all.
        self.refused_tasks: dict[str, str] = {}
        self.overdue_grace = overdue_grace
        self.rejoin_grace = rejoin_grace
        self.max_args = max_args
        self.max_open_tasks = max_open_tasks
        #: Bytes of database (file and log) past which new tasks are refused.
        self.max_db = max_db
        #: Bytes of results waiting for the disk past which slaves are not read.
        self.max_results_waiting = max_results_waiting
        #: Bytes of results waiting for the disk now, and each one's, by task id.
        self.results_waiting = 0
        self._result_bytes: dict[int, int] = {}
        #: The slave connections not read until the disk catches up, and since when.
        self._held_for_disk: dict[Any, None] = {}
        self._held_since = 0.0
        #: Each submitter's share of the queue.
        self.quotas = Quotas(clock)
        #: Which finished tasks are pruned from the database, and when.
        self.retention = Retention(clock, pruned=self._pruned)
        self.store: TaskStore | None = None
        self.open: dict[int, OpenTask] = {}
        self.workers: dict[Any, Worker] = {}
        self.held: dict[int, OpenTask] = {}
        self.queue = TaskQueue(self.open)
        #: Finished tasks whose final row is not yet on disk, and who waits for it.
        self._finishing: dict[int, tuple[dict[str, Any], list[defer.Deferred[None]]]] = {}
        #: How the tasks are shown: to clients, the web API and the dashboard.
        self.view = TaskView(self, max_reply)
        #: Lines about single tasks: one by one only while they are few.
        self.task_log = LogBudget(
            log, clock, "Left out of the log in the last {seconds:g} s: {kinds}"
                        " (the task database has every task)",
        )
        #: Lines about slaves offering work, likewise: a rejoining herd is counted.
        self.worker_log = LogBudget(
            log, clock, "Left out of the log in the last {seconds:g} s: {kinds}", lines=100,
        )
        self._ready: defer.Deferred[None] = defer.Deferred()
        self._unavailable: str | None = "the task queue is still loading"
        self._release_call: Any = None
        #: Who gets which queued task, and which ready run moves.
        self.dispatcher = Dispatcher(clock, self.workers, self.queue, started=self._started,
                                     lost=self._run_lost, give_up=self._refused_everywhere)
        #: Tasks in each final state, from the store at start, then counted.
        self.finished_counts: dict[str, int] = dict.fromkeys(sorted(FINAL_STATES), 0)

    def set_limits(self, *, quota_open: int | None = None, quota_args: int | None = None,
                   quota_rate: float | None = None, quota_burst: int | None = None,
                   keep_finished: int | None = None, keep_finished_days: float | None = None,
                   max_db: int | None = None, max_results_waiting: int | None = None) -> None:
        """Set the bounds of the queue and of what waits for its disk (options); C{None} keeps one."""
        for owner, name, value in (
            (self.quotas, "max_open", quota_open), (self.quotas, "max_args", quota_args),
            (self.quotas, "rate", quota_rate), (self.quotas, "burst", quota_burst),
            (self.retention, "keep", keep_finished), (self.retention, "keep_days", keep_finished_days),
            (self, "max_db", max_db), (self, "max_results_waiting", max_results_waiting),
        ):
            if value is not None:
                setattr(owner, name, value)

    # -- life ----------------------------------------------------------------

    def start(self, store: TaskStore) -> defer.Deferred[None]:
        """Load the open tasks from C{store}; serve tasks once it is done."""
        self.store = store
        return (
            store.counts()
            .addCallback(self._counted)
            .addCallback(lambda _: store.query(states=("queued", "running")))
            .addCallback(self._loaded)
            .addErrback(self.failed_to_start)
        )

    def failed_to_start(self, failure: Failure) -> None:
        self._unavailable = f"the task queue is unavailable: {failure.getErrorMessage()}"
        log.critical("{problem}", problem=self._unavailable)
        self._ready.callback(None)

    def _counted(self, counts: dict[str, int]) -> None:
        for state in FINAL_STATES:
            self.finished_counts[state] = counts.get(state, 0)

    def _loaded(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            task = OpenTask(record)
            self.open[task.id] = task
            task.charge = self.quotas.hold(submitter_key(record["submitted_by"]), len(record["args"]))
            if record["state"] == "running":
                # Its slave may still be at it: give the slave time to rejoin
                # and claim it before anyone else is given it.
                task.last_run = (record["slave"], record["attempts"])
                task.ran_by[record["attempts"]] = record["slave"]
                self._requeue_record(task)
                self.held[task.id] = task
            else:
                self._enqueue(task)
        if self.held:
            self._release_call = self.clock.callLater(self.rejoin_grace, self._release_held)
            log.info(
                "{count} tasks were running when the master stopped; their slaves have"
                " {grace:g} s to rejoin and claim them", count=len(self.held), grace=self.rejoin_grace,
            )
        log.info("Task queue loaded: {count} open tasks", count=len(self.open))
        self._unavailable = None
        self.dispatcher.serving = True
        self._ready.callback(None)
        self.dispatcher.soon()
        assert self.store is not None
        self.retention.start(self.store)

    @property
    def serving(self) -> bool:
        """Whether the queue has loaded and serves: task messages are then handled at once."""
        return self._unavailable is None

    def when_ready(self) -> defer.Deferred[None]:
        """Fires once the queue has loaded; errbacks with L{ServiceError} if it cannot serve."""
        if self._ready.called:
            # Every message a slave or client sends asks this: once loaded,
            # answer at once.
            if self._unavailable is not None:
                return defer.fail(ServiceError(self._unavailable))
            return defer.succeed(None)
        ready: defer.Deferred[None] = defer.Deferred()

        def check(_: Any) -> Any:
            if self._unavailable is not None:
                raise ServiceError(self._unavailable)
            return _

        def fire(result: Any) -> Any:
            ready.callback(None)
            return result

        self._ready.addBoth(fire)
        return ready.addCallback(check)

    def stop(self) -> defer.Deferred[None]:
        self.retention.stop()
        if self._release_call is not None and self._release_call.active():
            self._release_call.cancel()
        for task in self.open.values():
            task.cancel_deadline()
        self.task_log.flush()
        self.worker_log.flush()
        self.dispatcher.stop()
        if self.store is None:
            return defer.succeed(None)
        return self.store.close()

    # -- clients -------------------------------------------------------------

    def submit(self, submitted: list[messages.TaskSpec],
               submitted_by: str | None = None) -> defer.Deferred[tuple[str, Any]]:
        specs = parse_submission(submitted, self.max_args)
        for index, spec in enumerate(specs):
            if spec.name in self.refused_tasks:
                raise wire.BadMessage(f"task {index}: {self.refused_tasks[spec.name]}", index=index)
        answer = sum(_ANSWER_BYTES + (len(wire.encode(spec.key)) if spec.key is not None else 0)
                     for spec in specs)
        if answer > self.view.max_reply - _WARNINGS_BYTES:
            # Refused before anything is stored: an answer too large for a
            # frame would be an error after the tasks were queued.
            raise wire.BadMessage(
                f"the answer to a submit of {len(specs)} tasks with these keys would not fit a frame"
                " (--max-frame): submit fewer at once (the picluster command and the Python"
                " client split large submissions)"
            )
        store = self.usable_store()
        size = store.size()
        if size >= self.max_db:
            raise ServiceError(
                f"the task database is full: {size} bytes, at most {self.max_db} (--max-db);"
                " new tasks are refused until finished tasks are pruned (--keep-finished,"
                " --keep-finished-days) or --max-db is raised"
            )
        if len(self.open) + len(specs) > self.max_open_tasks:
            raise ServiceError(
                f"the queue is full: {len(self.open)} open tasks, at most {self.max_open_tasks}"
            )
        # Charged before it is stored, so that submissions still on their way
        # to the disk count too; given back for what is not stored.
        key = submitter_key(submitted_by)
        charge = self.quotas.charge(key, len(specs), sum(spec.args_size for spec in specs))
        stored = store.submit(specs, wall_time(self.clock), submitted_by)
        return stored.addCallbacks(self._submitted, self._not_submitted,
                                   callbackArgs=(specs, key), errbackArgs=(charge,))

    def _submitted(self, stored: list[tuple[dict[str, Any], bool]], specs: list[TaskSpec],
                   key: Any) -> tuple[str, Any]:
        answers = []
        names = set()
        for (record, duplicate), spec in zip(stored, specs):
            charge = Charge(key, 1, spec.args_size)
            if duplicate:
                self.quotas.give_back(charge)
            else:
                task = OpenTask(record)
                task.charge = charge
                self.open[task.id] = task
                self._enqueue(task)
                names.add(task.name)
            current = self.view.current(record)
            answers.append({"id": record["id"], "key": record["key"], "state": current["state"],
                            "duplicate": duplicate})
        offered = set().union(*(w.offers for w in self.workers.values()))
        missing = sorted(names - offered)
        warnings = [
            f"no connected slave offers {name!r}; the task waits until one does"
            for name in missing[:_WARNED_NAMES]
        ]
        if len(missing) > _WARNED_NAMES:
            warnings.append(f"and {len(missing) - _WARNED_NAMES} more task names no connected"
                            " slave offers")
        new = [answer["id"] for answer in answers if not answer["duplicate"]]
        self.task_log.info("submissions", "{count} tasks submitted ({names}){ids}", count=len(new),
                           names=", ".join(sorted(names)) or "none new",
                           ids=f", ids {new[0]} to {new[-1]}" if new else "")
        self.dispatcher.soon()
        return ("submitted", {"tasks": answers, "warnings": warnings})

    def _not_submitted(self, failure: Failure, charge: Charge) -> Failure:
        self.quotas.give_back(charge)
        if failure.check(KeyConflict):
            raise wire.BadMessage(str(failure.value), index=failure.value.index)
        if failure.check(StoreError):
            log.error("Submission refused: {problem}", problem=failure.getErrorMessage())
            raise ServiceError(f"cannot store the tasks: {failure.getErrorMessage()}")
        return failure

    def cancel(self, task_id: int) -> defer.Deferred[tuple[str, Any]] | tuple[str, Any]:
        task = self.open.get(task_id)
        if task is not None:
            self._finish(task, "cancelled", None, None)
            log.info("Task {id} ({name}) cancelled", id=task.id, name=task.name)
            return ("tasks", {"tasks": [self.view.show_one(task.record)]})
        found = self.usable_store().query(ids=[task_id])

        def refuse(records: list[dict[str, Any]]) -> NoReturn:
            if not records:
                raise wire.BadMessage(f"no task {task_id}")
            record = self.view.current(records[0])
            raise wire.BadMessage(f"task {record['id']} is already {record['state']}", state=record["state"])

        return found.addCallbacks(refuse, store_failed)

    def forget(self, connection: Any) -> None:
        """A connection has gone: stop pushing to it, and take back its work."""
        self.view.watchers.forget(connection)
        self._held_for_disk.pop(connection, None)
        worker = self.workers.pop(connection, None)
        if worker is not None:
            self._worker_left(worker)

    # -- slaves --------------------------------------------------------------

    def worker_joined(self, connection: Any, offer: messages.WorkerOffer) -> tuple[str, Any]:
        if connection in self.workers:
            raise wire.BadMessage("worker already sent on this connection")
        worker = Worker(connection, frozenset(offer.tasks), offer.refused, offer.slots,
                        frozenset(offer.tags), offer.prefetch)
        slots = offer.slots
        offers = worker.offers
        self.workers[connection] = worker
        drop = []
        # Running ones first, then the ready ones in order (the offer's
        # order), as the slave holds them: take() fills the slots first.
        for run in offer.holding:
            if not self._reclaim(worker, run.id, run.attempt):
                drop.append(run)
        self.worker_log.info(
            "work offers", "Slave {uuid} ({hostname}) offers {count} tasks on {slots} slots"
            " ({prefetch} more ready); {held} runs reclaimed, {dropped} dropped",
            uuid=worker.uuid, hostname=worker.hostname, count=len(offers), slots=slots,
            prefetch=offer.prefetch, held=len(worker.running) + len(worker.ready), dropped=len(drop),
        )
        self.dispatcher.soon()
        return ("worker_accepted", messages.WorkerAccepted(drop))

    def _reclaim(self, worker: Worker, task_id: int, attempt: int) -> bool:
        """Let a rejoining slave keep a run it still holds, if nobody else has it."""
        task = self.open.get(task_id)
        if task is None or task.attempts != attempt:
            return False
        if task.worker is not None:
            # Still counted on this slave's older connection, not yet seen to close.
            if task.worker.uuid != worker.uuid:
                return False
            self.dispatcher.release(task)
        elif task.last_run != (worker.uuid, attempt):
            return False
        self.held.pop(task.id, None)
        task.queued = False
        self.dispatcher.hand(task, worker, attempt, reclaimed=True)
        return True

    def task_result(self, connection: Any, report: messages.TaskResult) -> defer.Deferred[None] | None:
        task_id, attempt, outcome, retry = report.id, report.attempt, report.outcome, report.retry
        if outcome == "failed" and report.error is None:
            raise wire.BadMessage("a failed task_result needs an error with a message")
        result = held_result(report.result)
        error = msgspec.structs.asdict(report.error) if report.error is not None else None
        task = self.open.get(task_id)
        if task is None:
            return self._saved(task_id)
        reporter = self.workers.get(connection)
        if reporter is not None and reporter.full:
            reporter.full = False
            self.dispatcher.soon()
        current = (task.worker is not None and task.worker is reporter
                   and task.attempts == attempt)
        if not current:
            # Only the slave that was handed that run may end the task with
            # it: nobody else's result is ever stored.
            ran_it = reporter is not None and task.ran_by.get(attempt) == reporter.uuid
            if outcome != "done" or not ran_it:
                log.info("Ignoring a stale {outcome} of task {id} attempt {attempt} from {uuid}",
                         outcome=outcome, id=task_id, attempt=attempt,
                         uuid=getattr(connection, "uuid", None))
                return None
            log.info("Task {id} finished by an earlier run (attempt {attempt}); keeping it",
                     id=task_id, attempt=attempt)
        elif outcome == "failed" and retry and task.runs <= task.retries:
            assert report.error is not None  # a failure without one was refused above
            self._run_lost(task, f"run crashed: {report.error.message}")
            return None
        assert reporter is not None
        slave, hostname = reporter.uuid, reporter.hostname
        # Counted before it is finished: a store that writes at once has the
        # row on disk before _finish returns.
        size = len(report.result)
        if error is not None:
            size += len(error["message"]) + len(error["traceback"] or "")
        self._wait_for_disk(task_id, size, connection)
        # The run's own result frees a slot on its reporter alone: refilled
        # below, with no dispatch of every slave.
        self._finish(task, outcome, result, error, slave=slave, hostname=hostname,
                     stop_run=not current, dispatch=not current)
        self.task_log.info(outcome, "Task {id} ({name}) {outcome} on {hostname}", id=task_id,
                           name=task.name, outcome=outcome, hostname=hostname)
        if current:
            self.dispatcher.refill(reporter)
        return self._saved(task_id)

    def _saved(self, task_id: int) -> defer.Deferred[None] | None:
        """Wait for a finished task's row to be on disk before the slave forgets it."""
        if task_id not in self._finishing:
            return None
        waiter: defer.Deferred[None] = defer.Deferred()
        self._finishing[task_id][1].append(waiter)
        return waiter

    def _worker_left(self, worker: Worker) -> None:
        cause = worker.connection.disconnection
        why = f"slave {worker.uuid} ({worker.hostname}) was lost"
        if cause is not None:
            why += f": {cause.cause}"
        # The ready runs first: none of them may take a slot that a lost
        # running one frees, and count as started.
        for task in list(worker.ready.values()):
            self._run_lost(task, why)
        for task in list(worker.running.values()):
            self._run_lost(task, why)

    # -- the life of a task ----------------------------------------------------

    def _enqueue(self, task: OpenTask) -> None:
        self.queue.push(task)

    def _requeue_record(self, task: OpenTask) -> None:
        task.record.update(state="queued", slave=None, slave_hostname=None, started_at=None)

    def _started(self, task: OpenTask, worker: Worker, reclaimed: bool = False) -> None:
        """A run has a slot: it is C{running}, and its deadline starts now."""
        task.record.update(state="running", slave=worker.uuid, slave_hostname=worker.hostname)
        if not reclaimed or task.record["started_at"] is None:
            task.record["started_at"] = wall_time(self.clock)
        self._write(task.record)
        task.cancel_deadline()
        if task.timeout is not None:
            task.deadline = self.clock.callLater(
                task.timeout + self.overdue_grace, self._overdue, task, worker, task.attempts
            )

    def _run_lost(self, task: OpenTask, why: str, started: bool | None = None) -> None:
        """
        A run ended without a result: run it again, or give up.

        @param started: Whether the run is spent; by default, whether it
            had started (not held ready) on its slave's books.
        """
        worker = task.worker
        if worker is not None:
            had_started = self.dispatcher.release(task)
            if not (had_started if started is None else started):
                task.unstarted += 1
            task.last_run = (worker.uuid, task.attempts)
        task.worker = None
        task.cancel_deadline()
        if task.runs > task.retries:
            message = f"{why}; gave up after {task.runs} runs"
            self._finish(task, "failed", None,
                         {"type": "SlaveLost", "message": message, "traceback": None, "kind": "lost"})
            log.warn("Task {id} ({name}) failed: {message}", id=task.id, name=task.name, message=message)
        else:
            self._requeue_record(task)
            self._write(task.record)
            self._enqueue(task)
            # Budgeted: a lost slave puts back all it ran and held ready at once.
            self.task_log.info("queued again", "Task {id} ({name}) queued again after attempt"
                               " {attempts}: {why}", id=task.id, name=task.name,
                               attempts=task.attempts, why=why)
        self.dispatcher.soon()

    def _overdue(self, task: OpenTask, worker: Worker, attempt: int) -> None:
        task.deadline = None
        if task.worker is not worker or task.attempts != attempt:
            return
        message = (f"timed out after {task.timeout:g} s (no result from slave"
                   f" {worker.hostname or worker.uuid} within {self.overdue_grace:g} s more)")
        self._finish(task, "failed", None,
                     {"type": "Timeout", "message": message, "traceback": None, "kind": "timeout"})
        log.warn("Task {id} ({name}) {message}", id=task.id, name=task.name, message=message)

    def _finish(self, task: OpenTask, state: str, result: Any, error: dict[str, Any] | None,
                slave: str | None = None, hostname: str | None = None,
                stop_run: bool = True, dispatch: bool = True) -> None:
        """
        Record the task's end, stop the run still going (unless the end is
        that run's own result), and tell its watchers.  The slot it frees
        is handed out by the next dispatch, unless C{dispatch} is false (the
        caller hands it out).
        """
        assert state in FINAL_STATES
        task.cancel_deadline()
        worker = task.worker
        if worker is not None:
            self.dispatcher.release(task)
            if stop_run:
                # Even on the slave that sent the result: an earlier run's
                # result may come from the slave now running a later one.
                worker.cancel(task.id, task.attempts)
        task.worker = None
        task.queued = False
        self.held.pop(task.id, None)
        del self.open[task.id]
        if task.charge is not None:
            self.quotas.give_back(task.charge)
            task.charge = None
        self.finished_counts[state] += 1
        record = task.record
        record.update(state=state, result=result, error=error, finished_at=wall_time(self.clock))
        if slave is not None:
            record.update(slave=slave, slave_hostname=hostname)
        self._finishing[task.id] = (record, [])
        self._save(record).addCallback(self._finished, task.id, record)
        if dispatch:
            self.dispatcher.soon()

    def _finished(self, _: Any, task_id: int, record: dict[str, Any]) -> None:
        _, waiters = self._finishing.pop(task_id, (None, []))
        self.results_waiting -= self._result_bytes.pop(task_id, 0)
        if self._held_for_disk and self.results_waiting <= self.max_results_waiting // 2:
            self._disk_caught_up()
        for waiter in waiters:
            waiter.callback(None)
        self.view.ended(task_id, record)

    def _wait_for_disk(self, task_id: int, size: int, connection: Any) -> None:
        """
        Count a result of C{size} bytes as held until its row is on disk; past
        L{max_results_waiting} in all, its slave is not read until the disk
        has caught up (its pings wait in the socket: it is not dropped as
        silent meanwhile).
        """
        self._result_bytes[task_id] = size
        self.results_waiting += size
        if self.results_waiting <= self.max_results_waiting or connection in self._held_for_disk:
            return
        if not self._held_for_disk:
            self._held_since = self.clock.seconds()
            log.warn("Results waiting for the disk passed {limit} bytes (--max-results-waiting):"
                     " slaves that send more are not read until it catches up",
                     limit=self.max_results_waiting)
        self._held_for_disk[connection] = None
        connection.hold(DISK_BACKLOG)

    def _disk_caught_up(self) -> None:
        """Half the results that waited are stored: read every slave held for them again."""
        held, self._held_for_disk = self._held_for_disk, {}
        for connection in held:
            connection.release(DISK_BACKLOG)
        log.info("The disk caught up after {seconds:.1f} s: {count} slaves are read again",
                 seconds=self.clock.seconds() - self._held_since, count=len(held))

    def _refused_everywhere(self, task: OpenTask) -> bool:
        """
        Fail a task that every connected slave able to run it refuses outright
        (an admin task where no slave allows them): better a clear error now
        than a task that waits forever.
        """
        refusals = [w.refused[task.name] for w in self.workers.values()
                    if task.name in w.refused and task.requirements.unmet(w.computer_details, w.tags) is None]
        if not refusals or any(w.may_run(task) for w in self.workers.values()):
            return False
        message = f"{task.name} is refused by every slave that offers it: {refusals[0]}"
        self._finish(task, "failed", None,
                     {"type": "NotPermitted", "message": message, "traceback": None, "kind": "not_permitted"})
        log.warn("Task {id} failed: {message}", id=task.id, message=message)
        return True

    def _release_held(self) -> None:
        """The rejoin grace is over: what nobody claimed runs again elsewhere."""
        self._release_call = None
        held, self.held = self.held, {}
        for task in held.values():
            if task.id in self.open and task.worker is None:
                self._enqueue(task)
        if held:
            log.info("{count} tasks unclaimed after the master restart are queued again",
                     count=len(held))
        self.dispatcher.soon()

    def _pruned(self, counts: dict[str, int]) -> None:
        """Finished tasks were pruned from the database: they are counted no more."""
        for state, count in counts.items():
            if state in self.finished_counts:
                self.finished_counts[state] = max(0, self.finished_counts[state] - count)

    def in_memory(self, task_id: int) -> dict[str, Any] | None:
        """The live record of a task that is open, or ended and being saved."""
        task = self.open.get(task_id)
        if task is not None:
            return task.record
        finishing = self._finishing.get(task_id)
        return finishing[0] if finishing is not None else None

    # -- the store -------------------------------------------------------------

    def usable_store(self) -> TaskStore:
        """The task store, or L{ServiceError} while it cannot serve."""
        if self._unavailable is not None or self.store is None:
            raise ServiceError(self._unavailable or "the task queue is unavailable")
        return self.store

    def _save(self, record: dict[str, Any]) -> defer.Deferred[None]:
        """Save a copy of C{record} (the store writes it in its own thread)."""
        return self.usable_store().save(dict(record))

    def _write(self, record: dict[str, Any]) -> None:
        """L{_save}, when nobody waits for the row to be committed."""
        self.usable_store().write(dict(record))

