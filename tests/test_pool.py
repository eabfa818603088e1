"""
Tests for L{picluster.slave.pool}, the slave's warm workers, and for the
worker's own loop (L{picluster.tasks.childmain.serve}).

L{PoolTests} drive the pool through a L{TaskRunner} on the fake reactor of
L{tests.test_worker}; L{ServeTests} run the worker loop in this process on
byte streams; L{RealWorkerTests} run real workers, for what only processes
can show: reuse, isolation, limits, and that none outlives its slave.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
from typing import Any

from twisted.internet import defer
from twisted.logger import capturedLogs, formatEvent
from twisted.trial import unittest

from picluster.slave.pool import IDLE_AFTER
from picluster.slave.runner import TaskRunner
from picluster.tasks import Task, TaskCatalog
from picluster.tasks.builtin import BUILTIN_TASKS
from picluster.tasks.child import KILL_AFTER, task_environment
from picluster.tasks.childmain import HEADER, Limits, frame, serve
from tests.processes import wait_until
from tests.test_worker import RunnerTestCase, Spawned, as_sent, run
from tests.workertasks import (
    burn,
    count_runs,
    fail,
    leave_sleeper,
    leave_thread,
    sleep_forever,
    wander,
    whoami,
)


class PoolTests(RunnerTestCase):
    """
    Process runs share warm workers, one task at a time each, and a worker
    that failed, ran its share, idled or died is replaced.
    """

    def start_primes(self, runner: TaskRunner, task_id: int = 1) -> Spawned:
        """Start a primes run; the worker it was sent to."""
        sent = {id(each): len(each.transport.stdin) for each in self.reactor.spawned}
        runner.start(run(task_id, "primes", {"start": 0, "stop": 100}))
        [worker] = [each for each in self.reactor.spawned
                    if len(each.transport.stdin) != sent.get(id(each), 0)]
        return worker

    def finish(self, runner: TaskRunner, child: Spawned, task_id: int, outcome: Any) -> None:
        child.answer(outcome)
        self.reactor.advance(0)
        runner.acknowledged(task_id, 1)
        self.notified.clear()

    def test_reused(self) -> None:
        """A worker that has answered runs the next task: no new process."""
        runner = self.make_runner()
        child = self.start_primes(runner)
        self.finish(runner, child, 1, {"outcome": "done", "result": 25})
        self.start_primes(runner, 2)
        self.assertEqual(len(self.reactor.spawned), 1)
        self.assertEqual(len(child.requests()), 2)
        child.answer({"outcome": "done", "result": 26})
        self.assertEqual(self.only_result(runner)["result"], 26)
        self.assertFalse(child.transport.stdin_closed)

    def test_onePerRun(self) -> None:
        """Runs at once get a worker each; both are kept for later runs."""
        runner = self.make_runner(slots=2)
        first = self.start_primes(runner, 1)
        second = self.start_primes(runner, 2)
        self.assertIsNot(first, second)
        self.finish(runner, first, 1, {"outcome": "done", "result": 1})
        self.finish(runner, second, 2, {"outcome": "done", "result": 2})
        self.start_primes(runner, 3)
        self.start_primes(runner, 4)
        self.assertEqual(len(self.reactor.spawned), 2)
        self.assertEqual(len(runner.workers.workers), 2)

    def test_failedRetires(self) -> None:
        """After a failed task the worker exits (stdin closed) and the next task gets a new one."""
        runner = self.make_runner()
        child = self.start_primes(runner)
        error = {"type": "ValueError", "message": "no", "traceback": None, "kind": "error"}
        self.finish(runner, child, 1, {"outcome": "failed", "error": error})
        self.assertTrue(child.transport.stdin_closed)
        self.assertIsNot(self.start_primes(runner, 2), child)
        child.end(0)
        self.assertEqual(len(runner.workers.workers), 1)

    def test_workerAsksToRetire(self) -> None:
        """A worker that says it should go (threads left, CPU spent) is not given another task."""
        runner = self.make_runner()
        child = self.start_primes(runner)
        self.finish(runner, child, 1, {"outcome": "done", "result": 1,
                                       "retire": "it left threads running"})
        self.assertEqual(runner.results, [])
        self.assertTrue(child.transport.stdin_closed)
        self.assertIsNot(self.start_primes(runner, 2), child)

    def test_goneSaidInTheLog(self) -> None:
        """A worker that goes says why in the slave's log, with how many tasks it ran."""
        runner = self.make_runner(recycle_after=2)
        child = self.start_primes(runner, 1)
        self.finish(runner, child, 1, {"outcome": "done", "result": 1})
        self.start_primes(runner, 2)
        self.finish(runner, child, 2, {"outcome": "done", "result": 1})
        with capturedLogs() as events:
            child.end(0)
        lines = [formatEvent(event) for event in events]
        [line] = [line for line in lines if line.startswith("Task worker ")]
        self.assertRegex(line, r"^Task worker \S+ gone after 2 tasks: it ran 2 tasks$")

    def test_recycledAfter(self) -> None:
        """A worker retires after recycle_after tasks."""
        runner = self.make_runner(recycle_after=2)
        child = self.start_primes(runner, 1)
        self.finish(runner, child, 1, {"outcome": "done", "result": 1})
        self.assertIs(self.start_primes(runner, 2), child)
        self.finish(runner, child, 2, {"outcome": "done", "result": 1})
        self.assertTrue(child.transport.stdin_closed)
        self.assertIsNot(self.start_primes(runner, 3), child)

    def test_retiredThatStaysIsKilled(self) -> None:
        """A retired worker that does not exit (a task's threads) is killed."""
        runner = self.make_runner(recycle_after=1)
        child = self.start_primes(runner)
        self.finish(runner, child, 1, {"outcome": "done", "result": 1})
        self.reactor.advance(KILL_AFTER)
        self.assertEqual(child.transport.signals, ["TERM"])
        self.reactor.advance(KILL_AFTER)
        self.assertEqual(child.transport.signals, ["TERM", "KILL"])
        child.end(None, signal.SIGKILL)
        self.assertEqual((runner.workers.workers, self.reactor.getDelayedCalls()), (set(), []))

    def test_idleRetires(self) -> None:
        """A worker idle for IDLE_AFTER seconds exits; none is left waiting."""
        runner = self.make_runner()
        child = self.start_primes(runner)
        self.finish(runner, child, 1, {"outcome": "done", "result": 1})
        self.reactor.advance(IDLE_AFTER - 1)
        self.assertFalse(child.transport.stdin_closed)
        self.reactor.advance(1)
        self.assertTrue(child.transport.stdin_closed)
        child.end(0)
        self.assertEqual((runner.workers.workers, self.reactor.getDelayedCalls()), (set(), []))

    def test_crashReplaced(self) -> None:
        """A worker killed under its task fails it as crashed; the next task has a new worker."""
        runner = self.make_runner()
        child = self.start_primes(runner)
        child.end(None, signal.SIGSEGV)
        result = self.only_result(runner)
        self.assertEqual((result["error"]["kind"], result["retry"]), ("crashed", True))
        self.assertIn("SIGSEGV", result["error"]["message"])
        runner.acknowledged(1, 1)
        self.assertIsNot(self.start_primes(runner, 2), child)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_idleDeathReplaced(self) -> None:
        """A worker that dies while idle is forgotten, and fails no task."""
        runner = self.make_runner()
        child = self.start_primes(runner)
        self.finish(runner, child, 1, {"outcome": "done", "result": 1})
        self.notified.clear()
        child.end(None, signal.SIGKILL)
        self.reactor.advance(0)
        self.assertEqual((self.notified, runner.workers.workers), ([], set()))
        self.assertIsNot(self.start_primes(runner, 2), child)

    def test_noOutcome(self) -> None:
        """A worker exiting without an outcome fails its task with the last line it printed."""
        runner = self.make_runner()
        child = self.start_primes(runner)
        child.protocol.childDataReceived(2, b"earlier task's noise\n")
        child.end(1, stderr=b"Traceback...\nImportError: no numpy\n")
        error = self.only_result(runner)["error"]
        self.assertEqual(error["message"],
                         "the task's child exited with 1 without an outcome: ImportError: no numpy")
        self.assertEqual(error["kind"], "error")

    def test_timeoutReplaces(self) -> None:
        """A worker killed at a timeout is not reused."""
        runner = self.make_runner()
        child = self.start_primes(runner)
        runner.start(run(2, "primes", {"start": 0, "stop": 10}, timeout=1))
        timed = self.reactor.spawned[-1]
        self.reactor.advance(1)
        self.assertEqual(timed.transport.signals, ["TERM"])
        timed.end(None, signal.SIGTERM)
        self.finish(runner, child, 1, {"outcome": "done", "result": 1})
        runner.acknowledged(2, 1)
        self.assertIs(self.start_primes(runner, 3), child)
        self.assertEqual(len(runner.workers.workers), 1)

    def test_stopKillsIdle(self) -> None:
        """stop() kills idle workers too, and fires once every one is gone."""
        runner = self.make_runner()
        idle = self.start_primes(runner, 1)
        busy = self.start_primes(runner, 2)
        self.finish(runner, idle, 1, {"outcome": "done", "result": 1})
        stopped = runner.stop()
        self.assertEqual((idle.transport.signals, busy.transport.signals), (["TERM"], ["TERM"]))
        busy.end(None, signal.SIGTERM)
        self.assertNoResult(stopped)
        idle.end(None, signal.SIGTERM)
        self.successResultOf(stopped)
        self.assertEqual((runner.results, self.reactor.getDelayedCalls()), ([], []))

    def test_cannotStart(self) -> None:
        """A worker that cannot start fails the task, and nothing is kept."""
        runner = self.make_runner()

        def refuse(*args: Any, **kwargs: Any) -> None:
            raise OSError("no more processes")

        self.reactor.spawnProcess = refuse  # type: ignore[method-assign]
        runner.start(run(1, "primes", {"start": 0, "stop": 10}))
        self.assertIn("no more processes", self.only_result(runner)["error"]["message"])
        self.assertEqual(runner.workers.workers, set())


class ServeTests(unittest.TestCase):
    """
    The worker's loop: framed requests in, framed outcomes out, and what it
    puts back between tasks.
    """

    def serve(self, *requests: Any, max_outcome: int | None = None) -> list[dict[str, Any]]:
        stream = b"".join(
            frame(request if isinstance(request, bytes) else json.dumps(request).encode())
            for request in requests
        )
        answers = io.BytesIO()
        serve(io.BytesIO(stream), answers, Limits(None, None), max_outcome)
        data, outcomes = answers.getvalue(), []
        while data:
            (length,) = HEADER.unpack_from(data)
            outcomes.append(json.loads(data[HEADER.size:HEADER.size + length]))
            data = data[HEADER.size + length:]
        return outcomes

    def test_eachRequest(self) -> None:
        """Each request gets its outcome, in order; the loop ends when the stream does."""
        outcomes = self.serve(
            {"function": "picluster.tasks.primes:primes", "args": {"start": 0, "stop": 100}},
            {"function": "tests.workertasks:fail", "args": {}},
            {"function": "picluster.tasks.primes:primes", "args": {"start": 0, "stop": 10}},
        )
        self.assertEqual([each["outcome"] for each in outcomes], ["done", "failed", "done"])
        self.assertEqual((outcomes[0]["result"], outcomes[2]["result"]), (25, 4))
        self.assertEqual(outcomes[1]["error"]["message"], "failed on purpose")

    def test_surroundingsRestored(self) -> None:
        """A task's cwd, environment and sys.path changes are undone before the next."""
        before = (os.getcwd(), os.environ.get("PICLUSTER_TEST_MARKER"), sys.path[:])
        directory = os.path.abspath(self.mktemp())
        os.mkdir(directory)
        self.serve({"function": "tests.workertasks:wander", "args": {"directory": directory}})
        self.assertEqual((os.getcwd(), os.environ.get("PICLUSTER_TEST_MARKER"), sys.path), before)

    def test_badRequests(self) -> None:
        """A request that is not JSON, or not a request, fails on its own."""
        outcomes = self.serve(b"{nope", ["a list"], {"function": "nosuchmodule:f", "args": {}})
        self.assertEqual([each["error"]["type"] for each in outcomes],
                         ["BadRequest", "ValueError", "ModuleNotFoundError"])

    def test_tooLarge(self) -> None:
        """An outcome over --max-outcome is replaced by a ResultTooLarge failure."""
        [outcome] = self.serve({"function": "tests.workertasks:count_runs", "args": {}}, max_outcome=20)
        self.assertEqual(outcome["error"]["type"], "ResultTooLarge")

    def test_threadsLeft(self) -> None:
        """A task that leaves a thread running asks for its worker to retire."""
        [outcome] = self.serve({"function": "picluster.tasks.primes:primes",
                                "args": {"start": 0, "stop": 10}})
        self.assertNotIn("retire", outcome)
        event = threading.Event()
        thread = threading.Thread(target=event.wait)
        thread.start()
        self.addCleanup(thread.join)
        self.addCleanup(event.set)
        [outcome] = self.serve({"function": "picluster.tasks.primes:primes",
                                "args": {"start": 0, "stop": 10}})
        self.assertEqual(outcome["retire"], "it left threads running")


class RealWorkerTests(unittest.TestCase):
    """
    Real workers on the real reactor: reuse, isolation, limits, and no orphans.
    """

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.reactor = reactor
        registry = TaskCatalog([
            *BUILTIN_TASKS,
            *(Task(f.__name__, f, "process")
              for f in (whoami, wander, count_runs, fail, leave_thread, burn, sleep_forever,
                        leave_sleeper)),
        ])
        self.runner = TaskRunner(registry, slots=1, clock=reactor, reactor=reactor,
                                 task_memory=256 * 1024 * 1024, task_cpu=1)
        self.addCleanup(self.runner.stop)
        self.next_id = 0

    @defer.inlineCallbacks
    def result_of(self, name: str, timeout: float | None = None, **args: Any) -> Any:
        self.next_id += 1
        d: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self.runner.on_result = d.callback
        self.runner.start(run(self.next_id, name, args, timeout=timeout))
        result = yield d.addTimeout(15, self.reactor)
        self.runner.acknowledged(self.next_id, 1)
        return as_sent(result)

    @defer.inlineCallbacks
    def test_reusedAndIsolated(self) -> None:
        """Tasks share a worker; cwd, environment, sys.path and stdin are as at its start."""
        first = (yield self.result_of("whoami"))["result"]
        directory = os.path.abspath(self.mktemp())
        os.mkdir(directory)
        wandered = (yield self.result_of("wander", directory=directory))["result"]
        after = (yield self.result_of("whoami"))["result"]
        self.assertEqual(wandered, first["pid"])
        self.assertEqual(after, first)
        self.assertEqual((after["marker"], after["stdin"]), (None, ""))

    @defer.inlineCallbacks
    def test_modulesStay(self) -> None:
        """Module globals last as long as the worker: documented, and bounded by recycling."""
        first = (yield self.result_of("count_runs"))["result"]
        second = (yield self.result_of("count_runs"))["result"]
        self.assertEqual((first, second), (1, 2))
        self.runner.workers.recycle_after = 1
        yield self.result_of("count_runs")
        self.assertEqual((yield self.result_of("count_runs"))["result"], 1)

    @defer.inlineCallbacks
    def test_replacedAfterFailure(self) -> None:
        """A task that raised, or left a thread running, is followed by a fresh worker."""
        before = (yield self.result_of("whoami"))["result"]["pid"]
        yield self.result_of("fail")
        after_failure = (yield self.result_of("leave_thread"))["result"]
        after_thread = (yield self.result_of("whoami"))["result"]["pid"]
        self.assertEqual(len({before, after_failure, after_thread}), 3)

    @defer.inlineCallbacks
    def test_cpuTimePerTask(self) -> None:
        """Each task gets --task-cpu seconds; a worker that spent them retires, the next task runs."""
        first = (yield self.result_of("burn", seconds=0.6))["result"]
        second = (yield self.result_of("burn", seconds=0.6))["result"]
        third = (yield self.result_of("burn", seconds=0.1))["result"]
        self.assertEqual(first, second)
        self.assertNotEqual(second, third)
        error = (yield self.result_of("burn", seconds=5))["error"]
        self.assertEqual(error["type"], "CpuTimeLimitExceeded")

    @defer.inlineCallbacks
    def test_timeoutThenNext(self) -> None:
        """A task killed at its timeout takes its worker; the next task runs in another."""
        before = (yield self.result_of("whoami"))["result"]["pid"]
        result = yield self.result_of("sleep_forever", timeout=0.5)
        self.assertEqual(result["error"]["kind"], "timeout")
        yield wait_until(lambda: _gone(before), "the timed-out worker to go", timeout=10)
        after = (yield self.result_of("whoami"))["result"]["pid"]
        self.assertNotEqual(before, after)

    @defer.inlineCallbacks
    def test_stopLeavesNoWorker(self) -> None:
        """A slave's stop ends its workers, busy and idle."""
        self.runner.slots = 2
        self.runner.workers.size = 2
        idle = (yield self.result_of("whoami"))["result"]["pid"]
        self.runner.start(run(100, "sleep_forever"))
        [busy] = [w.transport.pid for w in self.runner.workers.workers if w.busy]
        yield self.runner.stop().addTimeout(10, self.reactor)
        self.assertTrue(_gone(idle) and _gone(busy))
        self.assertEqual(self.runner.workers.workers, set())


    @defer.inlineCallbacks
    def test_leftoverSubprocessGoesWithWorker(self) -> None:
        """
        A subprocess a task left running (holding the worker's stderr) goes
        when its worker retires: the worker ends, and a stop does not wait
        for it forever.
        """
        self.runner.workers.recycle_after = 1
        sleeper = (yield self.result_of("leave_sleeper"))["result"]
        yield wait_until(lambda: _gone(sleeper), "the task's leftover subprocess to go", timeout=10)
        yield wait_until(lambda: not self.runner.workers.workers, "the retired worker to end", timeout=10)


class OrphanTests(unittest.TestCase):
    """
    A worker whose slave died (its stdin closed) exits, rather than linger.
    """

    def test_exitsOnEndOfInput(self) -> None:
        """An idle worker whose stdin closes exits at once, cleanly."""
        worker = subprocess.Popen([sys.executable, "-m", "picluster.tasks.childmain"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  env=task_environment())
        request = {"function": "picluster.tasks.primes:primes", "args": {"start": 0, "stop": 100}}
        out, _ = worker.communicate(frame(json.dumps(request).encode()), timeout=30)
        self.assertEqual(worker.returncode, 0)
        (length,) = HEADER.unpack_from(out)
        self.assertEqual(json.loads(out[HEADER.size:HEADER.size + length])["result"], 25)


def _gone(pid: int) -> bool:
    """Whether C{pid} has ended (a zombie awaiting its reaper counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1].startswith("Z")
    except FileNotFoundError:
        return True
