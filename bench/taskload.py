"""
The task benchmarks' client: submit tasks to a real master, wait for them all.

C{python -m bench.taskload --master HOST:PORT --count N [--name echo]
[--args JSON] [--expect JSON] [--slaves S] [--warmup W] [--rounds R]
[--pids PID,...]}

It uses L{picluster.client.Client} as a program would (as C{picluster map}
does): submit the whole batch, then wait for every result, and check every
result.  It first waits until C{--slaves} slaves have offered to work; a
warm-up batch goes next (connections, imports, SQLite's cache, the slaves'
first child processes), and then it prints C{READY}.  Each round starts
when the process gets a SIGUSR1 (see L{bench.tasks.Rounds}: the benchmark
takes turns between the systems it compares) and is timed from the first
submit to the last result; C{ROUND k DONE} says it has ended.  At the end it
prints one JSON line: the slots each slave offered, and per round the tasks,
the seconds, when the submission was answered, and the CPU seconds each of
C{--pids} (the master, the slaves) used in the round, so that the master's
CPU per task is its own, not a guess.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from typing import Any

import psutil
from twisted.internet import defer, task

from bench.secure import token_from
from picluster.address import parse_master
from picluster.client import Client


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.taskload")
    parser.add_argument("--master", required=True, help="HOST:PORT of the master")
    parser.add_argument("--count", type=int, required=True, help="tasks in each timed round")
    parser.add_argument("--name", default="echo", help="the task to run")
    parser.add_argument("--args", default="{}", help="the arguments of every task, as JSON")
    parser.add_argument("--expect", default=None,
                        help="the result every task must give, as JSON (echo: its arguments)")
    parser.add_argument("--slaves", type=int, default=0, help="working slaves to wait for")
    parser.add_argument("--token-file", default=None,
                        help="the client token of a secure master (plain without it)")
    parser.add_argument("--warmup", type=int, default=0, help="tasks run before timing")
    parser.add_argument("--rounds", type=int, default=1, help="timed rounds")
    parser.add_argument("--pids", default="", help="comma-separated pids whose CPU to measure")
    return parser.parse_args(argv)


def cpu_seconds(processes: list[psutil.Process]) -> list[float]:
    seconds = []
    for process in processes:
        times = process.cpu_times()
        seconds.append(times.user + times.system)
    return seconds


async def run_batch(client: Client, specs: list[dict[str, Any]], expected: Any) -> dict[str, Any]:
    """Submit C{specs}, wait for all of them; say how long each half took."""
    started = time.perf_counter()
    submitted = await client.submit(specs)
    answered = time.perf_counter()
    ids = [entry["id"] for entry in submitted["tasks"]]
    records = await client.wait(ids)
    finished = time.perf_counter()
    wrong = [record for record in records.values() if record["state"] != "done"
             or (expected is not None and record["result"] != expected)]
    if wrong:
        raise RuntimeError(f"{len(wrong)} of {len(ids)} tasks did not end as expected;"
                           f" the first: {wrong[0]}")
    return {"tasks": len(ids), "seconds": finished - started, "submit_seconds": answered - started}


async def working_slaves(reactor: Any, client: Client, wanted: int) -> list[int]:
    """Wait until C{wanted} slaves offer to work; the slots of each."""
    deadline = reactor.seconds() + 60
    while True:
        status = await client.status()
        slots = [slave["slots"] for slave in status["slaves"] if slave.get("slots")]
        if len(slots) >= wanted:
            return slots
        if reactor.seconds() > deadline:
            raise RuntimeError(f"only {len(slots)} of {wanted} slaves offered to work in 60 s")
        await task.deferLater(reactor, 0.1, lambda: None)


async def main(reactor: Any, options: argparse.Namespace) -> None:
    args = json.loads(options.args)
    # Every result is checked, so that a broken task path cannot pass for a
    # fast one; echo answers with its arguments.
    if options.expect is not None:
        expected = json.loads(options.expect)
    else:
        expected = args if options.name == "echo" else None
    spec = {"name": options.name, "args": args}
    watched = [psutil.Process(int(pid)) for pid in options.pids.split(",") if pid]
    me = psutil.Process()
    go: defer.DeferredQueue[None] = defer.DeferredQueue()
    signal.signal(signal.SIGUSR1, lambda *_: reactor.callFromThread(go.put, None))
    token = token_from(options.token_file)
    client = Client(parse_master(options.master), reactor=reactor, reconnect=False, token=token,
                    insecure=token is None)
    await client.connect()
    slots = await working_slaves(reactor, client, options.slaves)
    if options.warmup:
        await run_batch(client, [dict(spec) for _ in range(options.warmup)], expected)
    print("READY", flush=True)
    rounds = []
    for number in range(options.rounds):
        await go.get()
        specs = [dict(spec) for _ in range(options.count)]
        before, mine = cpu_seconds(watched), cpu_seconds([me])
        measured = await run_batch(client, specs, expected)
        after, mine_after = cpu_seconds(watched), cpu_seconds([me])
        measured["cpu"] = [b - a for a, b in zip(before, after)]
        measured["client_cpu"] = mine_after[0] - mine[0]
        rounds.append(measured)
        print(f"ROUND {number} DONE", flush=True)
    await client.close()
    print(json.dumps({"slots": slots, "rounds": rounds}), flush=True)


def run(reactor: Any, options: argparse.Namespace) -> defer.Deferred[None]:
    return defer.Deferred.fromCoroutine(main(reactor, options))


if __name__ == "__main__":
    task.react(run, [parse_arguments(sys.argv[1:])])
