"""
The worker process that process tasks run in:
C{python -m picluster.tasks.childmain [--memory BYTES] [--cpu S] [--max-outcome BYTES]}.

A worker stays warm between tasks (L{picluster.slave.pool} keeps a few per
slave), so that a run costs a message, not a process start.  It reads
requests, C{{"function": "module:qualname", "args": {...}}}, and writes one
outcome for each: C{{"outcome": "done", "result": ...}} or C{{"outcome":
"failed", "error": {"type", "message", "traceback", "kind"}}}, each framed
as a 4-byte big-endian length and that many bytes of JSON, on stdin and on
stdout.  An outcome carries C{"retire": why} when this worker should not run
another task (the task left threads running, or used up the CPU time a next
task would need); it exits when stdin closes.  Whatever the task
prints goes to stderr, and its stdin is C{/dev/null}, so that the frames
are ours alone.

Only the standard library is imported here (and nothing of Twisted), because
a worker starts on demand: on a Pi, importing Twisted would cost more than
many tasks take.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import resource
import signal
import struct
import sys
import threading
import traceback
from typing import IO, Any

from picluster.tasks.errors import error_kind, error_payload

#: Seconds of CPU time past its limit after which the kernel kills a task
#: that ignores the SIGXCPU it got at the limit.
CPU_KILL_AFTER = 5

#: Seconds of CPU time a worker may use across its tasks (at most one task's
#: limit) before it retires: the slack each task's limit leaves to the
#: hard limit, so a task ignoring SIGXCPU is killed at most this much (and
#: L{CPU_KILL_AFTER}) later, while a worker still serves many short tasks.
CPU_SHARED = 60

#: A frame's header: the length of the JSON that follows.
HEADER = struct.Struct(">I")


class CpuTimeLimitExceeded(Exception):
    """The task used all the CPU time the slave allows it (C{--task-cpu})."""


# -- frames ----------------------------------------------------------------------


def frame(payload: bytes) -> bytes:
    """C{payload} with its length in front."""
    return HEADER.pack(len(payload)) + payload


def read_frame(stream: IO[bytes]) -> Any:
    """The next request's JSON, or C{None} once the slave has closed the stream."""
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    (length,) = HEADER.unpack(header)
    payload = stream.read(length)
    if len(payload) < length:
        return None
    return json.loads(payload)


# -- limits ----------------------------------------------------------------------


class Limits:
    """
    This worker's limits: C{memory} bytes of address space, for good, and
    C{cpu} seconds of CPU time for each task.

    RLIMIT_CPU counts a process's whole life, so each task's limit is set
    above what the worker has used so far, and a worker that has used more
    than L{shared} seconds retires: the hard limit, fixed at the start so that
    no task can raise it, leaves room for one more task then.
    """

    def __init__(self, memory: int | None, cpu: int | None):
        self.memory, self.cpu = memory, cpu
        self.running = False
        if memory:
            _lower(resource.RLIMIT_AS, memory, memory)
        #: Seconds of CPU time this worker may use before it retires.
        self.shared = min(cpu, CPU_SHARED) if cpu else 0
        if cpu:
            signal.signal(signal.SIGXCPU, self._out_of_cpu)
            hard = cpu + self.shared + 1 + CPU_KILL_AFTER
            _lower(resource.RLIMIT_CPU, hard, hard)

    def start_task(self) -> None:
        """Allow the next task C{cpu} seconds more than the worker has used."""
        self.running = True
        if self.cpu:
            _, hard = resource.getrlimit(resource.RLIMIT_CPU)
            soft = math.ceil(cpu_used()) + self.cpu
            resource.setrlimit(resource.RLIMIT_CPU, (_at_most(soft, hard), hard))

    def end_task(self) -> str | None:
        """Lift the task's CPU limit while idle; why this worker must retire, if it must."""
        self.running = False
        if not self.cpu:
            return None
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        resource.setrlimit(resource.RLIMIT_CPU, (hard, hard))
        return "its CPU time is spent" if cpu_used() > self.shared else None

    def _out_of_cpu(self, signum: int, frame: Any) -> None:
        # Linux repeats SIGXCPU every second past the soft limit: raised
        # once, a second could strike outside the task, while its outcome
        # is being written, and the worker would die without one.
        if self.running:
            self.running = False
            raise CpuTimeLimitExceeded(
                f"the task used its {self.cpu} s of CPU time, the most this slave allows (--task-cpu)"
            )


def cpu_used() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _at_most(value: int, limit: int) -> int:
    return value if limit == resource.RLIM_INFINITY else min(value, limit)


def _lower(which: int, soft: int, hard: int) -> None:
    _, current = resource.getrlimit(which)
    resource.setrlimit(which, (_at_most(soft, current), _at_most(hard, current)))


# -- running ---------------------------------------------------------------------


class Surroundings:
    """
    What a task may change of the process that the next task would trip
    over, put back after each: the working directory, the environment,
    C{sys.path}.  Imported modules and their globals stay (see docs/tasks.rst).
    """

    def __init__(self) -> None:
        self.cwd = os.getcwd()
        self.environ = dict(os.environ)
        self.path = list(sys.path)

    def restore(self) -> None:
        if os.getcwd() != self.cwd:
            os.chdir(self.cwd)
        if os.environ != self.environ:
            os.environ.clear()
            os.environ.update(self.environ)
        sys.path[:] = self.path


def resolve(reference: str) -> Any:
    """The function named C{"module:qualname"} (a L{Task} gives its function)."""
    module_name, _, qualname = reference.partition(":")
    if not module_name or not qualname:
        raise ValueError(f"not a module:qualname reference: {reference!r}")
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    # A Task (from picluster.tasks.catalog, not imported here) gives its function.
    function = getattr(target, "function", None)
    return function if callable(function) and hasattr(target, "run_in") else target


def run(request: Any, memory: int | None = None) -> dict[str, Any]:
    """Call what C{request} names and describe how it went."""
    try:
        if not isinstance(request, dict) or not isinstance(request.get("args"), dict):
            raise ValueError("the request must be an object with an args object")
        function = resolve(str(request.get("function", "")))
        return {"outcome": "done", "result": function(**request["args"])}
    except BaseException as e:  # even SystemExit is the task's outcome
        if isinstance(e, MemoryError) and memory:
            return {"outcome": "failed", "error": error_payload(
                "MemoryLimitExceeded", f"the task ran out of memory: this slave allows a task"
                f" {memory} bytes of address space (--task-memory)", traceback=traceback.format_exc(),
            )}
        return {"outcome": "failed", "error": error_payload(
            type(e).__name__, str(e), error_kind(e), traceback.format_exc()
        )}


def encode(outcome: dict[str, Any], max_outcome: int | None = None) -> bytes:
    """The outcome as JSON, or a failure saying why it cannot be."""
    try:
        encoded = json.dumps(outcome, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError, RecursionError) as e:
        failure = error_payload("ResultNotJSON", f"the result is not JSON: {e}")
        return json.dumps({"outcome": "failed", "error": failure}).encode()
    if max_outcome is not None and len(encoded) > max_outcome:
        failure = error_payload("ResultTooLarge", f"the result is larger than {max_outcome} bytes")
        return json.dumps({"outcome": "failed", "error": failure}).encode()
    return encoded


def serve(requests: IO[bytes], outcomes: IO[bytes], limits: Limits,
          max_outcome: int | None = None) -> None:
    """Run each request on C{requests}, writing its outcome to C{outcomes}, until it closes."""
    surroundings = Surroundings()
    while True:
        bad = None
        try:
            request = read_frame(requests)
        except ValueError as e:
            request, bad = {}, f"not JSON: {e}"
        if request is None:
            return
        limits.start_task()
        if bad is not None:
            outcome = {"outcome": "failed", "error": error_payload("BadRequest", bad)}
        else:
            outcome = run(request, limits.memory)
        spent = limits.end_task()
        surroundings.restore()
        retire = "it left threads running" if threading.active_count() > 1 else spent
        if retire:
            outcome["retire"] = retire
        outcomes.write(frame(encode(outcome, max_outcome)))
        outcomes.flush()


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m picluster.tasks.childmain")
    parser.add_argument("--memory", type=int, default=None, help="bytes of address space")
    parser.add_argument("--cpu", type=int, default=None, help="seconds of CPU time a task")
    parser.add_argument("--max-outcome", type=int, default=None, help="bytes of an outcome")
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    options = parse_arguments(argv)
    # Keep fds 0 and 1 for the frames: a task's prints (even from C) go to
    # stderr, and a task reading stdin reads /dev/null.
    requests = os.fdopen(os.dup(0), "rb")
    outcomes = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    serve(requests, outcomes, Limits(options.memory, options.cpu), options.max_outcome)
    outcomes.close()
    if threading.active_count() > 1:
        # Threads a task left behind would keep a normal exit waiting.
        os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
