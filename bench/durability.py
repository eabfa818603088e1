"""
Durability cost: no-op tasks a second with the SQLite queue against the same run with the queue in memory.

The price of surviving a SIGKILL: the master's default queue is an SQLite
file written with C{synchronous=FULL} (an fsync a commit, group-committed:
every change made while one transaction runs goes into the next), while
C{--db :memory:} keeps the same tables in memory and loses them with the
process.  Two real masters, one of each, each with two real slaves (default
C{--slots}), take the same load from L{bench.taskload}, taking turns a round
each (L{bench.tasks.Rounds}) so that both see the machine in the same state;
the figure is the median of each.
"""

from __future__ import annotations

from typing import Any

from bench.procs import Processes
from bench.tasks import Rounds, TaskCluster, median, picluster_rounds

#: Tasks a round, warm-up tasks, and rounds of each queue (taking turns).
SIZES: dict[bool, dict[str, int]] = {
    False: {"count": 2000, "warmup": 500, "rounds": 5},
    True: {"count": 200, "warmup": 50, "rounds": 1},
}


def run(report: Any, options: Any) -> None:
    size = SIZES[options.quick]
    with Processes("durability", options.keep) as procs:
        turns = Rounds()
        for key, db in (("sqlite", None), ("memory", ":memory:")):
            cluster = TaskCluster(procs, key, 2, db=db)
            load = cluster.load(size["count"], warmup=size["warmup"], rounds=size["rounds"])
            turns.add(key, load)
        records = turns.run(size["rounds"])

    table = report.table(
        f"No-op tasks end to end with the queue on disk and in memory, {size['count']:,} a round,"
        f" median of {size['rounds']} rounds each, taking turns",
        ["queue", "tasks/s", "wall ms/task", "master CPU ms/task", "slaves CPU ms/task"],
    )
    rates = {}
    for key, label in (("sqlite", "SQLite file (default --db)"),
                       ("memory", "in memory (--db :memory:)")):
        rounds = picluster_rounds(records[key])
        rates[key] = report.figure(f"{key}_tasks_per_s", median(rounds, "tasks_per_s"))
        report.figure(f"{key}_master_cpu_ms_per_task", median(rounds, "master_cpu_ms"))
        report.figure(f"{key}_slaves_cpu_ms_per_task", median(rounds, "slaves_cpu_ms"))
        report.figure(f"{key}_rounds", rounds)
        table.rows.append([label, rates[key], 1000 / rates[key], median(rounds, "master_cpu_ms"),
                           median(rounds, "slaves_cpu_ms")])
    report.figure("tasks_per_round", size["count"])
    report.ratio("sqlite/memory", rates["sqlite"] / rates["memory"], 0.75,
                 what="no-op tasks/s with the durable SQLite queue over the in-memory one"
                      " (at most 25 % slower)")
