"""
Tests for L{picluster.slave.runner.TaskRunner}, the slave side of distributed tasks.

Most tests use L{FakeReactor}: a Clock with a thread pool that runs only when
told and a spawnProcess that records the child and lets the test end it.
L{RealProcessTests} run real children where the behaviour is about processes.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any

import msgspec
from twisted.internet import defer
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial import unittest

from picluster import wire
from picluster.slave.ready import MAX_READY_BYTES
from picluster.slave.results import (
    DEFAULT_MAX_RESULT,
    MAX_WAITING_BYTES,
    MAX_WAITING_RESULTS,
    RESULT_ENVELOPE_ROOM,
)
from picluster.slave.runner import TaskRunner
from picluster.tasks import Task, TaskCatalog
from picluster.tasks.builtin import BUILTIN_TASKS
from picluster.tasks.childmain import HEADER, frame
from picluster.tasks.errors import MESSAGE_LIMIT
from picluster.text import MAX_TEXT
from picluster.wire import BadMessage, messages
from picluster.wire.messages import Run, RunTask


def in_own_group(argv: list[str]) -> list[str]:
    """The arguments a command is spawned with: led by setsid where there is one."""
    from picluster.tasks import child

    return [child.SETSID, *argv] if child.SETSID else argv


# Module-level, so that a child process can import them.
def explode() -> None:
    raise ValueError("boom")


def explode_at_length() -> None:
    raise ValueError("x" * 10 * 1024 * 1024)


def print_and_answer() -> dict[str, bool]:
    print("noise on stdout")
    os.write(1, b"more noise, straight to fd 1\n")
    return {"ok": True}


def die_by_signal() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def sleep_forever() -> None:
    time.sleep(3600)


def allocate(megabytes: int) -> int:
    return len(bytearray(megabytes * 1024 * 1024))


def spin() -> None:
    while True:
        pass


def threads_allocating(count: int) -> int:
    """Start C{count} threads one by one, each allocating as it starts; all wait for the last."""
    import threading

    allocated = threading.Semaphore(0)
    finish = threading.Event()
    kept = []

    def work() -> None:
        # Below malloc's mmap threshold: from an arena, a new one per thread if it may.
        kept.append([bytearray(100_000) for _ in range(20)])
        allocated.release()
        finish.wait()

    started = []
    try:
        for _ in range(count):
            thread = threading.Thread(target=work)
            thread.start()
            started.append(thread)
            allocated.acquire()
    finally:
        finish.set()
        for thread in started:
            thread.join()
    return len(kept)


class ManualThreadPool:
    """A thread pool whose work runs only when the test says so."""

    def __init__(self) -> None:
        self.queued: list[tuple[Any, ...]] = []

    def callInThreadWithCallback(self, on_result: Any, function: Any, *args: Any,
                                 **kwargs: Any) -> None:
        self.queued.append((on_result, function, args, kwargs))

    def run_all(self) -> None:
        while self.queued:
            on_result, function, args, kwargs = self.queued.pop(0)
            try:
                result = function(*args, **kwargs)
            except BaseException:
                on_result(False, Failure())
            else:
                on_result(True, result)


class FakeProcessTransport:
    def __init__(self) -> None:
        self.stdin = b""
        self.stdin_closed = False
        self.signals: list[str] = []
        self.ended = False

    def write(self, data: bytes) -> None:
        self.stdin += data

    def closeStdin(self) -> None:
        self.stdin_closed = True

    def signalProcess(self, name: str) -> None:
        if self.ended:
            raise ProcessExitedAlready()
        self.signals.append(name)


class Spawned:
    """A child the fake reactor started."""

    def __init__(self, protocol: Any, executable: str, args: list[str], env: Any) -> None:
        self.protocol, self.executable, self.args, self.env = protocol, executable, args, env
        self.transport = FakeProcessTransport()
        protocol.makeConnection(self.transport)

    def end(self, exit_code: int | None = 0, signal: int | None = None,
            stdout: bytes = b"", stderr: bytes = b"") -> None:
        if stdout:
            self.protocol.childDataReceived(1, stdout)
        if stderr:
            self.protocol.childDataReceived(2, stderr)
        self.transport.ended = True
        reason = ProcessDone(0) if exit_code == 0 else ProcessTerminated(exit_code, signal)
        self.protocol.processEnded(Failure(reason))

    def requests(self) -> list[Any]:
        """Every request framed on its stdin."""
        found, data = [], self.transport.stdin
        while data:
            (length,) = HEADER.unpack_from(data)
            found.append(json.loads(data[HEADER.size:HEADER.size + length]))
            data = data[HEADER.size + length:]
        return found

    def request(self) -> Any:
        return self.requests()[-1]

    def answer(self, outcome: Any) -> None:
        """Send back an outcome, framed, as a worker does."""
        self.protocol.childDataReceived(1, frame(json.dumps(outcome).encode()))


class FakeReactor(MemoryReactorClock):
    def __init__(self) -> None:
        super().__init__()
        #: Given to the runner as its thread pool.
        self.pool = ManualThreadPool()
        self.spawned: list[Spawned] = []

    def callFromThread(self, function: Any, *args: Any, **kwargs: Any) -> None:
        function(*args, **kwargs)

    def spawnProcess(self, protocol: Any, executable: str, args: Any = (), env: Any = None,
                     path: Any = None, uid: Any = None, gid: Any = None, usePTY: Any = False,
                     childFDs: Any = None) -> FakeProcessTransport:
        self.spawned.append(Spawned(protocol, executable, list(args), env))
        return self.spawned[-1].transport


def run(task_id: int, name: str, args: dict[str, Any] | None = None,
        timeout: float | None = None, attempt: int = 1) -> RunTask:
    """A run_task payload."""
    return RunTask(task_id, attempt, name, args or {}, timeout)


def as_sent(payload: dict[str, Any]) -> dict[str, Any]:
    """
    A task_result payload as the master reads it: a waiting result keeps
    its result as JSON (a msgspec.Raw), written into the frame as it is.
    """
    return msgspec.json.decode(wire.encode(payload))


class Pending:
    """A reactor task whose Deferreds the test fires, noting cancellations."""

    def __init__(self) -> None:
        self.deferreds: list[defer.Deferred[Any]] = []
        self.cancelled = 0

    def __call__(self) -> defer.Deferred[Any]:
        self.deferreds.append(defer.Deferred(self._cancelled))
        return self.deferreds[-1]

    def _cancelled(self, d: defer.Deferred[Any]) -> None:
        self.cancelled += 1


class RunnerTestCase(unittest.TestCase):
    """A runner on a FakeReactor with the built-ins and a few test tasks."""

    def setUp(self) -> None:
        self.reactor = FakeReactor()
        self.pending = Pending()
        self.notified: list[dict[str, Any]] = []

    def make_runner(self, *tasks: Task, slots: int = 2, **settings: Any) -> TaskRunner:
        registry = TaskCatalog([
            *BUILTIN_TASKS,
            Task("answer", lambda: 42, "reactor"),
            Task("pending", self.pending, "reactor"),
            Task("explode", explode, "reactor"),
            Task("in_thread", lambda value: value * 2, "thread"),
            *tasks,
        ])
        runner = TaskRunner(registry, slots=slots, clock=self.reactor, reactor=self.reactor,
                            thread_pool=self.reactor.pool, **settings)
        runner.on_result = self.notified.append
        return runner

    def only_result(self, runner: TaskRunner) -> dict[str, Any]:
        """The one result, once it has been handed on, as the master reads it."""
        self.reactor.advance(0)
        [result] = runner.results
        self.assertEqual(self.notified, [result])
        return as_sent(result)


class StartTests(RunnerTestCase):
    """
    start() refuses with BadMessage only what the master should re-queue or never send.
    """

    def test_malformed(self) -> None:
        """Payloads of the wrong shape never reach the runner: the declaration refuses them."""
        good = {"id": 1, "attempt": 1, "name": "answer", "args": {}, "timeout": None}
        decode = messages.DECODERS["run_task"].decode
        self.assertEqual(decode(json.dumps(good)), run(1, "answer"))
        for bad in (
            [], {**good, "id": "1"}, {**good, "id": True}, {**good, "attempt": 0},
            {**good, "attempt": 1.0}, {**good, "name": None}, {**good, "args": []},
            {**good, "timeout": 0}, {**good, "timeout": -1}, {**good, "timeout": "5"},
            {**good, "timeout": True},
        ):
            self.assertRaises(msgspec.ValidationError, decode, json.dumps(bad))

    def test_defaults(self) -> None:
        """Absent args and timeout mean none."""
        runner = self.make_runner()
        runner.start(RunTask(1, 1, "answer"))
        self.assertEqual(self.only_result(runner)["result"], 42)

    def test_unknownTask(self) -> None:
        """A task this slave does not have starts and fails at once, as unknown_task."""
        runner = self.make_runner()
        runner.start(run(1, "nothing"))
        result = self.only_result(runner)
        self.assertEqual((result["outcome"], result["error"]["kind"]), ("failed", "unknown_task"))
        self.assertIn("'nothing'", result["error"]["message"])
        self.assertEqual(runner.holding(), [])

    def test_noFreeSlot(self) -> None:
        """A run beyond the slots is refused, and a finished run frees its slot."""
        runner = self.make_runner(slots=1)
        runner.start(run(1, "pending"))
        e = self.assertRaises(BadMessage, runner.start, run(2, "answer"))
        self.assertEqual(e.payload(), {"error": "no free slot", "slots": 1, "prefetch": 0,
                                       "ready_bytes": 0, "max_ready_bytes": MAX_READY_BYTES})
        self.pending.deferreds[0].callback("ok")
        runner.start(run(2, "answer"))

    def test_alreadyRunning(self) -> None:
        """A task already running is refused, whatever the attempt."""
        runner = self.make_runner()
        runner.start(run(1, "pending"))
        e = self.assertRaises(BadMessage, runner.start, run(1, "pending", attempt=2))
        self.assertEqual(e.payload(), {"error": "task already running", "id": 1, "attempt": 1})
        self.assertEqual(runner.holding(), [Run(1, 1)])

    def test_holdingAndOffers(self) -> None:
        """holding() lists runs in progress; offers() every task name."""
        runner = self.make_runner()
        runner.start(run(1, "pending", attempt=3))
        runner.start(run(2, "answer"))
        self.assertEqual(runner.holding(), [Run(1, 3)])
        self.assertEqual(runner.offers(), sorted(runner.registry.names()))
        self.assertEqual(runner.slots, 2)

    def test_logged(self) -> None:
        """Start and end are logged with id, attempt, name and duration."""
        runner = self.make_runner()
        with capturedLogs() as events:
            runner.start(run(7, "pending", attempt=2))
            self.reactor.advance(1.5)
            self.pending.deferreds[0].callback(None)
        started, ended = [formatEvent(e) for e in events]
        self.assertEqual(started, "Task 7 attempt 2 (pending) started")
        self.assertEqual(ended, "Task 7 attempt 2 (pending) done after 1.5 s")
        self.assertEqual(events[1]["duration"], 1.5)

    def test_busySlaveSumsUp(self) -> None:
        """Past the log budget, runs are counted and summed up at the interval's end."""
        runner = self.make_runner(slots=1)
        lines = runner.run_log.lines
        with capturedLogs() as events:
            for task_id in range(lines):  # two lines each
                runner.start(run(task_id, "answer"))
            self.reactor.advance(runner.run_log.interval)
        self.assertEqual(len(events), lines + 1)
        self.assertEqual(formatEvent(events[-1]),
                         f"Left out of the log in the last 10 s: task runs {lines // 2:,} started,"
                         f" {lines // 2:,} done (the master's task database has every task)")

    def test_summedUpOnStop(self) -> None:
        """What was left out is said when the runner stops."""
        runner = self.make_runner()
        runner.run_log.lines = 0
        runner.start(run(1, "answer"))
        with capturedLogs() as events:
            self.successResultOf(runner.stop())
        self.assertIn("1 started, 1 done", formatEvent(events[-1]))


class ResultTests(RunnerTestCase):
    """
    Every finished run leaves one task_result payload until it is acknowledged.
    """

    def test_done(self) -> None:
        """A value becomes a done result, handed on a reactor turn later."""
        runner = self.make_runner()
        runner.start(run(1, "echo", {"a": [1, "b"]}))
        self.assertEqual(self.notified, [])
        self.assertEqual(self.only_result(runner), {
            "id": 1, "attempt": 1, "outcome": "done", "result": {"a": [1, "b"]}, "error": None,
        })

    def test_deferred(self) -> None:
        """A Deferred's result is the run's result."""
        runner = self.make_runner()
        runner.start(run(1, "pending"))
        self.reactor.advance(0)
        self.assertEqual(runner.results, [])
        self.pending.deferreds[0].callback("later")
        self.assertEqual(self.only_result(runner)["result"], "later")

    def test_coroutine(self) -> None:
        """An async reactor task's return value is the run's result."""
        async def later() -> str:
            return await defer.succeed("awaited")

        runner = self.make_runner(Task("later", later, "reactor"))
        runner.start(run(1, "later"))
        self.assertEqual(self.only_result(runner)["result"], "awaited")

    def test_raises(self) -> None:
        """An exception is a failed result of kind error, with its traceback, not retried."""
        runner = self.make_runner()
        runner.start(run(1, "explode"))
        result = self.only_result(runner)
        self.assertEqual((result["outcome"], result["result"]), ("failed", None))
        error = result["error"]
        self.assertEqual((error["type"], error["message"], error["kind"]),
                         ("ValueError", "boom", "error"))
        self.assertIn("ValueError: boom", error["traceback"])
        self.assertNotIn("retry", result)

    def test_notJSON(self) -> None:
        """A result JSON cannot carry is a failure saying so."""
        runner = self.make_runner()
        runner.start(run(1, "echo", {"x": float("nan")}))
        runner.start(run(2, "pending"))
        self.pending.deferreds[0].callback({1, 2})
        self.reactor.advance(0)
        for result in runner.results:
            self.assertEqual(result["error"]["type"], "ResultNotJSON")
            self.assertEqual(result["error"]["kind"], "error")
        self.assertEqual(len(runner.results), 2)

    def test_tooLarge(self) -> None:
        """A result over max_result_bytes is a failure naming the size and the limit."""
        runner = self.make_runner(max_result_bytes=100)
        with capturedLogs() as events:
            runner.start(run(1, "echo", {"x": "y" * 200}))
        error = self.only_result(runner)["error"]
        self.assertEqual(error["type"], "ResultTooLarge")
        self.assertIn("the limit is 100", error["message"])
        self.assertIn("(echo) failed after", formatEvent(events[-1]))

    def test_resultAtTheLimit(self) -> None:
        """A payload of exactly max_result_bytes is sent; one byte more fails the task."""
        def payload_size(text: str) -> int:
            return len(wire.encode({"id": 1, "attempt": 1, "outcome": "done", "result": {"x": text},
                                    "error": None}))

        limit = 1000
        fitting = "y" * (limit - payload_size(""))
        for text, outcome in ((fitting, "done"), (fitting + "y", "failed")):
            runner = self.make_runner(max_result_bytes=limit)
            runner.start(run(1, "echo", {"x": text}))
            self.reactor.advance(0)
            [result] = runner.results
            self.assertEqual(result["outcome"], outcome)

    def test_waitsAsJSON(self) -> None:
        """
        A result waits as its JSON, in the frame's own encoding (not as the
        Python objects, up to a dozen times the size), counted as it is
        held, and reads back as JSON says: tuples as lists, keys as text.
        """
        runner = self.make_runner()
        runner.start(run(1, "pending"))
        self.pending.deferreds[0].callback({"words": ("ab", "é"), 1: [2.5, None]})
        self.reactor.advance(0)
        [result] = runner.results
        self.assertIsInstance(result["result"], msgspec.Raw)
        self.assertEqual(bytes(result["result"]), '{"words":["ab","é"],"1":[2.5,null]}'.encode())
        self.assertEqual(runner.waiting.bytes, len(wire.encode(result)))

    def test_defaultLimitFitsAFrame(self) -> None:
        """By default the largest result still fits, with its envelope, in a default frame."""
        self.assertEqual(DEFAULT_MAX_RESULT, wire.DEFAULT_MAX_FRAME - RESULT_ENVELOPE_ROOM)
        runner = self.make_runner()
        self.assertEqual(runner.max_result_bytes, DEFAULT_MAX_RESULT)
        runner.start(run(1, "echo", {"x": "y" * (DEFAULT_MAX_RESULT - 100)}))
        runner.start(run(2, "echo", {"x": "y" * DEFAULT_MAX_RESULT}))
        self.reactor.advance(0)
        largest, too_large = runner.results
        self.assertEqual((largest["outcome"], too_large["outcome"]), ("done", "failed"))
        envelope = {"type": "task_result", "payload": largest, "id": 2**63 - 1}
        self.assertLessEqual(len(wire.encode(envelope)), wire.DEFAULT_MAX_FRAME)

    def test_hugeErrorClipped(self) -> None:
        """An exception with a 10 MiB message fails its task with the message's start."""
        runner = self.make_runner(Task("explode_at_length", explode_at_length, "reactor"))
        runner.start(run(1, "explode_at_length"))
        result = self.only_result(runner)
        self.assertEqual(len(result["error"]["message"]), MESSAGE_LIMIT)
        self.assertLess(len(wire.encode(result)), 64 * 1024)

    def test_hugeNameClipped(self) -> None:
        """A task name of a megabyte from the master is clipped in the error and the log."""
        runner = self.make_runner()
        with capturedLogs() as events:
            runner.start(run(1, "n" * 1024 * 1024))
        error = self.only_result(runner)["error"]
        self.assertLess(len(error["message"]), MAX_TEXT + 100)
        self.assertLess(len(formatEvent(events[0])), MAX_TEXT + 100)

    def test_unsendableText(self) -> None:
        """A lone surrogate, which no UTF-8 frame can carry, is ResultNotJSON, not a stuck result."""
        runner = self.make_runner()
        runner.start(run(1, "echo", {"x": "\ud800"}))
        result = self.only_result(runner)
        self.assertEqual(result["error"]["type"], "ResultNotJSON")
        wire.encode(result)

    def test_acknowledged(self) -> None:
        """An acknowledged result is forgotten; unknown acknowledgements are harmless."""
        runner = self.make_runner()
        runner.start(run(1, "answer"))
        runner.start(run(2, "answer"))
        runner.acknowledged(1, 1)
        runner.acknowledged(9, 9)
        self.assertEqual([r["id"] for r in runner.results], [2])

    def test_manyResultsInOrder(self) -> None:
        """Results wait oldest first; acknowledging one, by id and attempt, keeps the rest."""
        runner = self.make_runner(slots=10)
        for task_id in range(1, 6):
            runner.start(run(task_id, "answer", attempt=task_id))
        runner.acknowledged(3, 3)
        runner.acknowledged(4, 1)  # another attempt: not this run's
        self.assertEqual([(r["id"], r["attempt"]) for r in runner.results],
                         [(1, 1), (2, 2), (4, 4), (5, 5)])

    def test_acknowledgedBeforeHandedOn(self) -> None:
        """A result acknowledged before its turn comes is not handed on."""
        runner = self.make_runner()
        runner.start(run(1, "answer"))
        runner.acknowledged(1, 1)
        self.reactor.advance(0)
        self.assertEqual(self.notified, [])

    def test_waitingCountBounded(self) -> None:
        """Past MAX_WAITING_RESULTS unacknowledged results, the oldest are dropped and logged."""
        runner = self.make_runner(slots=1)
        with capturedLogs() as events:
            for task_id in range(1, MAX_WAITING_RESULTS + 51):
                runner.start(run(task_id, "answer"))
        self.assertEqual([r["id"] for r in runner.results], list(range(51, MAX_WAITING_RESULTS + 51)))
        dropped = [formatEvent(e) for e in events if e["log_format"].startswith("Dropped")]
        self.assertTrue(dropped)
        self.assertTrue(dropped[0].startswith("Dropped the result of task 1 attempt 1"), dropped[0])
        self.assertEqual(len(dropped), runner.waiting.drop_log.lines)
        with capturedLogs() as events:
            self.reactor.advance(runner.waiting.drop_log.interval)
        self.assertEqual(events[-1]["left_out"], {"results dropped unacknowledged": 40})

    def test_waitingBytesBounded(self) -> None:
        """200 echo results of 500 KiB keep at most MAX_WAITING_BYTES, the newest."""
        runner = self.make_runner(slots=1)
        text = "y" * 500 * 1024
        for task_id in range(1, 201):
            runner.start(run(task_id, "echo", {"x": text}))
        results = runner.results
        size = sum(len(wire.encode(r)) for r in results)
        self.assertLessEqual(size, MAX_WAITING_BYTES)
        self.assertGreater(size, MAX_WAITING_BYTES - 600 * 1024)
        self.assertEqual(results[-1]["id"], 200)
        for result in results:
            runner.acknowledged(result["id"], 1)
        self.assertEqual(runner.waiting.bytes, 0)

    def test_newestKeptWhateverItsSize(self) -> None:
        """A result larger than the byte bound is still kept, alone."""
        runner = self.make_runner(max_waiting_bytes=10)
        runner.start(run(1, "answer"))
        runner.start(run(2, "answer"))
        self.assertEqual([r["id"] for r in runner.results], [2])

    def test_slotsRaiseTheCount(self) -> None:
        """A slave with more slots than MAX_WAITING_RESULTS keeps a result for each."""
        runner = self.make_runner(slots=MAX_WAITING_RESULTS + 50)
        self.assertEqual(runner.waiting.max_count, MAX_WAITING_RESULTS + 50)

    def test_onResultFails(self) -> None:
        """A failing on_result is logged and the result kept for a resend."""
        runner = self.make_runner()
        runner.on_result = lambda payload: 1 / 0
        runner.start(run(1, "answer"))
        self.reactor.advance(0)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(len(runner.results), 1)


class PolicyTests(RunnerTestCase):
    """
    Runs refused by policy start and fail at once with a clear kind, never BadMessage.
    """

    def failed(self, runner: TaskRunner, payload: dict[str, Any]) -> dict[str, Any]:
        runner.start(payload)
        result = self.only_result(runner)
        self.assertEqual((result["outcome"], runner.holding()), ("failed", []))
        self.assertEqual(self.reactor.spawned, [])
        return result["error"]

    def test_adminRefused(self) -> None:
        """An admin task without --allow-admin fails not_permitted."""
        error = self.failed(self.make_runner(), run(1, "reboot"))
        self.assertEqual(error, {
            "type": "NotPermitted", "kind": "not_permitted", "traceback": None,
            "message": "reboot is refused: this slave was not started with --allow-admin",
        })

    def test_refusals(self) -> None:
        """refusals() names the admin tasks and shell, each with its reason."""
        refusals = self.make_runner().refusals()
        self.assertEqual(sorted(refusals), ["reboot", "shell", "shutdown", "update"])
        self.assertEqual(refusals["shell"], "shell is refused: this slave allows no commands")
        self.assertEqual(
            refusals["update"], "update is refused: this slave was not started with --allow-admin"
        )
        runner = self.make_runner(allow_admin=True, allowed_commands=["uptime"])
        self.assertEqual(runner.refusals(), {})

    def test_shellNoCommands(self) -> None:
        """shell on a slave with an empty allow-list fails not_permitted."""
        error = self.failed(self.make_runner(), run(1, "shell", {"command": "uptime"}))
        self.assertEqual(error["kind"], "not_permitted")

    def test_shellOtherCommand(self) -> None:
        """shell with a command not on the list fails not_permitted, naming it."""
        runner = self.make_runner(allowed_commands=["uptime"])
        error = self.failed(runner, run(1, "shell", {"command": ["reboot"]}))
        self.assertEqual(error["kind"], "not_permitted")
        self.assertIn("'reboot' is not an allowed command", error["message"])

    def test_badArguments(self) -> None:
        """Arguments that do not fit fail bad_arguments, naming the task; no child starts."""
        error = self.failed(self.make_runner(), run(1, "primes", {"start": 0}))
        self.assertEqual(error, {
            "type": "BadArguments", "kind": "bad_arguments", "traceback": None,
            "message": "primes: missing a required argument: 'stop'",
        })

    def test_adminAllowed(self) -> None:
        """With --allow-admin, reboot answers at once and runs its command 5 s later."""
        runner = self.make_runner(allow_admin=True, admin_commands={"reboot": [["true"]]})
        runner.start(run(1, "reboot"))
        self.assertEqual(self.only_result(runner)["result"],
                         {"scheduled": "reboot", "in_seconds": 5})
        self.assertEqual(self.reactor.spawned, [])
        self.reactor.advance(5)
        [spawned] = self.reactor.spawned
        self.assertEqual(spawned.args, in_own_group(["true"]))
        self.assertTrue(os.path.isabs(spawned.executable))
        spawned.end(0)


class TimeoutTests(RunnerTestCase):
    """
    A run still going when its timeout passes is stopped and fails kind timeout.
    """

    def test_reactorTask(self) -> None:
        """Its Deferred is cancelled and the slot freed."""
        runner = self.make_runner()
        runner.start(run(1, "pending", timeout=3))
        self.reactor.advance(2.9)
        self.assertEqual(runner.results, [])
        self.reactor.advance(0.1)
        self.assertEqual(self.only_result(runner)["error"], {
            "type": "Timeout", "message": "timed out after 3 s", "traceback": None,
            "kind": "timeout",
        })
        self.assertEqual((self.pending.cancelled, runner.holding()), (1, []))

    def test_fraction(self) -> None:
        """The message gives the timeout as it was set."""
        runner = self.make_runner()
        runner.start(run(1, "sleep", {"seconds": 60}, timeout=2.5))
        self.reactor.advance(2.5)
        self.assertEqual(self.only_result(runner)["error"]["message"], "timed out after 2.5 s")
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_inTime(self) -> None:
        """A run done in time leaves no timeout behind."""
        runner = self.make_runner()
        runner.start(run(1, "sleep", {"seconds": 1}, timeout=5))
        self.reactor.advance(1)
        self.assertEqual(self.only_result(runner)["result"], {"slept": 1})
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_threadResultDiscarded(self) -> None:
        """A thread run cannot be stopped, but what it returns after its timeout is discarded."""
        runner = self.make_runner()
        runner.start(run(1, "in_thread", {"value": 2}, timeout=1))
        self.reactor.advance(1)
        self.reactor.pool.run_all()
        self.reactor.advance(0)
        [result] = runner.results
        self.assertEqual(result["error"]["kind"], "timeout")

    def test_processKilled(self) -> None:
        """A child gets SIGTERM, then SIGKILL 5 s later; its death is not a crash."""
        runner = self.make_runner()
        runner.start(run(1, "primes", {"start": 0, "stop": 10}, timeout=10))
        [child] = self.reactor.spawned
        self.reactor.advance(10)
        self.assertEqual(child.transport.signals, ["TERM"])
        self.assertEqual(self.only_result(runner)["error"]["kind"], "timeout")
        self.reactor.advance(5)
        self.assertEqual(child.transport.signals, ["TERM", "KILL"])
        child.end(None, signal.SIGKILL)
        self.reactor.advance(0)
        self.assertEqual(len(runner.results), 1)

    def test_processGoesOnTerm(self) -> None:
        """A child that ends on SIGTERM is not sent SIGKILL."""
        runner = self.make_runner()
        runner.start(run(1, "primes", {"start": 0, "stop": 10}, timeout=1))
        [child] = self.reactor.spawned
        self.reactor.advance(1)
        child.end(None, signal.SIGTERM)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(child.transport.signals, ["TERM"])


class CancelTests(RunnerTestCase):
    """
    cancel() stops a run like a timeout, and reports nothing.
    """

    def test_running(self) -> None:
        """The run is stopped and forgotten, and never reported."""
        runner = self.make_runner()
        runner.start(run(1, "pending", timeout=10, attempt=2))
        runner.cancel(1, 2)
        self.reactor.advance(20)
        self.assertEqual((self.pending.cancelled, runner.holding(), runner.results),
                         (1, [], []))
        self.assertEqual(self.notified, [])

    def test_otherAttempt(self) -> None:
        """Cancelling another attempt of the task leaves this one running."""
        runner = self.make_runner()
        runner.start(run(1, "pending", attempt=2))
        runner.cancel(1, 1)
        self.assertEqual(runner.holding(), [Run(1, 2)])

    def test_unacknowledgedResult(self) -> None:
        """A result not yet acknowledged is dropped, and not handed on."""
        runner = self.make_runner()
        runner.start(run(1, "answer"))
        runner.cancel(1, 1)
        self.reactor.advance(0)
        self.assertEqual((runner.results, self.notified), ([], []))

    def test_unknown(self) -> None:
        """Cancelling what this slave never ran is fine."""
        self.make_runner().cancel(404, 1)

    def test_process(self) -> None:
        """A child is sent SIGTERM."""
        runner = self.make_runner()
        runner.start(run(1, "primes", {"start": 0, "stop": 10}))
        runner.cancel(1, 1)
        [child] = self.reactor.spawned
        self.assertEqual(child.transport.signals, ["TERM"])
        child.end(None, signal.SIGTERM)
        self.reactor.advance(10)
        self.assertEqual(runner.results, [])


class ThreadTests(RunnerTestCase):
    """
    Thread tasks run in the reactor's thread pool.
    """

    def test_runsInPool(self) -> None:
        """Nothing happens until the pool runs the function."""
        runner = self.make_runner()
        runner.start(run(1, "in_thread", {"value": 21}))
        self.reactor.advance(0)
        self.assertEqual(runner.results, [])
        self.reactor.pool.run_all()
        self.assertEqual(self.only_result(runner)["result"], 42)

    def test_raises(self) -> None:
        """An exception in the thread is a failed result."""
        runner = self.make_runner()
        runner.start(run(1, "in_thread", {"value": None}))
        self.reactor.pool.run_all()
        self.assertEqual(self.only_result(runner)["error"]["type"], "TypeError")


class ProcessTests(RunnerTestCase):
    """
    Process tasks run in a child that reads its request on stdin and answers on stdout.
    """

    def start_primes(self, runner: TaskRunner) -> Spawned:
        runner.start(run(1, "primes", {"start": 0, "stop": 100}))
        [child] = self.reactor.spawned
        return child

    def test_request(self) -> None:
        """The worker is this Python running picluster.tasks.childmain, given the function by name."""
        child = self.start_primes(self.make_runner())
        self.assertEqual(child.executable, in_own_group([sys.executable])[0])
        self.assertEqual(child.args, in_own_group([
            sys.executable, "-m", "picluster.tasks.childmain",
            "--max-outcome", str(DEFAULT_MAX_RESULT + 4096),
            "--memory", str(1024**3), "--cpu", "3600",
        ]))
        self.assertEqual(child.request(), {"function": "picluster.tasks.primes:primes",
                                           "args": {"start": 0, "stop": 100}})
        self.assertFalse(child.transport.stdin_closed)
        self.assertIn("PYTHONPATH", child.env)
        self.assertEqual(child.env["MALLOC_ARENA_MAX"], os.environ.get("MALLOC_ARENA_MAX", "2"))

    def test_noLimits(self) -> None:
        """A runner told 0 or None for the limits asks the worker for none."""
        child = self.start_primes(self.make_runner(task_memory=0, task_cpu=None))
        self.assertNotIn("--memory", child.args)
        self.assertNotIn("--cpu", child.args)
        self.assertEqual(child.env.get("MALLOC_ARENA_MAX"), os.environ.get("MALLOC_ARENA_MAX"))

    def test_done(self) -> None:
        """The outcome the worker sends is the result."""
        runner = self.make_runner()
        self.start_primes(runner).answer({"outcome": "done", "result": 25})
        self.assertEqual(self.only_result(runner)["result"], 25)

    def test_failed(self) -> None:
        """A failure the worker reports keeps its kind, except kinds only the slave may say."""
        runner = self.make_runner()
        error = {"type": "BadArguments", "message": "no", "traceback": "tb",
                 "kind": "bad_arguments"}
        self.start_primes(runner).answer({"outcome": "failed", "error": error})
        self.assertEqual(self.only_result(runner)["error"], error)
        runner.acknowledged(1, 1)
        self.reactor.spawned.clear()
        self.notified.clear()
        self.start_primes(runner).answer({"outcome": "failed", "error": {**error, "kind": "crashed"}})
        result = self.only_result(runner)
        self.assertEqual(result["error"]["kind"], "error")
        self.assertNotIn("retry", result)

    def test_unreadable(self) -> None:
        """An outcome that is not an outcome fails the task, saying so."""
        runner = self.make_runner()
        self.start_primes(runner).protocol.childDataReceived(1, frame(b"[not json"))
        self.assertEqual(self.only_result(runner)["error"]["message"],
                         "the task's worker sent no outcome it could read")

    def test_crashed(self) -> None:
        """A child killed by a signal we did not send is kind crashed, to be retried."""
        runner = self.make_runner()
        self.start_primes(runner).end(None, signal.SIGKILL)
        result = self.only_result(runner)
        self.assertEqual((result["error"]["kind"], result["retry"]), ("crashed", True))
        self.assertIn("SIGKILL", result["error"]["message"])

    def test_noOutcome(self) -> None:
        """A child that dies without an outcome fails with its last stderr line."""
        runner = self.make_runner()
        self.start_primes(runner).end(1, stderr=b"Traceback...\nImportError: no numpy\n")
        error = self.only_result(runner)["error"]
        self.assertEqual(error["message"],
                         "the task's child exited with 1 without an outcome: ImportError: no numpy")
        self.assertEqual(error["kind"], "error")

    def test_tooLarge(self) -> None:
        """An outcome longer than the limit is not read, and its worker is killed."""
        runner = self.make_runner(max_result_bytes=10)
        child = self.start_primes(runner)
        child.protocol.childDataReceived(1, HEADER.pack(10 + 4096 + 1) + b"x" * 100)
        self.assertEqual(self.only_result(runner)["error"]["type"], "ResultTooLarge")
        self.assertEqual(child.transport.signals, ["TERM"])

    def test_notImportable(self) -> None:
        """A function a child cannot import fails at once, without a child."""
        def local() -> None:
            pass

        runner = self.make_runner(Task("local", local, "process"))
        runner.start(run(1, "local"))
        self.assertIn("cannot be imported", self.only_result(runner)["error"]["message"])
        self.assertEqual(self.reactor.spawned, [])


class StopTests(RunnerTestCase):
    """
    stop() ends every run unreported and waits for the children to go.
    """

    def test_stop(self) -> None:
        """Runs are cancelled, children killed, and it fires once they are gone."""
        runner = self.make_runner()
        runner.start(run(1, "pending"))
        runner.start(run(2, "primes", {"start": 0, "stop": 10}))
        stopped = runner.stop()
        [child] = self.reactor.spawned
        self.assertEqual((self.pending.cancelled, child.transport.signals), (1, ["TERM"]))
        self.assertNoResult(stopped)
        child.end(None, signal.SIGTERM)
        self.successResultOf(stopped)
        self.reactor.advance(10)
        self.assertEqual((runner.holding(), runner.results), ([], []))

    def test_nothingRunning(self) -> None:
        """With nothing running it fires at once."""
        self.successResultOf(self.make_runner().stop())


class PrefetchTests(RunnerTestCase):
    """
    Runs handed out beyond the slots wait ready, and the oldest starts as a
    slot frees, before the ended run's result is handed on.
    """

    def setUp(self) -> None:
        super().setUp()
        #: What happened, in order: ("started", id) and ("result", id).
        self.events: list[tuple[str, int]] = []

    def make_runner(self, *tasks: Task, slots: int = 1, **settings: Any) -> TaskRunner:
        def note(tag: int) -> int:
            self.events.append(("started", tag))
            return tag

        def hold(**args: Any) -> defer.Deferred[Any]:
            return self.pending()

        runner = super().make_runner(Task("note", note, "reactor"), Task("hold", hold, "reactor"),
                                     *tasks, slots=slots, **settings)
        runner.on_result = lambda payload: self.events.append(("result", payload["id"]))
        return runner

    def test_startsWhenASlotFrees(self) -> None:
        """A ready run does not start while the slots are busy, and starts as one frees."""
        runner = self.make_runner(prefetch=2)
        runner.start(run(1, "pending"))
        runner.start(run(2, "pending"))
        self.reactor.advance(60)
        self.assertEqual((len(self.pending.deferreds), runner.holding()), (1, [Run(1, 1), Run(2, 1)]))
        self.pending.deferreds[0].callback("ok")
        self.assertEqual((len(self.pending.deferreds), runner.holding()), (2, [Run(2, 1)]))

    def test_startedBeforeTheResultIsHandedOn(self) -> None:
        """The oldest ready run starts within the end of a run, before that run's result goes."""
        runner = self.make_runner(prefetch=1)
        runner.start(run(1, "pending"))
        runner.start(run(2, "note", {"tag": 2}))
        self.pending.deferreds[0].callback("ok")
        self.assertEqual(self.events, [("started", 2)])
        self.reactor.advance(0)
        self.assertEqual(self.events, [("started", 2), ("result", 1), ("result", 2)])

    def test_inTheOrderGiven(self) -> None:
        """Ready runs start oldest first; one refused as it starts fails and frees its slot at once."""
        runner = self.make_runner(prefetch=3)
        runner.start(run(1, "pending"))
        for task_id, name in ((4, "note"), (2, "nothing"), (3, "note")):
            runner.start(run(task_id, name, {"tag": task_id}))
        self.assertEqual(runner.holding(), [Run(1, 1), Run(4, 1), Run(2, 1), Run(3, 1)])
        self.pending.deferreds[0].callback("ok")
        self.reactor.advance(0)
        self.assertEqual(self.events, [("started", 4), ("started", 3), ("result", 1), ("result", 4),
                                       ("result", 2), ("result", 3)])
        self.assertEqual(runner.results[2]["error"]["kind"], "unknown_task")

    def test_pendingReadyRunsInOrder(self) -> None:
        """With slots busy, holding() lists the running runs, then the ready ones as they will start."""
        runner = self.make_runner(slots=2, prefetch=2)
        for task_id in (5, 3, 9, 1):
            runner.start(run(task_id, "pending"))
        self.assertEqual([r.id for r in runner.holding()], [5, 3, 9, 1])
        self.pending.deferreds[0].callback("ok")
        self.assertEqual([r.id for r in runner.holding()], [3, 9, 1])
        self.pending.deferreds[1].callback("ok")
        self.assertEqual([r.id for r in runner.holding()], [9, 1])

    def test_timeoutCountsFromTheStart(self) -> None:
        """A ready run's timeout starts when it does: here, when the run before it times out."""
        runner = self.make_runner(prefetch=1)
        runner.start(run(1, "pending", timeout=10))
        runner.start(run(2, "pending", timeout=5))
        self.reactor.advance(10)
        self.assertEqual((len(self.pending.deferreds), runner.holding()), (2, [Run(2, 1)]))
        self.reactor.advance(4.9)
        self.assertEqual([r["id"] for r in runner.results], [1])
        self.reactor.advance(0.1)
        self.assertEqual([(r["id"], r["error"]["kind"]) for r in runner.results],
                         [(1, "timeout"), (2, "timeout")])

    def test_noRoom(self) -> None:
        """Past the slots and the prefetch, a run is refused, naming both."""
        runner = self.make_runner(prefetch=1)
        runner.start(run(1, "pending"))
        runner.start(run(2, "pending"))
        e = self.assertRaises(BadMessage, runner.start, run(3, "answer"))
        self.assertEqual(e.payload(), {"error": "no free slot", "slots": 1, "prefetch": 1,
                                       "ready_bytes": 0, "max_ready_bytes": MAX_READY_BYTES})
        self.assertEqual(runner.holding(), [Run(1, 1), Run(2, 1)])

    def test_readyBytesBounded(self) -> None:
        """
        Past their bound in bytes of arguments, a run is refused however much
        room the prefetch leaves, naming what is held; room comes back as
        ready runs start, and a run of no arguments always fits.
        """
        blob = {"blob": "x" * 589}
        size = len(wire.encode(blob))
        self.assertEqual(size, 600)
        runner = self.make_runner(prefetch=10, max_ready_bytes=1000)
        runner.start(run(1, "pending"))
        runner.start(run(2, "hold", blob))
        self.assertEqual(runner.ready.bytes, 600)
        e = self.assertRaises(BadMessage, runner.start, run(3, "hold", blob))
        self.assertEqual(e.payload(), {"error": "no free slot", "slots": 1, "prefetch": 10,
                                       "ready_bytes": 600, "max_ready_bytes": 1000})
        runner.start(run(4, "hold", {"blob": "x" * 389}))
        runner.start(run(5, "pending"))
        self.assertEqual((runner.ready.bytes, [r.id for r in runner.holding()]), (1000, [1, 2, 4, 5]))
        self.pending.deferreds[0].callback("ok")
        self.assertEqual(runner.ready.bytes, 400)
        runner.start(run(3, "hold", blob))
        self.assertEqual(runner.ready.bytes, 1000)

    def test_oneReadyRunWhateverItsSize(self) -> None:
        """A run bigger than the whole bound is still held, alone, so that such a task runs at all."""
        runner = self.make_runner(prefetch=2, max_ready_bytes=100)
        runner.start(run(1, "pending"))
        runner.start(run(2, "hold", {"blob": "x" * 500}))
        self.assertEqual([r.id for r in runner.holding()], [1, 2])
        self.assertRaises(BadMessage, runner.start, run(3, "pending", {"n": 1}))

    def test_readyBytesGoBack(self) -> None:
        """What a ready run held is given back however it leaves: started, cancelled or stopped."""
        runner = self.make_runner(prefetch=3)
        runner.start(run(1, "pending"))
        for task_id in (2, 3, 4):
            runner.start(run(task_id, "hold", {"blob": "x" * 100 * task_id}))
        self.pending.deferreds[0].callback("ok")
        runner.cancel(3, 1)
        self.assertEqual(runner.ready.bytes, len(wire.encode({"blob": "x" * 400})))
        self.successResultOf(runner.stop())
        self.assertEqual((runner.ready.bytes, len(runner.ready)), (0, 0))

    def test_readyRunsWaitAsJSON(self) -> None:
        """
        A ready run holds its arguments as the JSON it is counted by (not
        as the Python objects, up to a dozen times the size), and starts
        with them as they came.
        """
        given: list[dict[str, Any]] = []
        args = {"words": ["ab", "é", "\u2603"], "nested": {"x": [1.5, -2, None, True]}, "n": 2**60}
        runner = self.make_runner(Task("keep", lambda **a: given.append(a), "reactor"), prefetch=1)
        runner.start(run(1, "pending"))
        runner.start(run(2, "keep", args))
        self.assertEqual((runner.ready.get(2).args, runner.ready.bytes),
                         (None, len(wire.encode(args))))
        self.pending.deferreds[0].callback("ok")
        self.assertEqual((given, runner.ready.bytes), ([args], 0))

    def test_alreadyReady(self) -> None:
        """A run of a task held ready is refused, whatever the attempt."""
        runner = self.make_runner(prefetch=2)
        runner.start(run(1, "pending"))
        runner.start(run(2, "pending"))
        e = self.assertRaises(BadMessage, runner.start, run(2, "pending", attempt=3))
        self.assertEqual(e.payload(), {"error": "task already running", "id": 2, "attempt": 1})
        self.assertEqual(runner.holding(), [Run(1, 1), Run(2, 1)])

    def test_cancelReady(self) -> None:
        """A cancelled ready run is forgotten: no result, nothing started in its place."""
        runner = self.make_runner(prefetch=2)
        runner.start(run(1, "pending"))
        runner.start(run(2, "note", {"tag": 2}))
        runner.start(run(3, "note", {"tag": 3}))
        runner.cancel(2, 1)
        runner.cancel(3, 2)
        self.reactor.advance(0)
        self.assertEqual((self.events, runner.holding()), ([], [Run(1, 1), Run(3, 1)]))
        self.pending.deferreds[0].callback("ok")
        self.reactor.advance(0)
        self.assertEqual(self.events, [("started", 3), ("result", 1), ("result", 3)])

    def test_cancelRunningStartsReady(self) -> None:
        """Cancelling a running run starts the oldest ready one in its slot."""
        runner = self.make_runner(prefetch=1)
        runner.start(run(1, "pending"))
        runner.start(run(2, "note", {"tag": 2}))
        runner.cancel(1, 1)
        self.reactor.advance(0)
        self.assertEqual((self.pending.cancelled, self.events), (1, [("started", 2), ("result", 2)]))

    def test_stopDropsReady(self) -> None:
        """stop() forgets ready runs unreported, and starts none of them."""
        runner = self.make_runner(prefetch=1)
        runner.start(run(1, "pending"))
        runner.start(run(2, "note", {"tag": 2}))
        self.successResultOf(runner.stop())
        self.reactor.advance(0)
        self.assertEqual((self.pending.cancelled, self.events, runner.holding()), (1, [], []))

    def test_manyInstantRunsReady(self) -> None:
        """A thousand ready runs that end as they start all run, in order, without recursing."""
        runner = self.make_runner(prefetch=1000)
        runner.run_log.lines = 0
        runner.start(run(0, "pending"))
        for task_id in range(1, 1001):
            runner.start(run(task_id, "echo", {"n": task_id}))
        self.pending.deferreds[0].callback("ok")
        self.reactor.advance(0)
        self.assertEqual([r["id"] for r in runner.results], list(range(1001)))
        self.assertEqual(as_sent(runner.results[-1])["result"], {"n": 1000})
        self.assertEqual(runner.holding(), [])

    def test_roomForTheirResults(self) -> None:
        """Results waiting for the master have room for one per run held, at least."""
        runner = self.make_runner(slots=60, prefetch=MAX_WAITING_RESULTS)
        self.assertEqual(runner.waiting.max_count, MAX_WAITING_RESULTS + 60)

    def test_offByDefault(self) -> None:
        """A runner given no prefetch holds nothing ready; a negative one is refused."""
        self.assertEqual(self.make_runner().prefetch, 0)
        self.assertRaises(ValueError, self.make_runner, prefetch=-1)


class RealProcessTests(unittest.TestCase):
    """
    Real children, on the real reactor: what only processes can show.
    """

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.reactor = reactor
        registry = TaskCatalog([
            *BUILTIN_TASKS,
            Task("explode", explode, "process"),
            Task("print_and_answer", print_and_answer, "process"),
            Task("die_by_signal", die_by_signal, "process"),
            Task("sleep_forever", sleep_forever, "process"),
            Task("allocate", allocate, "process"),
            Task("spin", spin, "process"),
            Task("threads_allocating", threads_allocating, "process"),
        ])
        self.runner = TaskRunner(registry, slots=4, clock=reactor, reactor=reactor,
                                 allowed_commands=["echo ...", "false", "sh ..."],
                                 task_memory=256 * 1024 * 1024, task_cpu=1)
        self.addCleanup(self.runner.stop)

    def result_of(self, payload: dict[str, Any]) -> defer.Deferred[dict[str, Any]]:
        d: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self.runner.on_result = d.callback
        self.runner.start(payload)
        return d.addTimeout(15, self.reactor).addCallback(as_sent)

    @defer.inlineCallbacks
    def test_primes(self) -> Any:
        """primes runs in a child and counts the primes below a million."""
        result = yield self.result_of(run(1, "primes", {"start": 0, "stop": 10**6}))
        self.assertEqual(result["result"], 78498)

    @defer.inlineCallbacks
    def test_badArgumentsInChild(self) -> Any:
        """A BadArguments the task raises in the child arrives as kind bad_arguments."""
        result = yield self.result_of(run(1, "primes", {"start": True, "stop": 10}))
        self.assertEqual(result["error"]["kind"], "bad_arguments")
        self.assertEqual(result["error"]["message"], "primes: start must be an integer, not True")

    @defer.inlineCallbacks
    def test_raises(self) -> Any:
        """An exception in the child arrives with its type and traceback."""
        result = yield self.result_of(run(1, "explode"))
        error = result["error"]
        self.assertEqual((error["type"], error["message"], error["kind"]),
                         ("ValueError", "boom", "error"))
        self.assertIn('raise ValueError("boom")', error["traceback"])

    @defer.inlineCallbacks
    def test_prints(self) -> Any:
        """What a task prints does not disturb its outcome."""
        result = yield self.result_of(run(1, "print_and_answer"))
        self.assertEqual(result["result"], {"ok": True})

    @defer.inlineCallbacks
    def test_crash(self) -> Any:
        """A child killed by someone else is kind crashed, to be retried."""
        result = yield self.result_of(run(1, "die_by_signal"))
        self.assertEqual((result["error"]["kind"], result.get("retry")), ("crashed", True))

    @defer.inlineCallbacks
    def test_memoryLimit(self) -> Any:
        """A child allocating past --task-memory fails naming the limit; within it, it runs."""
        result = yield self.result_of(run(1, "allocate", {"megabytes": 512}))
        error = result["error"]
        self.assertEqual((error["type"], error["kind"]), ("MemoryLimitExceeded", "error"))
        self.assertIn(f"allows a task {256 * 1024 * 1024} bytes of address space (--task-memory)",
                      error["message"])
        self.assertNotIn("retry", result)
        result = yield self.result_of(run(2, "allocate", {"megabytes": 64}))
        self.assertEqual(result["result"], 64 * 1024 * 1024)

    @defer.inlineCallbacks
    def test_threadsWithinMemoryLimit(self) -> Any:
        """A task with a dozen threads runs within a modest --task-memory: malloc's arenas are few."""
        result = yield self.result_of(run(1, "threads_allocating", {"count": 12}))
        self.assertEqual(result.get("result"), 12, result)

    @defer.inlineCallbacks
    def test_cpuLimit(self) -> Any:
        """A child spinning past --task-cpu seconds of CPU time fails naming the limit."""
        result = yield self.result_of(run(1, "spin"))
        error = result["error"]
        self.assertEqual((error["type"], error["kind"]), ("CpuTimeLimitExceeded", "error"))
        self.assertEqual(error["message"],
                         "the task used its 1 s of CPU time, the most this slave allows (--task-cpu)")
        self.assertIn("in spin", error["traceback"])

    @defer.inlineCallbacks
    def test_timeout(self) -> Any:
        """A child that would sleep forever is killed at its timeout."""
        result = yield self.result_of(run(1, "sleep_forever", timeout=1))
        self.assertEqual(result["error"]["message"], "timed out after 1 s")
        yield self.runner.stop().addTimeout(10, self.reactor)

    @defer.inlineCallbacks
    def test_timeoutStopsWhatTheCommandStarted(self) -> Any:
        """A command stopped at its timeout takes the processes it started with it."""
        from picluster.tasks import child

        if child.SETSID is None:
            raise unittest.SkipTest("no setsid here: only the command itself is stopped")
        marker = os.path.abspath(self.mktemp())
        script = f"sleep 60 & echo $! > {marker}; wait"
        result = yield self.result_of(run(1, "shell", {"command": ["sh", "-c", script]}, timeout=1))
        self.assertEqual(result["error"]["kind"], "timeout")
        with open(marker) as f:
            grandchild = int(f.read())

        def gone() -> bool:
            try:
                os.kill(grandchild, 0)
            except ProcessLookupError:
                return True
            # A zombie awaiting its reaper (init) counts as gone too.
            with open(f"/proc/{grandchild}/stat") as stat:
                return stat.read().split(") ")[1].startswith("Z")

        from tests.processes import wait_until

        yield wait_until(gone, "the shell's background sleep to be stopped", timeout=10)
        yield self.runner.stop().addTimeout(10, self.reactor)

    @defer.inlineCallbacks
    def test_shell(self) -> Any:
        """shell runs an allowed command and fails on a non-zero exit."""
        result = yield self.result_of(run(1, "shell", {"command": "echo hello world"}))
        self.assertEqual(result["result"], {"exit_code": 0, "stdout": "hello world\n",
                                            "stderr": ""})
        result = yield self.result_of(run(2, "shell", {"command": ["false"]}))
        self.assertEqual((result["error"]["type"], result["error"]["message"]),
                         ("CommandFailed", "command exited with 1"))

    @defer.inlineCallbacks
    def test_thread(self) -> Any:
        """A thread task runs in the runner's own pool of daemon threads, not the reactor's."""
        import threading

        seen: list[threading.Thread] = []
        self.runner.registry.add(
            Task("whose_thread", lambda: seen.append(threading.current_thread()) or 1, "thread")
        )
        result = yield self.result_of(run(1, "whose_thread"))
        self.assertEqual(result["outcome"], "done")
        (thread,) = seen
        self.assertTrue(thread.daemon)
        self.assertIn("picluster-tasks", thread.name)
        result = yield self.result_of(run(2, "codebase_revision"))
        self.assertEqual(result["outcome"], "done")
