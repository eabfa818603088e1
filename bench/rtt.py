"""
RTT: request/reply round trips per second and latency over one connection, against AMP and bare JSON.

Servers, each its own process: a real C{twistd -n picluster-master} (secure,
as installed, and a second one with C{--insecure} for the cost of TLS),
Twisted AMP answering an echo command (L{bench.ampbench}), and the ceiling,
a bare Int32StringReceiver JSON server replying by id (L{bench.bare}); and
the floor under all three: a Twisted protocol echoing bytes, with no framing
and no JSON, which shows how much of a round trip is the reactor's and the
kernel's whatever the protocol.  One request at a time, that floor is the
measure: what picluster adds to a round trip is its share of the whole.

A client process a system (L{bench.rttclient}, the same driver for all)
connects once, warms up, and then measures in slices: keeping 1, then 50,
requests in flight over its one connection (for picluster, C{ping} with an
id through L{PiClusterProtocol.request}, which the master answers with a
C{pong}).  The systems take turns slice by slice, each going first in turn,
so whatever else the machine does falls on all of them alike.  Calls/s is
the median over the slices, a ratio the median of the slices' ratios; the
latency percentiles (p50, p90, p99, p99.9) are over every call of every
slice, and are in the record for a plot.
"""

from __future__ import annotations

import json
import signal
import statistics
from typing import Any

from bench.procs import BenchError, Child, Processes, free_port, wait_until

#: The master as installed (TLS, tokens), the same with --insecure, and the baselines.
SYSTEMS = ("picluster", "plain", "amp", "bare", "echo")
INFLIGHT = (1, 50)

#: (slices, seconds a slice for each in-flight count, seconds of warm-up).
FULL = (8, 0.6, 0.5)
QUICK = (2, 0.25, 0.2)

PERCENTILE_KEYS = ("p50_us", "p90_us", "p99_us", "p99.9_us")

#: The goals, all for the master with --insecure (like with like: every
#: baseline is plain TCP): its round trips/s one at a time over the echo
#: floor's, with 50 in flight over bare JSON's, and its p99 latency over
#: AMP's at each (no worse than AMP's).
SERIAL_VS_ECHO_GOAL = 0.85
INFLIGHT_VS_BARE_GOAL = 1.5
P99_VS_AMP_GOAL = 1.0


def json_lines(client: Child) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in client.output().splitlines() if line.startswith("{")]
    for record in records:
        if "error" in record:
            raise BenchError(f"{client.name} failed: {record['error']}\n{client.report()}")
    return records


def one_slice(client: Child, number: int) -> dict[str, float]:
    client.signal(signal.SIGUSR1)

    def done() -> dict[str, float] | None:
        for record in json_lines(client):
            if record.get("slice") == number:
                return record["per_second"]
        if not client.running:
            raise BenchError(f"{client.name} exited\n{client.report()}")
        return None

    return wait_until(done, f"slice {number} of {client.name}", timeout=60, poll=0.01,
                      report=client.report)


def measure(slices: int, seconds: float, warmup: float, keep: bool) -> dict[Any, dict[str, Any]]:
    with Processes("rtt", keep) as procs:
        ports = {system: free_port() for system in SYSTEMS}
        servers = {
            "picluster": procs.master("master", ports["picluster"], db=":memory:"),
            "plain": procs.master("plain", ports["plain"], db=":memory:", secure=False),
            "amp": procs.python("amp", "bench.ampbench", "serve", str(ports["amp"])),
            "bare": procs.python("bare", "bench.bare", "serve", str(ports["bare"])),
            "echo": procs.python("echo", "bench.bare", "echo", str(ports["echo"])),
        }
        for system in ("amp", "bare", "echo"):
            servers[system].wait_for_output("READY")
        clients = {
            system: procs.python(
                f"client-{system}", "bench.rttclient", system, str(ports[system]),
                "--inflight", ",".join(map(str, INFLIGHT)), "--seconds", str(seconds),
                "--warmup", str(warmup), "--slices", str(slices),
                *(("--token-file", procs.token_file("master", "client")) if system == "picluster" else ()),
            )
            for system in SYSTEMS
        }
        rates: dict[Any, list[float]] = {}
        for client in clients.values():
            client.wait_for_output("READY")
        for number in range(1, slices + 1):
            # Each system goes first in turn.
            turn = (number - 1) % len(SYSTEMS)
            for system in SYSTEMS[turn:] + SYSTEMS[:turn]:
                for inflight, rate in one_slice(clients[system], number).items():
                    rates.setdefault((system, int(inflight)), []).append(rate)
        measured: dict[Any, dict[str, Any]] = {}
        for system, client in clients.items():
            client.wait(timeout=30)
            for record in json_lines(client):
                if "inflight" in record:
                    key = (system, record["inflight"])
                    measured[key] = {
                        "per_second": statistics.median(rates[key]),
                        "slices": rates[key],
                        "calls": record["calls"],
                        **{name: record[name] for name in PERCENTILE_KEYS},
                    }
        for system, server in servers.items():
            if not server.running:
                raise BenchError(f"the {system} server died\n{server.report()}")
    return measured


def rate(measured: dict[Any, dict[str, Any]], system: str, other: str, inflight: int) -> float:
    """
    C{system}'s calls/s over C{other}'s: the median of the slices' ratios
    (a slice of each ran back to back, under the same load from whatever
    else the machine does).
    """
    return statistics.median(
        mine / theirs for mine, theirs in zip(measured[(system, inflight)]["slices"],
                                              measured[(other, inflight)]["slices"])
    )


def run(report: Any, options: Any) -> None:
    slices, seconds, warmup = QUICK if options.quick else FULL
    measured = measure(slices, seconds, warmup, options.keep)
    table = report.table(
        f"Round trips over one connection (calls/s: median of {slices} slices of {seconds:g} s,"
        " vs: median of the slices' ratios; latency: over all of them)",
        ["in flight", "system", "calls/s", "vs echo", "vs bare", "vs AMP", "p50 us", "p90 us",
         "p99 us", "p99.9 us"],
    )
    for inflight in INFLIGHT:
        for system in SYSTEMS:
            figures = measured[(system, inflight)]
            report.figure(f"rtt.{system}.{inflight}", figures)
            table.rows.append([
                inflight, system, figures["per_second"], rate(measured, system, "echo", inflight),
                rate(measured, system, "bare", inflight),
                rate(measured, system, "amp", inflight), *(figures[key] for key in PERCENTILE_KEYS),
            ])
    # The plot's data (bench.summary draws it): every system's percentiles
    # in milliseconds, by in-flight count.
    report.figure("latency_ms", {
        ("serial" if inflight == 1 else f"inflight{inflight}"): {
            system: {
                key[:-3]: measured[(system, inflight)][key] / 1000 for key in PERCENTILE_KEYS
            }
            for system in SYSTEMS
        }
        for inflight in INFLIGHT
    })

    report.ratio("rtt_serial_vs_echo", rate(measured, "plain", "echo", 1), SERIAL_VS_ECHO_GOAL,
                 what="picluster (plain) round trips/s one at a time, over the echo floor's")
    report.ratio("rtt_50_vs_bare", rate(measured, "plain", "bare", 50), INFLIGHT_VS_BARE_GOAL,
                 what="picluster (plain) round trips/s with 50 in flight, over bare JSON's")
    for inflight in INFLIGHT:
        name = "serial" if inflight == 1 else str(inflight)
        report.ratio(
            f"rtt_p99_{name}_vs_amp",
            measured[("plain", inflight)]["p99_us"] / measured[("amp", inflight)]["p99_us"],
            P99_VS_AMP_GOAL, higher=False,
            what=f"picluster (plain) p99 latency over AMP's, {inflight} in flight",
        )
    for other in ("bare", "amp"):
        for inflight in INFLIGHT:
            report.figure(f"rtt.plain_vs_{other}.{inflight}", rate(measured, "plain", other, inflight))
    tls = {inflight: rate(measured, "picluster", "plain", inflight) for inflight in INFLIGHT}
    for inflight, ratio in tls.items():
        report.figure(f"rtt.tls_vs_plain.{inflight}", ratio)
    report.note(
        "the goals compare like with like, all on plain TCP: the"
        " master run with --insecure.  The cost of TLS is the secure master's calls/s over"
        f" the plain one's: {tls[1]:.2f} one at a time, {tls[INFLIGHT[-1]]:.2f} with"
        f" {INFLIGHT[-1]} in flight (each round trip is encrypted and decrypted twice, in"
        " pyOpenSSL's memory BIO)"
    )
    report.note(
        "echo is the floor: bytes echoed by a Twisted protocol, no framing, no JSON."
        f" One at a time it makes {rate(measured, 'echo', 'amp', 1):.2f}x AMP's calls/s and"
        f" bare JSON {rate(measured, 'bare', 'amp', 1):.2f}x: most of a serial round trip"
        " is the reactor's and the kernel's, the same for every system, so the goal one at a"
        " time is a share of the floor; AMP and bare JSON are shown for information"
        f" (picluster makes {rate(measured, 'plain', 'amp', 1):.2f}x AMP's and"
        f" {rate(measured, 'plain', 'bare', 1):.2f}x bare JSON's)"
    )
