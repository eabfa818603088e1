"""
Child processes, the slave's side: the commands a slave runs, and the
workers process tasks run in (L{picluster.tasks.childmain}).

In its own process a CPU-bound task neither holds the slave's GIL (so
keepalives keep flowing) nor escapes a timeout: the slave can kill it.
L{spawn} starts any command (no shell, killable); L{task_request},
L{worker_argv} and L{read_outcome} speak to a task worker, which
L{picluster.slave.pool} keeps warm.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet import defer, error
from twisted.internet.interfaces import IDelayedCall, IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from picluster.tasks.catalog import ProcessResult, Task
from picluster.tasks.errors import (
    TRACEBACK_LIMIT,
    ChildCrashed,
    CommandFailed,
    TaskFailed,
    error_payload,
)

#: Seconds between SIGTERM and SIGKILL when a child must go.
KILL_AFTER = 5.0

#: util-linux's setsid, where there is one (every Debian and Raspberry Pi OS).
SETSID = shutil.which("setsid")

#: How much of each output stream a command keeps unless told otherwise.
OUTPUT_LIMIT = 64 * 1024

#: The command a process task's worker runs (see L{worker_argv}).
TASK_ARGV = (sys.executable, "-m", "picluster.tasks.childmain")

#: Bytes of address space (RLIMIT_AS) a process task may use unless the
#: slave is told otherwise (C{--task-memory}): past it, allocations fail and
#: the task fails with C{MemoryLimitExceeded}, before the node runs short.
TASK_MEMORY = 1024**3

#: Seconds of CPU time (RLIMIT_CPU) a process task may use unless the slave
#: is told otherwise (C{--task-cpu}): past it the task fails with
#: C{CpuTimeLimitExceeded}, so that a runaway task without a timeout does
#: not hold a slot for ever.
TASK_CPU = 3600

#: Kinds a task child may report; anything else it claims counts as C{error}.
_CHILD_KINDS = frozenset({"error", "bad_arguments", "not_permitted"})


# -- the slave's side ----------------------------------------------------------


class Killable(ProcessProtocol):
    """
    A child this slave may have to stop: SIGTERM, then SIGKILL after
    L{KILL_AFTER} seconds, to its whole process group when it leads one.
    """

    #: Whether the command leads a process group of its own, so that
    #: stopping it stops what it started too.
    group_leader = False
    #: The process, given to C{makeConnection} as L{start} spawns it: a
    #: child is written to, closed or stopped only once started.
    transport: IProcessTransport

    def __init__(self, clock: Any):
        self.clock = clock
        #: Whether this slave has begun to stop it (its death is then no crash).
        self.killed = False
        #: Its process group, where it leads one: kept, for Twisted forgets
        #: the pid once the process is reaped, while what it started may
        #: live on in the group (and keeps the group's id from being reused).
        self.pgid: int | None = None
        self._kill_call: IDelayedCall | None = None

    def makeConnection(self, transport: Any) -> None:
        if self.group_leader:
            self.pgid = getattr(transport, "pid", None)
        super().makeConnection(transport)

    def kill(self) -> None:
        """SIGTERM now, SIGKILL in L{KILL_AFTER} seconds unless it has gone."""
        if self.killed:
            return
        self.killed = True
        self._signal("TERM")
        self._kill_call = self.clock.callLater(KILL_AFTER, self._signal, "KILL")

    def ended(self) -> None:
        """Forget the pending SIGKILL: call from C{processEnded}."""
        if self._kill_call is not None and self._kill_call.active():
            self._kill_call.cancel()

    def _signal(self, name: str) -> None:
        if self.pgid is not None:
            # The whole group: a command's own children (a script's
            # subprocesses) must not outlive a timeout either.
            signal_group(self.pgid, getattr(signal, f"SIG{name}"))
            return
        try:
            self.transport.signalProcess(name)
        except error.ProcessExitedAlready:
            pass


class ChildProcess(Killable):
    """
    One command: feeds its stdin, keeps the head of its output, reports its end.

    L{result} fires with a L{ProcessResult}, or fails with L{ChildCrashed} if
    a signal we did not send ended it; cancelling it kills the command
    (SIGTERM, then SIGKILL after L{KILL_AFTER} seconds).  L{gone} fires once
    the process has ended, whatever happened.
    """

    def __init__(self, argv: Sequence[str], stdin: bytes | None, limit: int, clock: Any):
        super().__init__(clock)
        self.argv = list(argv)
        self.stdin = stdin
        self.limit = limit
        self.output = {1: bytearray(), 2: bytearray()}
        self.truncated = {1: False, 2: False}
        self.result: defer.Deferred[ProcessResult] = defer.Deferred(lambda _: self.kill())
        self.gone: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        if self.stdin:
            self.transport.write(self.stdin)
        self.transport.closeStdin()

    def childDataReceived(self, fd: int, data: bytes) -> None:
        kept = self.output.get(fd)
        if kept is None:
            return
        room = self.limit - len(kept)
        if len(data) > room:
            self.truncated[fd] = True
        kept.extend(data[: max(room, 0)])

    def processEnded(self, reason: Failure) -> None:
        self.ended()
        exit_code, killed_by = reason.value.exitCode, reason.value.signal
        # Once we kill it, result has already failed with CancelledError.
        if not self.result.called:
            if killed_by is not None:
                self.result.errback(crashed(self.argv[0], killed_by))
            else:
                self.result.callback(ProcessResult(
                    exit_code, bytes(self.output[1]), bytes(self.output[2]),
                    self.truncated[1], self.truncated[2],
                ))
        self.gone.callback(None)


def crashed(what: str, signal_number: int) -> ChildCrashed:
    """The failure of a child that a signal this slave did not send ended."""
    return ChildCrashed(f"{what} was killed by {_signal_name(signal_number)}, not by this slave")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def spawn(
    reactor: Any,
    clock: Any,
    argv: Sequence[str],
    *,
    stdin: bytes | None = None,
    env: Mapping[str, str] | None = None,
    limit: int = OUTPUT_LIMIT,
) -> ChildProcess:
    """
    Start C{argv} without a shell, its first word looked up on the PATH of C{env}.

    @param env: The whole environment (default: the slave's).
    @raise CommandFailed: when there is no such command or it cannot start.
    """
    process = ChildProcess(argv, stdin, limit, clock)
    start(reactor, process, argv, env)
    return process


def signal_group(pgid: int, number: int) -> None:
    """Send signal C{number} to the process group C{pgid}, if anything is left in it."""
    try:
        os.killpg(pgid, number)
    except (ProcessLookupError, PermissionError):
        pass


def start(reactor: Any, process: Killable, argv: Sequence[str],
          env: Mapping[str, str] | None) -> None:
    """
    Start C{argv} for C{process}, in a process group of its own where it can be.

    @raise CommandFailed: when there is no such command or it cannot start.
    """
    environment = dict(os.environ if env is None else env)
    executable = shutil.which(argv[0], path=environment.get("PATH", os.defpath))
    if executable is None:
        raise CommandFailed(f"command not found: {argv[0]}")
    spawned = list(argv)
    if SETSID is not None:
        # util-linux's setsid makes the command a session (and process group)
        # leader and execs it in place (Twisted's child leads no group, so
        # setsid does not fork): same pid, same exit status.
        spawned = [SETSID, *spawned]
        process.group_leader = True
    try:
        reactor.spawnProcess(process, SETSID or executable, spawned, env=environment)
    except OSError as e:
        raise CommandFailed(f"cannot run {argv[0]}: {e}") from e


def task_request(task: Task, args: dict[str, Any]) -> bytes:
    """What to send a task worker to run C{task} with C{args}."""
    function = task.function
    reference = f"{function.__module__}:{function.__qualname__}"
    if "<locals>" in reference or function.__module__ == "__main__":
        raise TypeError(f"{task.name}: {reference} cannot be imported by a child process")
    return json.dumps({"function": reference, "args": args}).encode("utf-8")


def worker_argv(*, memory: int | None, cpu: int | None, max_outcome: int) -> list[str]:
    """
    The command of a task worker.

    @param memory: Bytes of address space the worker may use; C{None}: no limit.
    @param cpu: Seconds of CPU time each task may use; C{None}: no limit.
    @param max_outcome: Bytes of JSON in the largest outcome it may send.
    """
    argv = [*TASK_ARGV, "--max-outcome", str(max_outcome)]
    if memory:
        argv += ["--memory", str(memory)]
    if cpu:
        argv += ["--cpu", str(cpu)]
    return argv


def task_environment(*, few_arenas: bool = False) -> dict[str, str]:
    """
    The slave's environment, with its own import paths ahead of the child's.

    @param few_arenas: Give glibc's malloc two arenas (C{MALLOC_ARENA_MAX},
        unless the slave's environment sets it), for a child whose address
        space is limited: each arena reserves 64 MiB of it, and a task with
        a dozen threads would otherwise run out of address space while
        using little memory.
    """
    installed = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    paths = [os.path.abspath(path or ".") for path in sys.path]
    paths = [
        path for path in paths
        if os.path.isdir(path) and not any(_within(path, top) for top in installed)
    ]
    inherited = os.environ.get("PYTHONPATH")
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(paths + ([inherited] if inherited else [])))
    if few_arenas:
        environment.setdefault("MALLOC_ARENA_MAX", "2")
    return environment


def _within(path: str, top: str) -> bool:
    try:
        return os.path.commonpath([path, os.path.abspath(top)]) == os.path.abspath(top)
    except ValueError:
        return False


def read_outcome(outcome: Any) -> Any:
    """
    The result in the outcome a task worker sent.

    @raise TaskFailed: with the error it reported, or saying why it reported none.
    """
    if isinstance(outcome, dict) and outcome.get("outcome") == "done" and "result" in outcome:
        return outcome["result"]
    if isinstance(outcome, dict) and isinstance(outcome.get("error"), dict):
        reported = outcome["error"]
        kind = reported.get("kind")
        trace = reported.get("traceback")
        raise TaskFailed(error_payload(
            str(reported.get("type", "Exception")),
            str(reported.get("message", "")),
            kind if kind in _CHILD_KINDS else "error",
            trace[-TRACEBACK_LIMIT:] if isinstance(trace, str) else None,
        ))
    raise TaskFailed(error_payload("ChildFailed", "the task's worker sent no outcome it could read"))


def no_outcome(exit_code: int | None, stderr: bytes) -> TaskFailed:
    """The failure of a task whose worker exited, not by a signal, before its outcome."""
    text = stderr.decode("utf-8", errors="replace").strip()
    last = f": {text.splitlines()[-1]}" if text else ""
    return TaskFailed(error_payload(
        "ChildFailed", f"the task's child exited with {exit_code} without an outcome{last}",
        traceback=text[-TRACEBACK_LIMIT:] or None,
    ))
