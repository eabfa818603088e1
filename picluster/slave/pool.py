"""
The slave's warm workers: the processes its process tasks run in.

Starting a Python process costs some 50 ms (more on a Pi), more than many
tasks take; a map over thousands of small items would spend most of its
time starting children.  So a slave keeps up to one worker per slot
(L{picluster.tasks.childmain}), started when first needed, each running one
task at a time and kept for the next.  A worker is still a process of its
own: a timeout or a cancel kills it (the task's process group with it) and
the next task starts a fresh one; one that dies is replaced the same way.
A worker retires (finishes, then exits) after L{WorkerPool.recycle_after}
tasks, after a task that failed, and when it says it should (threads left
running, its CPU time used up), so that what one task leaves behind reaches
few others: docs/tasks.rst describes what a task may see of the last.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from picluster.logbudget import LogBudget
from picluster.tasks import child
from picluster.tasks.childmain import HEADER, frame
from picluster.tasks.errors import TRACEBACK_LIMIT, TaskFailed, error_payload

log = Logger()

#: Tasks a worker runs before it is replaced, unless told otherwise.
RECYCLE_AFTER = 1000

#: Seconds an idle worker is kept: past it, it exits and frees its memory.
IDLE_AFTER = 300.0


class Worker(child.Killable):
    """
    One worker process: sends it a request, reads back its outcome.

    L{gone} fires once the process has ended, whatever happened.

    @ivar retiring: Why it takes no more tasks, or C{None} while it may.
    """

    def __init__(self, clock: Any, max_outcome: int):
        super().__init__(clock)
        self.max_outcome = max_outcome
        self.tasks_run = 0
        self.exited = False
        self.retiring: str | None = None
        self.idle_call: IDelayedCall | None = None
        self.gone: defer.Deferred[None] = defer.Deferred()
        self._outcome: defer.Deferred[Any] | None = None
        self._stdout = bytearray()
        self._stderr = bytearray()

    @property
    def busy(self) -> bool:
        return self._outcome is not None

    def run(self, request: bytes) -> defer.Deferred[Any]:
        """
        Send it C{request}; fires with the outcome it sends back.  Cancelling
        it kills the worker (and whatever the task started).
        """
        self._outcome = defer.Deferred(lambda _: self.kill())
        self._stderr.clear()
        self.tasks_run += 1
        self.transport.write(frame(request))
        return self._outcome

    def wake(self) -> None:
        """Forget its idle timeout: it has work, or is going."""
        if self.idle_call is not None and self.idle_call.active():
            self.idle_call.cancel()

    def retire(self, why: str) -> None:
        """Take no more tasks: exit once idle (stdin closed), or be killed."""
        if self.retiring is None:
            self.retiring = why
        if self.busy or self.killed or self.exited:
            return
        self.transport.closeStdin()
        # Its task's threads could keep it from exiting.
        self._kill_call = self.clock.callLater(child.KILL_AFTER, self.kill)

    def kill(self) -> None:
        self.retiring = self.retiring or "killed"
        if self._kill_call is not None and self._kill_call.active():
            self._kill_call.cancel()
        super().kill()

    def childDataReceived(self, fd: int, data: bytes) -> None:
        if fd == 2:
            # What the task printed: its tail tells why a worker died.
            self._stderr.extend(data)
            del self._stderr[:-TRACEBACK_LIMIT]
            return
        if fd != 1:
            return
        self._stdout.extend(data)
        while len(self._stdout) >= HEADER.size:
            (length,) = HEADER.unpack_from(self._stdout)
            if length > self.max_outcome:
                # The worker checks this itself: a stream this far off is broken.
                self.kill()
                self._answer(TaskFailed(error_payload(
                    "ResultTooLarge", f"the result is larger than {self.max_outcome} bytes")))
                return
            if len(self._stdout) < HEADER.size + length:
                return
            payload = bytes(self._stdout[HEADER.size:HEADER.size + length])
            del self._stdout[:HEADER.size + length]
            try:
                outcome = json.loads(payload)
            except ValueError:
                outcome = None
            if isinstance(outcome, dict) and outcome.get("retire"):
                self.retiring = str(outcome["retire"])
            self._answer(outcome)

    def processExited(self, reason: Failure) -> None:
        # What its tasks started and left behind (a background subprocess
        # holding its stderr) goes with it: else the worker's pipes never
        # close, it never ends, and a slave stopping would wait for it.
        if self.pgid is not None:
            child.signal_group(self.pgid, signal.SIGKILL)

    def processEnded(self, reason: Failure) -> None:
        self.ended()
        self.exited = True
        exit_code, killed_by = reason.value.exitCode, reason.value.signal
        self.retiring = self.retiring or "exited"
        if not self.killed:
            if killed_by is not None:
                self._answer(child.crashed("the task's worker", killed_by))
            else:
                self._answer(child.no_outcome(exit_code, bytes(self._stderr)))
        self.gone.callback(None)

    def abandon(self) -> None:
        """Fail whoever waits for its task's outcome (L{defer.CancelledError}): it will not come."""
        self._answer(defer.CancelledError())

    def _answer(self, outcome: Any) -> None:
        waiting, self._outcome = self._outcome, None
        if waiting is None or waiting.called:
            return
        if isinstance(outcome, Exception):
            waiting.errback(outcome)
        else:
            waiting.callback(outcome)


class WorkerPool:
    """
    Up to L{size} warm workers, each running one task at a time.

    The runner holds process runs to its slots, so the pool never has more
    tasks than L{size}; should it, it starts another worker rather than wait.
    """

    def __init__(self, reactor: Any, clock: Any, *, size: int, argv: Sequence[str],
                 environment: Callable[[], dict[str, str]], max_outcome: int,
                 recycle_after: int = RECYCLE_AFTER):
        self.size = size
        self.argv = list(argv)
        self.max_outcome = max_outcome
        #: Tasks a worker runs before it retires.
        self.recycle_after = recycle_after
        self._reactor = reactor
        self._clock = clock
        self._environment = environment
        self._env: dict[str, str] | None = None
        self._idle: list[Worker] = []
        #: Every worker not yet gone, idle, busy or retiring.
        self.workers: set[Worker] = set()
        #: Lines about workers that went, and why: few, unless tasks keep
        #: failing (each failure retires its worker), then counted.
        self.gone_log = LogBudget(
            log, clock, "Left out of the log in the last {seconds:g} s: {count:,} task workers gone",
            lines=20,
        )

    def run(self, request: bytes) -> defer.Deferred[Any]:
        """
        Run C{request} in an idle worker, or a new one; fires with its outcome.
        Cancelling it kills that worker.
        """
        try:
            worker = self._idle.pop() if self._idle else self._start()
        except child.CommandFailed:
            return defer.fail()
        worker.wake()
        running = worker.run(request)
        running.addBoth(self._done, worker)
        return running

    def stop(self) -> defer.Deferred[None]:
        """Kill every worker; fires once they are gone."""
        workers = list(self.workers)
        self._idle.clear()
        for worker in workers:
            worker.wake()
            worker.kill()
            worker.abandon()
        gone = defer.DeferredList([worker.gone for worker in workers], consumeErrors=True)
        return gone.addCallback(lambda _: self.gone_log.flush())

    def _start(self) -> Worker:
        if self._env is None:
            # Worked out once: it walks sys.path on disk.
            self._env = self._environment()
        worker = Worker(self._clock, self.max_outcome)
        child.start(self._reactor, worker, self.argv, self._env)
        self.workers.add(worker)
        worker.gone.addCallback(self._gone, worker)
        return worker

    def _done(self, outcome: Any, worker: Worker) -> Any:
        """Put the worker back for the next task, or retire it."""
        if worker.retiring is None:
            if not isinstance(outcome, dict) or outcome.get("outcome") != "done":
                # A failed task may have left things half done.
                worker.retiring = "its task failed"
            elif worker.tasks_run >= self.recycle_after:
                worker.retiring = f"it ran {worker.tasks_run} tasks"
        if worker.retiring is not None or len(self._idle) >= self.size:
            worker.retire(worker.retiring or "too many idle")
        else:
            worker.idle_call = self._clock.callLater(IDLE_AFTER, self._idled_out, worker)
            self._idle.append(worker)
        return outcome

    def _idled_out(self, worker: Worker) -> None:
        if worker in self._idle:
            self._idle.remove(worker)
        worker.retire(f"idle for {IDLE_AFTER:g} s")

    def _gone(self, _: None, worker: Worker) -> None:
        why = worker.retiring or "exited"
        self.gone_log.info("gone", "Task worker {pid} gone after {count} tasks: {why}",
                           pid=worker.pgid, count=worker.tasks_run, why=why)
        self.workers.discard(worker)
        if worker in self._idle:
            self._idle.remove(worker)
        worker.wake()
