"""
Tasks: no-op tasks a second end to end against Dask, and the primes speed-up from 1 to 2 slaves.

What a user weighing picluster against Dask distributed for many small
jobs would measure.  A real C{twistd -n picluster-master} (with its durable
SQLite queue, as by default) and two real C{twistd -n picluster-slave}
processes run the built-in C{echo} task, submitted and waited for by a
separate client process (L{bench.taskload}) through L{picluster.client}:
tasks a second from the first submit to the last result, and the overhead
per task in wall time and in the master's CPU.  Dask runs the same no-op in
the same invocation (L{bench.daskbase}): C{LocalCluster(n_workers=2,
threads_per_worker=1)}, C{client.map} then gather, once with its defaults
and once with C{distributed.scheduler.worker-saturation} set to inf.  The
three take turns, a round each (L{Rounds}), so that a machine getting busier
or quieter weighs on all of them alike.

The slaves keep their default C{--slots}, the machine's core count, and
their default C{--prefetch} (as many runs held ready as slots), as a user
would run them; C{echo} runs in the slave's reactor, so the slots and the
ready runs only set how many runs each slave has in flight.

Small CPU tasks take their turns beside them: the built-in C{primes} over
the first 10,000 numbers (some 0.2 ms of work), on the same two slaves, in
their warm workers (L{picluster.slave.pool}), against Dask's defaults
running the very same function (L{bench.daskbase} C{--task primes}): the
cost of a process task's round trip, for a map over many small items.

The speed-up runs the CPU-bound C{primes} task (in a worker process) on a
master with one slave and on one with two, each slave with C{--slots 1},
taking turns; each run takes some 0.4 s.  Beside them, the same work runs
in bare workers, one task each, one and two at a time, with no picluster in
between: the speed-up the machine itself allows while the benchmark runs.
"""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psutil

from bench.daskbase import PRIMES_BELOW_STOP, PRIMES_STOP
from bench.procs import BenchError, Child, Processes, child_env, free_port
from picluster.tasks.childmain import HEADER, frame

#: Sizes: no-op tasks a round, warm-up tasks, rounds of each system; primes
#: runs a round, the range each counts, and rounds of each slave count.
SIZES: dict[bool, dict[str, int]] = {
    False: {"count": 3000, "warmup": 500, "rounds": 4,
            "primes_count": 8, "primes_stop": 10**8, "primes_rounds": 4},
    True: {"count": 200, "warmup": 50, "rounds": 1,
           "primes_count": 4, "primes_stop": 10**6, "primes_rounds": 1},
}

#: The number of primes below each C{primes_stop}: the known values of the
#: prime-counting function, so that every primes run's result is checked.
PRIMES_BELOW = {PRIMES_STOP: PRIMES_BELOW_STOP, 10**6: 78_498, 10**8: 5_761_455}

#: Seconds a load process may take, at most.
LOAD_TIMEOUT = 300.0


class TaskCluster:
    """A real master with its real slaves, and the client runs made against it."""

    def __init__(self, procs: Processes, name: str, slaves: int, *, db: str | None = None,
                 slave_args: tuple[str, ...] = ()):
        self.procs = procs
        self.name = name
        self.port = free_port()
        self.master = procs.master(name, self.port, db=db)
        self.slaves = [
            procs.slave(f"{name}-slave{i}", self.port, *slave_args, master=name)
            for i in range(slaves)
        ]

    def load(self, count: int, *, warmup: int, rounds: int, name: str = "echo",
             args: dict[str, Any] | None = None, expect: Any = None) -> Child:
        """A L{bench.taskload} for this master, to take its turns in L{Rounds}."""
        argv = [
            "--master", f"127.0.0.1:{self.port}", "--count", str(count), "--name", name,
            "--args", json.dumps(args or {"n": 1}), "--warmup", str(warmup),
            "--rounds", str(rounds), "--slaves", str(len(self.slaves)),
            "--pids", ",".join(str(child.pid) for child in (self.master, *self.slaves)),
            "--token-file", self.procs.token_file(self.name, "client"),
        ]
        if expect is not None:
            argv += ["--expect", json.dumps(expect)]
        return self.procs.python(f"{self.name}-{name}-load", "bench.taskload", *argv)

    def stop(self) -> None:
        for child in (*self.slaves, self.master):
            child.stop()


def picluster_rounds(record: dict[str, Any]) -> list[dict[str, Any]]:
    """A taskload's rounds, with tasks/s and the CPU per task (ms) of each process."""
    for measured in record["rounds"]:
        tasks = measured["tasks"]
        measured["tasks_per_s"] = tasks / measured["seconds"]
        measured["master_cpu_ms"] = measured["cpu"][0] * 1000 / tasks
        measured["slaves_cpu_ms"] = sum(measured["cpu"][1:]) * 1000 / tasks
        measured["client_cpu_ms"] = measured["client_cpu"] * 1000 / tasks
    return record["rounds"]


def dask_load(procs: Processes, name: str, size: dict[str, int], *extra: str) -> Child:
    """A L{bench.daskbase}, to take its turns in L{Rounds}."""
    return procs.python(name, "bench.daskbase", "--count", str(size["count"]),
                        "--warmup", str(size["warmup"]), "--rounds", str(size["rounds"]), *extra)


def dask_rounds(record: dict[str, Any]) -> list[dict[str, Any]]:
    """A daskbase's rounds, with tasks/s and CPU per task (ms) added."""
    for measured in record["rounds"]:
        tasks = measured["tasks"]
        measured["tasks_per_s"] = tasks / measured["seconds"]
        measured["scheduler_cpu_ms"] = measured["cpu"] * 1000 / tasks
        measured["workers_cpu_ms"] = measured["workers_cpu"] * 1000 / tasks
    return record["rounds"]


class Rounds:
    """
    Load processes that take turns, a round each, so that the systems they
    compare see the machine in the same state: one that is getting busier
    or quieter (other work on it) then weighs on all of them alike.

    Each load warms up, prints C{READY}, and runs a round on each SIGUSR1,
    printing C{ROUND k DONE}; the first to go changes from round to round.
    A load marked C{pause} (a Dask cluster, whose idle heartbeats cost some
    10 % of a core here) is stopped, with its children, while the others
    run.  An idle picluster master and slaves only send keepalives and are
    left running.
    """

    def __init__(self) -> None:
        self.loads: dict[str, Child] = {}
        self.paused: set[str] = set()

    def add(self, key: str, child: Child, *, pause: bool = False) -> None:
        self.loads[key] = child
        if pause:
            self.paused.add(key)

    def run(self, rounds: int, timeout: float = LOAD_TIMEOUT,
            also: Callable[[], Any] | None = None) -> dict[str, dict[str, Any]]:
        """
        Every round of every load, taking turns; each load's final JSON
        record.  C{also}, if given, is called after each round's turns.
        """
        for child in self.loads.values():
            child.wait_for_output("READY", timeout)
        try:
            for key in self.paused:
                _signal_tree(self.loads[key], "suspend")
            order = list(self.loads)
            for number in range(rounds):
                turn = order[number % len(order):] + order[:number % len(order)]
                for key in turn:
                    child = self.loads[key]
                    if key in self.paused:
                        _signal_tree(child, "resume")
                    child.signal(signal.SIGUSR1)
                    child.wait_for_output(f"ROUND {number} DONE", timeout)
                    if key in self.paused:
                        _signal_tree(child, "suspend")
                if also is not None:
                    also()
        finally:
            # Let them end (or be killed) as running processes.
            for key in self.paused:
                _signal_tree(self.loads[key], "resume")
        return {key: last_json(child, timeout) for key, child in self.loads.items()}


def _signal_tree(child: Child, how: str) -> None:
    """Suspend (SIGSTOP) or resume (SIGCONT) a child and all its descendants."""
    for process in [child.ps, *child.ps.children(recursive=True)]:
        try:
            getattr(process, how)()
        except psutil.NoSuchProcess:
            pass


def bare_primes(count: int, lanes: int, stop: int) -> float:
    """
    Seconds to run C{count} primes children (what a slave starts for each
    run) in C{lanes} parallel lanes, without picluster: what the machine
    itself allows, for the speed-up to be read against.
    """
    request = frame(json.dumps({"function": "picluster.tasks.primes:primes",
                                "args": {"start": 0, "stop": stop}}).encode())
    argv = [sys.executable, "-m", "picluster.tasks.childmain"]

    def lane(runs: int) -> None:
        for _ in range(runs):
            # A worker given one task, then the end of its input.
            done = subprocess.run(argv, input=request, capture_output=True, env=child_env(),
                                  check=False)
            outcome = done.stdout[HEADER.size:].decode(errors="replace")
            if f'"result":{PRIMES_BELOW[stop]}' not in outcome:
                raise BenchError(f"a bare primes child failed: {done.stdout!r} {done.stderr!r}")

    started = time.perf_counter()
    with ThreadPoolExecutor(lanes) as pool:
        for running in [pool.submit(lane, count // lanes) for _ in range(lanes)]:
            running.result()
    return time.perf_counter() - started


def last_json(child: Child, timeout: float) -> dict[str, Any]:
    """The last JSON line a child printed, once it has exited cleanly."""
    status = child.wait(timeout)
    lines = [line for line in child.output().splitlines() if line.startswith("{")]
    if status != 0 or not lines:
        raise BenchError(f"{child.name} failed (exit status {status})\n{child.report()}")
    return json.loads(lines[-1])


def median(rounds: list[dict[str, Any]], key: str) -> float:
    return statistics.median(measured[key] for measured in rounds)


def run(report: Any, options: Any) -> None:
    size = SIZES[options.quick]
    with Processes("tasks", options.keep) as procs:
        cluster = TaskCluster(procs, "picluster", 2)
        turns = Rounds()
        turns.add("picluster", cluster.load(size["count"], warmup=size["warmup"],
                                            rounds=size["rounds"]))
        turns.add("dask_default", dask_load(procs, "dask-default", size), pause=True)
        turns.add("dask_saturation_inf", dask_load(procs, "dask-saturation-inf", size,
                                                   "--saturation", "inf"), pause=True)
        turns.add("picluster_primes", cluster.load(
            size["count"], warmup=size["warmup"], rounds=size["rounds"], name="primes",
            args={"start": 0, "stop": PRIMES_STOP}, expect=PRIMES_BELOW_STOP,
        ))
        turns.add("dask_primes", dask_load(procs, "dask-primes", size, "--task", "primes"),
                  pause=True)
        records = turns.run(size["rounds"])
        cluster.stop()

        stop = size["primes_stop"]
        turns = Rounds()
        for slaves in (1, 2):
            primes = TaskCluster(procs, f"primes{slaves}", slaves, slave_args=("--slots", "1"))
            turns.add(str(slaves), primes.load(
                size["primes_count"], warmup=slaves, rounds=size["primes_rounds"], name="primes",
                args={"start": 0, "stop": stop}, expect=PRIMES_BELOW[stop],
            ))
        bare: dict[str, list[float]] = {"1": [], "2": []}

        def bare_round() -> None:
            for lanes in (1, 2):
                bare[str(lanes)].append(bare_primes(size["primes_count"], lanes, stop))

        primes_records = turns.run(size["primes_rounds"], also=bare_round)

    ours = picluster_rounds(records["picluster"])
    slots = records["picluster"]["slots"]
    rate = report.figure("picluster_tasks_per_s", median(ours, "tasks_per_s"))
    report.figure("picluster_wall_ms_per_task", 1000 / rate)
    report.figure("picluster_master_cpu_ms_per_task", median(ours, "master_cpu_ms"))
    report.figure("picluster_slaves_cpu_ms_per_task", median(ours, "slaves_cpu_ms"))
    report.figure("picluster_client_cpu_ms_per_task", median(ours, "client_cpu_ms"))
    report.figure("picluster_slots_per_slave", slots)
    report.figure("picluster_rounds", ours)
    report.figure("tasks_per_round", size["count"])
    table = report.table(
        f"No-op tasks end to end (submit -> every result), {size['count']:,} a round,"
        f" median of {size['rounds']} rounds each, taking turns",
        ["system", "tasks/s", "wall ms/task", "coordinator CPU ms/task",
         "workers CPU ms/task", "client CPU ms/task"],
    )
    shown_slots = " + ".join(str(each) for each in slots)
    table.rows.append([
        f"picluster, SQLite queue, 2 slaves ({shown_slots} slots)", rate, 1000 / rate,
        median(ours, "master_cpu_ms"), median(ours, "slaves_cpu_ms"), median(ours, "client_cpu_ms"),
    ])
    dask_rates = {}
    for key, label in (("dask_default", "Dask, defaults"),
                       ("dask_saturation_inf", "Dask, worker-saturation inf")):
        rounds = dask_rounds(records[key])
        dask_rates[key] = report.figure(f"{key}_tasks_per_s", median(rounds, "tasks_per_s"))
        report.figure(f"{key}_scheduler_cpu_ms_per_task", median(rounds, "scheduler_cpu_ms"))
        report.figure(f"{key}_workers_cpu_ms_per_task", median(rounds, "workers_cpu_ms"))
        report.figure(f"{key}_rounds", rounds)
        table.rows.append([label, dask_rates[key], 1000 / dask_rates[key],
                           median(rounds, "scheduler_cpu_ms"), median(rounds, "workers_cpu_ms"),
                           None])

    small = report.table(
        f"Small CPU tasks: primes over the first {PRIMES_STOP:,} numbers, {size['count']:,}"
        f" a round, median of {size['rounds']} rounds each, taking turns",
        ["system", "tasks/s", "wall ms/task", "coordinator CPU ms/task", "workers CPU ms/task"],
    )
    small_ours = picluster_rounds(records["picluster_primes"])
    small_rate = report.figure("picluster_primes_small_tasks_per_s",
                               median(small_ours, "tasks_per_s"))
    report.figure("picluster_primes_small_rounds", small_ours)
    small.rows.append([f"picluster, warm workers, 2 slaves ({shown_slots} slots)", small_rate,
                       1000 / small_rate, median(small_ours, "master_cpu_ms"),
                       median(small_ours, "slaves_cpu_ms")])
    small_dask = dask_rounds(records["dask_primes"])
    small_dask_rate = report.figure("dask_primes_small_tasks_per_s",
                                    median(small_dask, "tasks_per_s"))
    report.figure("dask_primes_small_rounds", small_dask)
    small.rows.append(["Dask, defaults", small_dask_rate, 1000 / small_dask_rate,
                       median(small_dask, "scheduler_cpu_ms"), median(small_dask, "workers_cpu_ms")])

    seconds = {}
    for slaves, key in (("1", "primes_1_slave"), ("2", "primes_2_slaves")):
        rounds = primes_records[slaves]["rounds"]
        seconds[slaves] = report.figure(f"{key}_seconds", median(rounds, "seconds"))
        report.figure(f"{key}_rounds", rounds)
    speedup = seconds["1"] / seconds["2"]
    bare_seconds = {lanes: statistics.median(each) for lanes, each in bare.items()}
    report.figure("bare_primes_seconds", bare)
    report.figure("bare_primes_speedup", bare_seconds["1"] / bare_seconds["2"])
    primes_table = report.table(
        f"primes: {size['primes_count']} runs counting the primes below {stop:,},"
        f" median of {size['primes_rounds']} rounds each, taking turns",
        ["run by", "seconds", "seconds a run on a lane", "speed-up"],
    )
    for slaves in ("1", "2"):
        noun = "slave" if slaves == "1" else "slaves"
        primes_table.rows.append([f"picluster, {slaves} {noun} (--slots 1)", seconds[slaves],
                                  seconds[slaves] * int(slaves) / size["primes_count"],
                                  seconds["1"] / seconds[slaves]])
    for lanes in ("1", "2"):
        primes_table.rows.append([f"bare children, {lanes} at a time", bare_seconds[lanes],
                                  bare_seconds[lanes] * int(lanes) / size["primes_count"],
                                  bare_seconds["1"] / bare_seconds[lanes]])

    report.note("picluster's coordinator is the master; Dask's is the client process, which"
                " runs the scheduler of a LocalCluster and the client (so its client CPU is"
                " counted there). Workers: the two slaves; Dask's two workers and their nannies.")
    report.note(f"The slaves run with their default --slots, this machine's core count,"
                f" and --prefetch (as many ready as slots): they offered {shown_slots} slots.")
    report.note("Each Dask cluster is stopped (SIGSTOP) while the others take their turn:"
                " idle, a LocalCluster's heartbeats cost some 10 % of a core here.")
    report.note("Bare children: the same primes workers a slave starts, each given one task,"
                " run by this process with no picluster in between: the speed-up the machine"
                " itself allowed meanwhile (below 2 when other work holds a core).")
    report.ratio("picluster/dask_default", rate / dask_rates["dask_default"], 4,
                 what="no-op tasks/s end to end, durable queue, against Dask's defaults")
    report.ratio("picluster/dask_saturation_inf", rate / dask_rates["dask_saturation_inf"], 3,
                 what="no-op tasks/s end to end, durable queue, against Dask with"
                      " worker-saturation inf")
    report.ratio("picluster/dask_primes_10000", small_rate / small_dask_rate, 1.5,
                 what=f"small CPU tasks/s (primes over {PRIMES_STOP:,} numbers), warm workers,"
                      " against Dask's defaults running the same function")
    report.ratio("primes_speedup_1_to_2_slaves", speedup, 1.8,
                 what="primes workload: seconds on 1 slave over seconds on 2 (--slots 1 each)")
