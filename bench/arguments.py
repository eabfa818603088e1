"""
Arguments held: a master's memory for the arguments of its queued tasks, against holding them decoded.

Whoever may submit chooses how much a master keeps, and the master bounds
it in bytes of arguments as JSON (C{--max-args}, C{--quota-args}).  Those
bounds mean what they say only if the master holds about the bytes it
counts: decoded into Python objects, the same arguments take from twice
(numbers) to a dozen times (lists of short strings) their JSON.  A real
secure master with no slaves takes tasks of three shapes of arguments from
a real client (L{bench.argload}), a thousand of some 60 KiB each, and stay
queued; its resident memory is read before and after each shape.  The
baseline is a bare Python process holding the same arguments decoded, as a
master that kept them as Python objects would.
"""

from __future__ import annotations

import json
from typing import Any

from bench.argload import SHAPES
from bench.procs import BenchError, Processes, free_port
from bench.scale import quiet, rss

#: Tasks of each shape.
SIZES = {False: 1000, True: 60}


def run(report: Any, options: Any) -> None:
    tasks = SIZES[options.quick]
    rows = []
    with Processes("arguments", options.keep) as procs:
        port = free_port()
        master = procs.master("master", port)
        token = procs.token_file("master", "client")
        quiet(master, 1.0)
        for shape in SHAPES:
            before = rss(master)
            client = procs.python(f"submit-{shape}", "bench.argload", "submit", "--master",
                                  f"127.0.0.1:{port}", "--token-file", token, "--shape", shape,
                                  "--tasks", str(tasks))
            client.wait(timeout=300)
            submitted = _last_json(client)
            quiet(master, 1.0)
            grown = rss(master) - before
            baseline = procs.python(f"hold-{shape}", "bench.argload", "hold", "--shape", shape,
                                    "--tasks", str(tasks))
            baseline.wait(timeout=300)
            held = _last_json(baseline)
            if held["json_bytes"] != submitted["json_bytes"]:
                raise BenchError(f"{shape}: the baseline holds other arguments than were submitted")
            rows.append((shape, submitted["json_bytes"], grown, held["held_bytes"]))

    table = report.table(
        f"Resident memory for {tasks:,} queued tasks' arguments of each shape",
        ["shape", "JSON MiB", "master MiB", "per JSON byte", "decoded MiB", "per JSON byte"],
    )
    mib = 1024 * 1024
    json_total = master_total = decoded_total = 0
    for shape, json_bytes, grown, decoded in rows:
        table.rows.append([shape, json_bytes / mib, grown / mib, grown / json_bytes,
                           decoded / mib, decoded / json_bytes])
        report.figure(f"{shape}_json_bytes", json_bytes)
        report.figure(f"{shape}_master_bytes", grown)
        report.figure(f"{shape}_decoded_bytes", decoded)
        json_total += json_bytes
        master_total += grown
        decoded_total += decoded
    report.note("The master's figure is its whole growth: the task rows as well as their"
                " arguments, and whatever the submissions left in its allocator.")
    report.ratio("master_bytes_per_json_byte", master_total / json_total, 1.5, higher=False,
                 what="resident memory a master grows by per byte of queued arguments as JSON")
    report.ratio("master_vs_decoded", master_total / decoded_total, 0.5, higher=False,
                 what="the master's growth against the same arguments held decoded")


def _last_json(child: Any) -> dict[str, Any]:
    for line in reversed(child.output().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise BenchError(f"no result from {child.name}\n{child.report()}")
