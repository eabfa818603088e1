"""
The slave's task runner: runs what the master hands it and keeps the results.

L{TaskRunner} keeps the slave's side of docs/protocol.rst, "Tasks".  It
lives on the slave's factory, not on a connection, so that a run outlives a
lost connection and its result waits (in L{TaskRunner.results}) until a
master acknowledges it.  The
runner knows nothing of the wire beyond the payloads: the slave's connection
handler feeds it C{run_task} and C{cancel_task} payloads and sends the
C{task_result} payloads it produces.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, threads
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from picluster import wire
from picluster.logbudget import LogBudget
from picluster.slave.pool import RECYCLE_AFTER, WorkerPool
from picluster.slave.ready import MAX_READY_BYTES, ReadyRuns, packed
from picluster.slave.results import (
    DEFAULT_MAX_RESULT,
    MAX_WAITING_BYTES,
    MAX_WAITING_RESULTS,
    WaitingResults,
)
from picluster.tasks import child
from picluster.tasks.builtin import ADMIN_COMMANDS
from picluster.tasks.catalog import (
    Node,
    NodeBound,
    ProcessResult,
    Task,
    TaskCatalog,
    check_arguments,
)
from picluster.tasks.child import OUTPUT_LIMIT
from picluster.tasks.errors import (
    TRACEBACK_LIMIT,
    CommandFailed,
    NotPermitted,
    TaskFailed,
    admin_refusal,
    error_kind,
    error_payload,
)
from picluster.text import clip
from picluster.wire.messages import NO_FREE_SLOT, TASK_ALREADY_RUNNING, Run, RunTask

log = Logger()


@dataclass
class _Run:
    """A run in progress."""

    task_id: int
    attempt: int
    name: str
    started_at: float
    deferred: defer.Deferred[Any] | None = None
    timeout_call: IDelayedCall | None = None
    finished: bool = False


class _TaskThread(threading.Thread):
    """
    A thread of the runner's pool.  A daemon: a thread run cannot be
    stopped, and one that never returns must not keep the slave from exiting.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.daemon = True


class TaskRunner:
    """
    Runs tasks for the master in at most C{slots} runs at a time, and holds
    at most C{prefetch} more ready (L{ReadyRuns}), to start as slots free.

    Thread runs cannot be stopped: a thread run that times out or is cancelled
    keeps its pool thread until its function returns, and what it returns is
    discarded.  Reactor runs are stopped by cancelling their Deferred, process
    runs by killing their worker (L{WorkerPool}).

    @ivar on_result: Called with each new result payload once the message
        that produced it is answered (through L{soon}: so an answer to
        C{run_task} goes out before the result of a run that ended at once),
        unless the result was acknowledged or cancelled meanwhile.
    @ivar soon: Calls what it is given once the message being handled is
        answered; by default on the reactor's next turn.  The slave gives a
        sooner moment when it has one: the end of the read from its master,
        whose answers then leave in one write with the result.
    """

    def __init__(
        self,
        registry: TaskCatalog,
        *,
        slots: int,
        prefetch: int = 0,
        max_ready_bytes: int = MAX_READY_BYTES,
        clock: Any,
        reactor: Any,
        allow_admin: bool = False,
        allowed_commands: Sequence[str] = (),
        admin_commands: Mapping[str, Sequence[Sequence[str]]] = ADMIN_COMMANDS,
        max_result_bytes: int = DEFAULT_MAX_RESULT,
        max_waiting_results: int = MAX_WAITING_RESULTS,
        max_waiting_bytes: int = MAX_WAITING_BYTES,
        task_memory: int | None = child.TASK_MEMORY,
        task_cpu: int | None = child.TASK_CPU,
        recycle_after: int = RECYCLE_AFTER,
        thread_pool: Any = None,
        booted_at: float | None = None,
    ):
        if slots < 0:
            raise ValueError("slots must not be negative")
        self.registry = registry
        self.slots = slots
        #: The runs handed out beyond the slots, started oldest first.
        self.ready = ReadyRuns(prefetch, max_ready_bytes)
        self.allow_admin = allow_admin
        #: The largest task_result payload, in bytes of JSON.
        self.max_result_bytes = max_result_bytes
        #: Bytes of address space and seconds of CPU time each process task
        #: may use (C{None}: no limit).
        self.task_memory = task_memory or None
        self.task_cpu = task_cpu or None
        #: The results not yet acknowledged: a master acknowledges one at a
        #: time, and a busy slave holds many (room for one per run it holds,
        #: at least: all of them may end while the master is away).
        self.waiting = WaitingResults(clock, max_result_bytes=max_result_bytes,
                                      max_count=max(max_waiting_results, slots + prefetch),
                                      max_bytes=max_waiting_bytes)
        self.on_result: Callable[[dict[str, Any]], Any] | None = None
        self.soon: Callable[[Callable[[], Any]], Any] = lambda call: clock.callLater(0, call)
        self._clock = clock
        self._reactor = reactor
        self._running: dict[int, _Run] = {}
        self._starting_ready = False
        #: Where thread runs run: our own pool unless one is given (tests).
        self._threads: Any = thread_pool
        self._own_threads = thread_pool is None
        self._thread_runs = 0
        self._children: set[child.ChildProcess] = set()
        # An outcome is its result and a few keys more.
        max_outcome = max_result_bytes + 4096
        #: The warm workers process runs run in, one a slot at most.
        self.workers = WorkerPool(
            reactor, clock, size=max(slots, 1),
            argv=child.worker_argv(memory=self.task_memory, cpu=self.task_cpu,
                                   max_outcome=max_outcome),
            environment=lambda: child.task_environment(few_arenas=self.task_memory is not None),
            max_outcome=max_outcome, recycle_after=recycle_after,
        )
        #: Lines about single runs: one by one only while they are few.
        self.run_log = LogBudget(
            log, clock, "Left out of the log in the last {seconds:g} s: task runs {kinds}"
                        " (the master's task database has every task)",
        )
        self._node = Node(
            reactor=reactor,
            clock=clock,
            allow_admin=allow_admin,
            allowed_commands=frozenset(allowed_commands),
            admin_commands=admin_commands,
            run_process=self.run_process,
            booted_at=booted_at,
        )

    # -- what the slave tells the master ----------------------------------

    @property
    def prefetch(self) -> int:
        """How many runs this slave holds ready beyond its slots, at most."""
        return self.ready.room

    @property
    def results(self) -> list[dict[str, Any]]:
        """The task_result payloads not yet acknowledged, oldest first."""
        return list(self.waiting)

    def offers(self) -> list[str]:
        """Every task name in the registry, refused ones included."""
        return self.registry.names()

    def refusals(self) -> dict[str, str]:
        """Task name to why this slave refuses it outright."""
        refused = {}
        for each in self.registry:
            why = self._refusal(each)
            if why is not None:
                refused[each.name] = why
        return refused

    def holding(self) -> list[Run]:
        """The runs in progress, then the ready ones in the order they will start."""
        return [Run(r.task_id, r.attempt) for r in self._running.values()] + self.ready.holding()

    def _refusal(self, task: Task) -> str | None:
        if task.admin and not self.allow_admin:
            return admin_refusal(task.name)
        if isinstance(task.function, NodeBound):
            return task.function.refusal(self._node)
        return None

    # -- the master's requests ----------------------------------------------

    def start(self, run: RunTask) -> None:
        """
        Start the run a run_task payload describes, or hold it ready if every
        slot is busy.

        A run this slave refuses by policy (admin, shell allow-list, bad
        arguments) or cannot run at all (a task it does not have) starts and
        fails at once, so that the master records why.

        @raise wire.BadMessage: for a run of a task already running or ready,
            or no room in the slots or among the ready runs, in number or in
            bytes of arguments (the L{BUSY_REFUSALS}); the master re-queues.
        """
        held = self._running.get(run.id) or self.ready.get(run.id)
        if held is not None:
            raise wire.BadMessage(TASK_ALREADY_RUNNING, id=run.id, attempt=held.attempt)
        if len(self._running) < self.slots:
            self._begin(run)
            return
        if self.ready.full:
            raise self._no_free_slot()
        run, arguments = packed(run)
        if not self.ready.fits(len(arguments)):
            raise self._no_free_slot()
        self.ready.add(run, arguments)

    def _no_free_slot(self) -> wire.BadMessage:
        return wire.BadMessage(NO_FREE_SLOT, slots=self.slots, prefetch=self.prefetch,
                               ready_bytes=self.ready.bytes, max_ready_bytes=self.ready.max_bytes)

    def _begin(self, run: RunTask) -> None:
        """Start a run in a free slot; its timeout counts from now."""
        task_id, attempt, name, timeout = run.id, run.attempt, run.name, run.timeout
        args = run.args or {}
        entry = _Run(task_id, attempt, clip(name) or "", self._clock.seconds())
        self._running[task_id] = entry
        task = self.registry.get(name)
        if task is None:
            error = error_payload("UnknownTask", f"this slave has no task named {clip(repr(name))}",
                                  kind="unknown_task")
            self._end(entry, {"outcome": "failed", "result": None, "error": error}, "failed")
            return
        self.run_log.info("started", "Task {task_id} attempt {attempt} ({name}) started",
                          task_id=task_id, attempt=attempt, name=name, timeout=timeout)
        if timeout is not None:
            entry.timeout_call = self._clock.callLater(timeout, self._time_out, entry, timeout)
        entry.deferred = defer.maybeDeferred(self._launch, task, args)
        entry.deferred.addCallbacks(self._succeeded, self._failed,
                                    callbackArgs=(entry,), errbackArgs=(entry,))

    def cancel(self, task_id: int, attempt: int) -> None:
        """
        Stop a run and forget it, and any result it left, without reporting.
        A ready run is only forgotten: it held no slot, so nothing starts.
        """
        entry = self._running.get(task_id)
        if entry is not None and entry.attempt == attempt:
            self._end(entry, None, "cancelled")
        self.ready.drop(task_id, attempt)
        self.acknowledged(task_id, attempt)

    def acknowledged(self, task_id: int, attempt: int) -> None:
        """Forget the result of a run the master has stored."""
        self.waiting.forget((task_id, attempt))

    def stop(self) -> defer.Deferred[None]:
        """Stop every run without reporting it; fires once every child process is gone."""
        # First: ending the running runs frees slots, and no ready run may start in them.
        self.ready.clear()
        for entry in list(self._running.values()):
            self._end(entry, None, "stopped")
        self.run_log.flush()
        self.waiting.drop_log.flush()
        if self._own_threads and self._threads is not None and not self._thread_runs:
            # Idle threads end at once; busy ones (thread runs cannot be
            # stopped) are daemons and end with the process.
            self._threads.stop()
            self._threads = None
        processes = list(self._children)
        for process in processes:
            process.result.cancel()
        gone = defer.DeferredList([process.gone for process in processes] + [self.workers.stop()],
                                  consumeErrors=True)
        return gone.addCallback(lambda _: None)

    # -- running ---------------------------------------------------------------

    def _launch(self, task: Task, args: dict[str, Any]) -> Any:
        refusal = self._refusal(task)
        if refusal is not None:
            raise NotPermitted(refusal)
        check_arguments(task, args)
        function = task.function
        if isinstance(function, NodeBound):
            function = function.bind(self._node)
        if task.run_in == "thread":
            return self._run_in_thread(function, args)
        if task.run_in == "process":
            return self._run_in_child(task, args)
        result = function(**args)
        if inspect.iscoroutine(result):
            return defer.Deferred.fromCoroutine(result)
        return result

    def _run_in_thread(self, function: Callable[..., Any], args: dict[str, Any]) -> defer.Deferred[Any]:
        """
        Run in the runner's own pool, not the reactor's: the reactor's pool
        also resolves host names, and slow tasks holding all its threads
        would keep the slave from reconnecting to C{master.local}.
        """
        if self._threads is None:
            self._threads = ThreadPool(minthreads=0, maxthreads=max(self.slots, 1),
                                       name="picluster-tasks")
            self._threads.threadFactory = _TaskThread
            self._threads.start()
        self._thread_runs += 1
        running = threads.deferToThreadPool(self._reactor, self._threads, function, **args)

        def done(result: Any) -> Any:
            self._thread_runs -= 1
            return result

        return running.addBoth(done)

    def _run_in_child(self, task: Task, args: dict[str, Any]) -> defer.Deferred[Any]:
        request = child.task_request(task, args)
        return self.workers.run(request).addCallback(child.read_outcome)

    def run_process(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        limit: int = OUTPUT_LIMIT,
    ) -> defer.Deferred[ProcessResult]:
        """Run a command without a shell (see L{Node.run_process}); L{stop} kills it."""
        try:
            process = child.spawn(self._reactor, self._clock, argv,
                                  stdin=stdin, env=env, limit=limit)
        except CommandFailed:
            return defer.fail()
        self._children.add(process)
        process.gone.addCallback(lambda _: self._children.discard(process))
        return process.result

    # -- ending ------------------------------------------------------------------

    def _succeeded(self, result: Any, entry: _Run) -> None:
        if entry.finished:
            return
        self._end(entry, {"outcome": "done", "result": result, "error": None}, "done")

    def _failed(self, failure: Failure, entry: _Run) -> None:
        if entry.finished:
            return
        error = _describe(failure)
        outcome: dict[str, Any] = {"outcome": "failed", "result": None, "error": error}
        if error["kind"] == "crashed":
            outcome["retry"] = True
        self._end(entry, outcome, "failed")

    def _time_out(self, entry: _Run, seconds: float) -> None:
        error = error_payload("Timeout", f"timed out after {seconds:g} s", kind="timeout")
        self._end(entry, {"outcome": "failed", "result": None, "error": error}, "timed out")

    def _end(self, entry: _Run, outcome: dict[str, Any] | None, how: str) -> None:
        """
        Finish a run once: free its slot, stop what is left of it, keep its
        result, and start the oldest ready run in the slot.  That run starts
        before this result is handed on (L{soon} comes later), as the master
        counts on; its own result, if it ends at once, is handed on after.
        """
        if entry.finished:
            return
        entry.finished = True
        del self._running[entry.task_id]
        if entry.timeout_call is not None and entry.timeout_call.active():
            entry.timeout_call.cancel()
        if outcome is not None:
            payload, size = self.waiting.sendable({"id": entry.task_id, "attempt": entry.attempt,
                                                   **outcome})
            if payload["outcome"] != outcome["outcome"]:
                how = "failed"
        self.run_log.info(
            how, "Task {task_id} attempt {attempt} ({name}) {how} after {duration} s",
            task_id=entry.task_id, attempt=entry.attempt, name=entry.name, how=how,
            duration=round(self._clock.seconds() - entry.started_at, 3),
        )
        if entry.deferred is not None and not entry.deferred.called:
            entry.deferred.cancel()
        if outcome is not None:
            self.waiting.keep(payload, size)
            self.soon(lambda: self._notify(payload))
        self._start_ready()

    def _start_ready(self) -> None:
        """
        Start the oldest ready runs while slots are free.  A loop, not a
        recursion: a run that ends as it starts (a reactor task) ends in
        L{_begin}, and its L{_end} leaves the next run to this loop, so a
        thousand instant runs ready take no thousand frames of stack.
        """
        if self._starting_ready:
            return
        self._starting_ready = True
        try:
            while self.ready and len(self._running) < self.slots:
                self._begin(self.ready.pop_oldest())
        finally:
            self._starting_ready = False

    def _notify(self, payload: dict[str, Any]) -> None:
        run = (payload["id"], payload["attempt"])
        if self.on_result is None or self.waiting.get(run) is not payload:
            return
        try:
            self.on_result(payload)
        except Exception:
            log.failure("Could not hand on the result of task {task_id}", task_id=payload["id"])



def _describe(failure: Failure) -> dict[str, Any]:
    """A task_result error object for how a run failed."""
    exception = failure.value
    if isinstance(exception, TaskFailed):
        return exception.error
    kind = error_kind(exception)
    traceback = None
    if isinstance(exception, CommandFailed):
        traceback = exception.details
    elif kind == "error":
        traceback = failure.getTraceback()[-TRACEBACK_LIMIT:]
    return error_payload(type(exception).__name__, str(exception), kind, traceback)
