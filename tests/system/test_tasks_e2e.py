"""
End to end with real processes: a master, three slaves and C{picluster map},
with a slave and the master killed (SIGKILL) midway.

Only real processes show this: a SIGKILLed master leaves its SQLite file as
the kill found it, a SIGKILLed slave drops its connections without a word,
and the map command must ride out the master's absence on its own.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys

from twisted.internet import defer
from twisted.trial import unittest

from tests.processes import Child, Cluster, child_env

#: Tasks in the map: "a few hundred".
TASKS = 300

#: Width of each task's range: enough work that killing midway catches
#: tasks running, little enough that the test stays quick.
WIDTH = 20_000


def prime_counts(stop: int, width: int) -> list[int]:
    """Primes in each [n*width, (n+1)*width) below C{stop}, by a plain sieve."""
    sieve = bytearray([1]) * stop
    sieve[0:2] = b"\0\0"
    for n in range(2, int(stop**0.5) + 1):
        if sieve[n]:
            sieve[n * n :: n] = bytearray(len(range(n * n, stop, n)))
    return [sum(sieve[start : start + width]) for start in range(0, stop, width)]


def task_states(db: str) -> dict[str, int]:
    """How many tasks the master's database holds in each state (read-only)."""
    if not os.path.exists(db):
        return {}
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as connection:
            return dict(connection.execute("SELECT state, count(*) FROM tasks GROUP BY state"))
    except sqlite3.Error:
        return {}


class KillMidwayTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_everyTaskDoneOnceThroughKills(self):
        """300 primes tasks all end done, exactly once each, through a slave and a master SIGKILL."""
        cluster = Cluster(self)
        db = os.path.join(cluster.cwd, "tasks.db")
        master_args = ("--db", db, "--rejoin-grace", "3", "--dead-after", "3")
        master = cluster.master("master", *master_args)
        # A fresh worker process for every task: a warm worker counts the
        # primes of a range in milliseconds, and the kills below need tasks
        # still running when they strike.
        slaves = [cluster.slave(f"slave-{n}", "--slots", "2", "--dead-after", "3",
                                "--workers-recycle-after", "1") for n in range(3)]
        yield cluster.wait_for_slaves("three slaves", lambda found: len(found) == 3)

        args_file = os.path.join(cluster.cwd, "ranges.jsonl")
        with open(args_file, "w") as lines:
            for n in range(TASKS):
                lines.write(json.dumps({"start": n * WIDTH, "stop": (n + 1) * WIDTH}) + "\n")
        mapping = Child(
            self, "map",
            [sys.executable, "-m", "picluster.cli", "map", "primes", "--args-file", args_file,
             "--json", "--master", f"127.0.0.1:{cluster.port}", "--state-dir", cluster.state_dir],
            cwd=cluster.cwd, env=child_env(),
        )
        cluster.children.append(mapping)

        def done() -> int:
            return task_states(db).get("done", 0)

        yield cluster.wait_until(lambda: done() >= TASKS // 5, "a fifth of the tasks done")
        slaves[0].signal(signal.SIGKILL)
        yield cluster.wait_until(lambda: done() >= TASKS // 2, "half of the tasks done")
        master.signal(signal.SIGKILL)
        yield master.wait_for_exit(report=cluster.report)
        self.assertLess(done(), TASKS, "the master was killed too late to test anything")
        cluster.master("master-again", *master_args)

        status = yield mapping.wait_for_exit(timeout=120, report=cluster.report)
        self.assertEqual(status, 0, cluster.report())
        results = [json.loads(line) for line in mapping.stdout().splitlines()]
        self.assertEqual(len(results), TASKS, cluster.report())
        self.assertEqual([r["state"] for r in results], ["done"] * TASKS)
        self.assertEqual([r["result"] for r in results], prime_counts(TASKS * WIDTH, WIDTH))
        self.assertEqual(len({r["id"] for r in results}), TASKS)
        # The map's retried submission stored nothing twice.
        self.assertEqual(task_states(db), {"done": TASKS})
        # Work was lost and redone somewhere along the way, yet recorded once.
        self.assertGreater(max(r["attempts"] for r in results), 1, cluster.report())
        self.assertIn("lost master", mapping.stderr(), cluster.report())
