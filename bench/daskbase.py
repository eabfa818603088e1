"""
The task benchmark's baseline: Dask distributed running the same tasks.

C{python -m bench.daskbase --count N [--warmup W] [--rounds R]
[--saturation inf] [--task noop|primes]}

A C{LocalCluster(n_workers=2, threads_per_worker=1)} (worker processes, no
dashboard), and per round C{client.map} of a no-op over N fresh inputs,
gathered: what a user would write instead of submitting to picluster.  With
C{--task primes}, each task is instead picluster's own pure-Python
C{primes} over the first L{PRIMES_STOP} numbers (not pure: Dask runs every
one, as picluster does).  With
C{--saturation inf}, C{distributed.scheduler.worker-saturation} is set to
inf before the scheduler starts: the scheduler then sends every task to the
workers at once, instead of holding back all but about one per worker
thread (its default since 2022.11), which is faster for tiny tasks.
It prints C{READY} once the cluster is up and warm; each round starts when
the process gets a SIGUSR1 (see L{bench.tasks.Rounds}) and ends with
C{ROUND k DONE}; one JSON line at the end gives per round the tasks, the
seconds, and the CPU seconds this process (client and scheduler) and its
worker processes used.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from typing import Any

import psutil

#: The numbers each small C{primes} task counts over, and the primes among them.
PRIMES_STOP = 10_000
PRIMES_BELOW_STOP = 1229


def noop(value: int) -> int:
    """The task: nothing, as picluster's C{echo} does nothing."""
    return value


def map_tasks(client: Any, task: str, inputs: range) -> tuple[Any, list[Any]]:
    """The futures of C{task} over C{inputs}, and the results they must give."""
    if task == "primes":
        from picluster.tasks.primes import primes

        count = len(inputs)
        futures = client.map(primes, [0] * count, [PRIMES_STOP] * count, pure=False)
        return futures, [PRIMES_BELOW_STOP] * count
    return client.map(noop, inputs), list(inputs)


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.daskbase")
    parser.add_argument("--count", type=int, required=True, help="tasks in each timed round")
    parser.add_argument("--warmup", type=int, default=0, help="tasks run before timing")
    parser.add_argument("--rounds", type=int, default=1, help="timed rounds")
    parser.add_argument("--saturation", default=None,
                        help="distributed.scheduler.worker-saturation (default: Dask's own)")
    parser.add_argument("--task", choices=("noop", "primes"), default="noop",
                        help="what each task runs")
    return parser.parse_args(argv)


def cpu_seconds(process: psutil.Process) -> tuple[float, float]:
    """CPU seconds of C{process} and of its children (the workers and nannies)."""
    own = process.cpu_times()
    children = 0.0
    for child in process.children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.Error:
            continue
        children += times.user + times.system
    return own.user + own.system, children


def main(options: argparse.Namespace) -> None:
    import dask
    from distributed import Client, LocalCluster

    if options.saturation is not None:
        dask.config.set({"distributed.scheduler.worker-saturation": float(options.saturation)})
    # Rounds asked for so far: the handler only counts (no lock is safe in
    # a signal handler), and each round waits until its turn is asked for.
    asked = [0]
    signal.signal(signal.SIGUSR1, lambda *_: asked.__setitem__(0, asked[0] + 1))
    me = psutil.Process()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        offset = 0
        if options.warmup:
            futures, expected = map_tasks(client, options.task, range(offset, offset + options.warmup))
            assert client.gather(futures) == expected
            offset += options.warmup
        print("READY", flush=True)
        rounds = []
        for number in range(options.rounds):
            while asked[0] <= number:
                time.sleep(0.02)
            inputs = range(offset, offset + options.count)
            offset += options.count
            own, children = cpu_seconds(me)
            started = time.perf_counter()
            futures, expected = map_tasks(client, options.task, inputs)
            results = client.gather(futures)
            seconds = time.perf_counter() - started
            own_after, children_after = cpu_seconds(me)
            if results != expected:
                raise RuntimeError("Dask returned wrong results")
            del futures
            rounds.append({"tasks": options.count, "seconds": seconds,
                           "cpu": own_after - own, "workers_cpu": children_after - children})
            print(f"ROUND {number} DONE", flush=True)
    print(json.dumps({"rounds": rounds}), flush=True)


if __name__ == "__main__":
    main(parse_arguments(sys.argv[1:]))
