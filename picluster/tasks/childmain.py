"""
The child process a process task runs in: C{python -m picluster.tasks.childmain}.

It reads one request, C{{"function": "module:qualname", "args": {...},
"limits": {"memory": bytes, "cpu": seconds}}}, as JSON on stdin, holds
itself to the limits, calls the function, and writes one outcome as JSON on stdout:
C{{"outcome": "done", "result": ...}} or C{{"outcome": "failed", "error":
{"type", "message", "traceback", "kind"}}}.  Whatever the task prints goes to
stderr, so that stdout carries the outcome alone.

Only the standard library is imported here (and nothing of Twisted), because
a child starts for every run: on a Pi, importing Twisted would cost more than
many tasks take.  L{picluster.tasks.child} is the slave's side.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import signal
import sys
import traceback
from typing import IO, Any

from picluster.tasks.errors import error_kind, error_payload

#: Seconds of CPU time past its limit after which the kernel kills a task
#: that ignores the SIGXCPU it got at the limit.
CPU_KILL_AFTER = 5


class CpuTimeLimitExceeded(Exception):
    """The task used all the CPU time the slave allows it (C{--task-cpu})."""


def apply_limits(limits: dict[str, Any]) -> None:
    """
    Hold this process to the slave's limits (C{memory}: bytes of address
    space, C{cpu}: seconds of CPU time), for good: the task cannot raise them.
    """
    memory, cpu = limits.get("memory"), limits.get("cpu")
    if memory:
        _lower(resource.RLIMIT_AS, memory, memory)
    if cpu:
        def out_of_cpu(signum: int, frame: Any) -> None:
            raise CpuTimeLimitExceeded(
                f"the task used its {cpu} s of CPU time, the most this slave allows (--task-cpu)"
            )

        signal.signal(signal.SIGXCPU, out_of_cpu)
        _lower(resource.RLIMIT_CPU, cpu, cpu + CPU_KILL_AFTER)


def _lower(which: int, soft: int, hard: int) -> None:
    _, current = resource.getrlimit(which)
    if current != resource.RLIM_INFINITY:
        soft, hard = min(soft, current), min(hard, current)
    resource.setrlimit(which, (soft, hard))


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


def run(request: Any) -> dict[str, Any]:
    """Call what C{request} names, within its limits, and describe how it went."""
    limits = request.get("limits") if isinstance(request, dict) else None
    limits = limits if isinstance(limits, dict) else {}
    try:
        if not isinstance(request, dict) or not isinstance(request.get("args"), dict):
            raise ValueError("the request must be an object with an args object")
        apply_limits(limits)
        function = resolve(str(request.get("function", "")))
        return {"outcome": "done", "result": function(**request["args"])}
    except BaseException as e:  # even SystemExit is the task's outcome
        memory = limits.get("memory")
        if isinstance(e, MemoryError) and memory:
            return {"outcome": "failed", "error": error_payload(
                "MemoryLimitExceeded", f"the task ran out of memory: this slave allows a task"
                f" {memory} bytes of address space (--task-memory)", traceback=traceback.format_exc(),
            )}
        return {"outcome": "failed", "error": error_payload(
            type(e).__name__, str(e), error_kind(e), traceback.format_exc()
        )}


def encode(outcome: dict[str, Any]) -> str:
    """The outcome as one line of JSON, or a failure saying why it cannot be."""
    try:
        return json.dumps(outcome, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as e:
        return json.dumps({"outcome": "failed", "error": error_payload(
            "ResultNotJSON", f"the result is not JSON: {e}"
        )})


def main(stdin: IO[str], outcome_stream: IO[str]) -> int:
    """Run the request on C{stdin}; write its outcome to C{outcome_stream}."""
    try:
        outcome = run(json.load(stdin))
    except ValueError as e:
        outcome = {"outcome": "failed", "error": error_payload("BadRequest", f"not JSON: {e}")}
    outcome_stream.write(encode(outcome) + "\n")
    outcome_stream.flush()
    return 0


if __name__ == "__main__":
    # Keep fd 1 for the outcome; send the task's own prints (even from C) to stderr.
    _outcome_stream = os.fdopen(os.dup(1), "w", encoding="ascii")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    sys.exit(main(sys.stdin, _outcome_stream))
