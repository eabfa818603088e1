"""
Ingest: vitals and keepalive messages per second a master handles, against bare JSON and typed servers.

N simulated slaves (L{bench.slavesim}, in processes of their own) say hello
to a real C{twistd -n picluster-master} as real slaves do (over TLS, with
the slave token's proof, as installed; and, in the same run, to a second
master started with C{--insecure}), then stream the frames a slave sends:
C{vitals} and keepalive C{ping}s, in a slave's own proportions (its
defaults, 5 s keepalive and 10 s vitals, make two pings to one vitals).
The same generator, in the same run, drives two ceilings (L{bench.bare}),
bare Twisted Int32StringReceiver servers that only decode each frame and
answer what asks for an answer (the ids, and the pings, as the master does:
every server sends the same replies): one decoding with the json module
(C{bare}), one with picluster's own typed msgspec codec (C{typed}).

A round: every connection writes its share of the frames and one request
with an id; frames are handled in order on a connection, so the round ends
at the last connection's reply, every frame handled.  Messages/s = frames
of all connections / (last reply - first write).  The servers take
turns, each going first in turn; the first round warms up and is
dropped; a figure is the median of the rest, and the ratio the median of
the rounds' ratios (each round's two runs are back to back, so what else
the machine does weighs on both alike).  A pair in which either server had
less than 80 % of a core was starved by something else on the machine; it
is recorded, and run again.  Server CPU is measured over
the same rounds: at 100 % of a core, CPU per message is the same ratio
seen from the other side.
"""

from __future__ import annotations

import json
import signal
import statistics
import time
from typing import Any

from bench.procs import BenchError, Child, Processes, free_port, raise_file_limit, wait_until

#: (slaves, generator processes, frames per round over all connections).
FULL_SIZES = [(10, 1, 120_000), (1000, 2, 120_000)]
QUICK_SIZES = [(4, 1, 20_000), (20, 1, 20_000)]

#: Measured rounds per server (after one warm-up round).
FULL_ROUNDS = 9
QUICK_ROUNDS = 1

#: Keepalive pings per vitals frame: a slave's defaults (5 s, 10 s).
PINGS_PER_VITALS = 2.0

#: The goals, each a server's messages/s over a ceiling's in the same
#: rounds: the master with --insecure over bare JSON (like with like, plain
#: TCP) and over the typed ceiling; the master as installed (TLS) over bare
#: JSON.
PLAIN_GOAL = 2.0
TYPED_GOAL = 0.8
SECURE_GOAL = 1.0

#: A round in which a server got less of a core than this (percent) was
#: starved by something else on the machine: it measures the machine, not
#: the server, so its pair is run again (up to as many extra pairs as asked).
STARVED_BELOW = 80.0

#: The master as installed (TLS, tokens), the same master with --insecure,
#: and the two ceilings: bare JSON, and bare with picluster's typed codec.
SYSTEMS = ("picluster", "plain", "bare", "typed")


def start_generators(procs: Processes, system: str, port: int, slaves: int,
                     processes: int, frames: int, token_file: str | None = None) -> list[Child]:
    generators = []
    token = ("--token-file", token_file) if token_file is not None else ()
    for index in range(processes):
        share = slaves // processes + (1 if index < slaves % processes else 0)
        generators.append(procs.python(
            f"gen-{system}-{slaves}-{index}", "bench.slavesim", "--port", str(port),
            "--connections", str(share), "--frames", str(frames // slaves),
            "--pings-per-vitals", str(PINGS_PER_VITALS), *token,
        ))
    for generator in generators:
        generator.wait_for_output("READY")
    return generators


def round_lines(generator: Child) -> list[dict[str, Any]]:
    lines = []
    for line in generator.output().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if "error" in record:
                raise BenchError(f"{generator.name} failed: {record['error']}\n{generator.report()}")
            lines.append(record)
    return lines


def one_round(server: Child, generators: list[Child], number: int) -> dict[str, float]:
    """Start round C{number} on every generator; its figures once all finish."""
    server_cpu = server.cpu_seconds()
    generator_cpu = sum(generator.cpu_seconds() for generator in generators)
    for generator in generators:
        generator.signal(signal.SIGUSR1)

    def finished() -> list[dict[str, Any]] | None:
        lines = [round_lines(generator) for generator in generators]
        if all(len(found) >= number for found in lines):
            return [found[number - 1] for found in lines]
        for generator in generators:
            if not generator.running:
                raise BenchError(f"{generator.name} exited\n{generator.report()}")
        return None

    records = wait_until(finished, f"round {number} of {server.name}", timeout=300,
                         poll=0.01, report=lambda: "\n".join(g.report() for g in generators))
    seconds = max(r["end"] for r in records) - min(r["start"] for r in records)
    frames = sum(r["frames"] for r in records)
    # Taken after the poll above, so a few ms late: the servers sit idle then.
    server_cpu = server.cpu_seconds() - server_cpu
    generator_cpu = sum(generator.cpu_seconds() for generator in generators) - generator_cpu
    return {
        "seconds": seconds,
        "frames": frames,
        "vitals": sum(r["vitals"] for r in records),
        "pings": sum(r["pings"] for r in records),
        "per_second": frames / seconds,
        "server_cpu_percent": 100 * server_cpu / seconds,
        "server_cpu_us_per_frame": 1e6 * server_cpu / frames,
        "generator_cpu_percent": 100 * generator_cpu / seconds,
    }


def measure(slaves: int, processes: int, frames: int, rounds: int, keep: bool,
            check_starved: bool) -> dict[str, dict[str, Any]]:
    """
    C{rounds} pairs of rounds, one of each server, with C{slaves} simulated
    slaves, after a warm-up pair; with C{check_starved}, pairs in which a
    server was starved of CPU are run again.
    """
    with Processes(f"ingest-{slaves}", keep) as procs:
        ports = {system: free_port() for system in SYSTEMS}
        servers = {
            "picluster": procs.master("master", ports["picluster"], db=":memory:"),
            "plain": procs.master("plain", ports["plain"], db=":memory:", secure=False),
            "bare": procs.python("bare", "bench.bare", "serve", str(ports["bare"])),
            "typed": procs.python("typed", "bench.bare", "typed", str(ports["typed"])),
        }
        servers["bare"].wait_for_output("READY")
        servers["typed"].wait_for_output("READY")
        tokens = {"picluster": procs.token_file("master", "slave")}
        generators = {
            system: start_generators(procs, system, ports[system], slaves, processes, frames,
                                     tokens.get(system))
            for system in SYSTEMS
        }
        results: dict[str, list[dict[str, float]]] = {system: [] for system in SYSTEMS}
        starved: list[dict[str, dict[str, float]]] = []
        number = 0
        while len(results["bare"]) < rounds:
            number += 1
            turn = number % len(SYSTEMS)
            order = SYSTEMS[turn:] + SYSTEMS[:turn]
            pair = {system: one_round(servers[system], generators[system], number)
                    for system in order}
            if number == 1:
                continue  # the warm-up
            if (check_starved and len(starved) < rounds
                    and min(r["server_cpu_percent"] for r in pair.values()) < STARVED_BELOW):
                starved.append(pair)
                continue
            for system in SYSTEMS:
                results[system].append(pair[system])
        for system in SYSTEMS:
            if not servers[system].running:
                raise BenchError(f"the {system} server died\n{servers[system].report()}")
        return {
            system: {
                **{key: statistics.median(r[key] for r in runs) for key in runs[0]},
                "rounds": [r["per_second"] for r in runs],
                "starved_rounds": [pair[system]["per_second"] for pair in starved],
                "server_rss": servers[system].rss(),
            }
            for system, runs in results.items()
        }


def round_ratios(measured: dict[str, dict[str, Any]], system: str, other: str) -> list[float]:
    """C{system}'s messages/s over C{other}'s, round by round (each round's runs were back to back)."""
    return [mine / theirs for mine, theirs in zip(measured[system]["rounds"], measured[other]["rounds"])]


def run(report: Any, options: Any) -> None:
    sizes = QUICK_SIZES if options.quick else FULL_SIZES
    rounds = QUICK_ROUNDS if options.quick else FULL_ROUNDS
    raise_file_limit(4 * max(slaves for slaves, _, _ in sizes) + 1024)
    table = report.table(
        f"Messages/s handled (vitals and pings, {PINGS_PER_VITALS:g} pings a vitals;"
        f" median of {rounds} round(s); vs: median of the rounds' ratios)",
        ["slaves", "server", "messages/s", "vs bare", "vs typed", "server CPU %", "CPU us/msg",
         "generator CPU %", "frames/round"],
    )
    for slaves, processes, frames in sizes:
        started = time.monotonic()
        # Quick rounds are too short for their CPU share to say anything.
        measured = measure(slaves, processes, frames, rounds, options.keep,
                           check_starved=not options.quick)
        # Each round's runs were back to back, under the same load from
        # whatever else the machine does: the median of their ratios.
        ratios = {
            (system, other): statistics.median(round_ratios(measured, system, other))
            for system in SYSTEMS for other in ("bare", "typed", "plain")
        }
        report.figure(f"ingest.{slaves}.round_ratios", round_ratios(measured, "plain", "bare"))
        for system in SYSTEMS:
            figures = measured[system]
            report.figure(f"ingest.{slaves}.{system}", figures)
            table.rows.append([
                slaves, system, figures["per_second"], ratios[(system, "bare")],
                ratios[(system, "typed")], figures["server_cpu_percent"],
                figures["server_cpu_us_per_frame"], figures["generator_cpu_percent"],
                figures["frames"],
            ])
        report.figure(f"ingest.{slaves}.tls_vs_plain", ratios[("picluster", "plain")])
        report.figure(f"ingest.{slaves}.secure_vs_typed", ratios[("picluster", "typed")])
        report.figure(f"ingest.{slaves}.seconds", round(time.monotonic() - started, 1))
        starved = len(measured["bare"]["starved_rounds"])
        if starved:
            report.note(f"{slaves} slaves: {starved} pair(s) of rounds run again, a server"
                        f" having had less than {STARVED_BELOW:g} % of a core")
        report.ratio(
            f"ingest_{slaves}_plain_vs_bare", ratios[("plain", "bare")], PLAIN_GOAL,
            what=f"messages/s the master with --insecure handles from {slaves} slaves, over the"
                 " bare Int32StringReceiver JSON server's (both plain TCP)",
        )
        report.ratio(
            f"ingest_{slaves}_plain_vs_typed", ratios[("plain", "typed")], TYPED_GOAL,
            what=f"messages/s the master with --insecure handles from {slaves} slaves, over the"
                 " bare server's decoding with the same typed msgspec codec (both plain TCP)",
        )
        report.ratio(
            f"ingest_{slaves}_secure_vs_bare", ratios[("picluster", "bare")], SECURE_GOAL,
            what=f"messages/s the master (secure, as installed) handles from {slaves} slaves,"
                 " over the bare JSON server's (plain TCP)",
        )
        report.note(
            f"{slaves} slaves: the cost of TLS is the secure master's messages/s over the plain"
            f" one's, {ratios[('picluster', 'plain')]:.2f}; the secure master makes"
            f" {ratios[('picluster', 'typed')]:.2f} of the typed ceiling's (plain TCP)"
        )
    report.note(
        "messages counted: each connection's vitals and pings and its one closing request;"
        " every server answers each ping with a pong and each request with a reply"
    )
    report.note(
        "bare decodes with json.JSONDecoder().decode, the json module's public API at its"
        " quickest; typed and picluster decode with msgspec, in one pass, into the declared"
        " shape of each message (picluster.wire.messages), every field and limit checked"
    )
