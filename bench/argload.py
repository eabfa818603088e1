"""
The arguments benchmark's two children: the client that queues tasks with
arguments on a real master, and the baseline that holds the same arguments
decoded in a bare process.

C{python -m bench.argload submit --master HOST:PORT --token-file FILE
--shape SHAPE --tasks N} submits N tasks of C{echo} whose arguments have
that shape (no slave runs them: they stay queued) and prints one JSON line,
the bytes of their arguments as JSON.

C{python -m bench.argload hold --shape SHAPE --tasks N} builds the same
arguments as JSON, decodes them and keeps them, and prints one JSON line:
the bytes of JSON and how much its resident memory grew by holding them
decoded (what a master that kept arguments as Python objects would hold).
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import string
import sys
from collections.abc import Iterator
from typing import Any

import psutil
from twisted.internet import defer, task

#: How the arguments of each task look: names to (seeded) builders.
SHAPES = ("words", "numbers", "records")

#: Tasks a submit carries: some 60 KiB of arguments each, under a frame.
PER_SUBMIT = 12


def arguments(shape: str, count: int) -> Iterator[dict[str, Any]]:
    """C{count} task arguments of C{shape}, each some 60 KiB of JSON, the same every run."""
    rng = random.Random(shape)
    for _ in range(count):
        if shape == "words":
            yield {"words": ["".join(rng.choices(string.ascii_lowercase, k=3)) for _ in range(10_000)]}
        elif shape == "numbers":
            yield {"xs": [rng.random() for _ in range(3_000)]}
        else:
            yield {"rows": [{"id": i, "name": f"item-{i}", "ok": True} for i in range(1_500)]}


def json_bytes(args: dict[str, Any]) -> int:
    return len(json.dumps(args, separators=(",", ":")).encode())


async def submit(reactor: Any, options: argparse.Namespace) -> None:
    from bench.secure import token_from
    from picluster.address import parse_master
    from picluster.client import Client

    token = token_from(options.token_file)
    client = Client(parse_master(options.master), reactor=reactor, reconnect=False, token=token,
                    insecure=token is None)
    await client.connect()
    total = 0
    batch: list[dict[str, Any]] = []
    for args in arguments(options.shape, options.tasks):
        total += json_bytes(args)
        batch.append({"name": "echo", "args": args})
        if len(batch) == PER_SUBMIT:
            await client.submit(batch)
            batch = []
    if batch:
        await client.submit(batch)
    await client.close()
    print(json.dumps({"json_bytes": total}), flush=True)


def hold(options: argparse.Namespace) -> None:
    texts = [json.dumps(args, separators=(",", ":")) for args in arguments(options.shape, options.tasks)]
    total = sum(len(text.encode()) for text in texts)
    gc.collect()
    before = psutil.Process().memory_info().rss
    held = [json.loads(text) for text in texts]
    gc.collect()
    grown = psutil.Process().memory_info().rss - before
    print(json.dumps({"json_bytes": total, "held_bytes": grown, "tasks": len(held)}), flush=True)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.argload")
    parser.add_argument("what", choices=["submit", "hold"])
    parser.add_argument("--master", help="HOST:PORT of the master (submit)")
    parser.add_argument("--token-file", default=None, help="the client token (submit; plain without)")
    parser.add_argument("--shape", choices=SHAPES, required=True)
    parser.add_argument("--tasks", type=int, required=True)
    options = parser.parse_args(argv)
    if options.what == "hold":
        hold(options)
    else:
        task.react(lambda reactor: defer.Deferred.fromCoroutine(submit(reactor, options)))


if __name__ == "__main__":
    main(sys.argv[1:])
