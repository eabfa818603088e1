"""
Tasks for real workers in the tests (L{tests.test_pool}): the standard
library only, so that a worker imports them in a moment and spends its CPU
time where a test says.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from typing import Any

#: Changed by L{count_runs}: module globals stay between a worker's tasks.
RUNS = 0


# Module-level, so that a worker can import them.
def whoami() -> dict[str, Any]:
    """Where the worker is, as a task sees it."""
    return {"pid": os.getpid(), "cwd": os.getcwd(), "path": sys.path[:3],
            "marker": os.environ.get("PICLUSTER_TEST_MARKER"), "stdin": sys.stdin.read()}


def wander(directory: str) -> int:
    """Change what the next task would trip over: cwd, environment, sys.path."""
    os.chdir(directory)
    os.environ["PICLUSTER_TEST_MARKER"] = "left behind"
    sys.path.insert(0, directory)
    return os.getpid()


def count_runs() -> int:
    global RUNS
    RUNS += 1
    return RUNS


def fail() -> None:
    raise RuntimeError("failed on purpose")


def leave_thread() -> int:
    threading.Thread(target=time.sleep, args=(3600,)).start()
    return os.getpid()


def burn(seconds: float) -> int:
    """Use C{seconds} of CPU time."""
    until = time.process_time() + seconds
    while time.process_time() < until:
        pass
    return os.getpid()


def sleep_forever() -> None:
    time.sleep(3600)


def leave_sleeper() -> int:
    """Start a subprocess and leave it running (it holds the worker's stderr)."""
    return subprocess.Popen(["sleep", "3600"]).pid
