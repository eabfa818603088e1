"""
Scale: 20,000 idle slaves on one master, against a thread per connection.

Three parts, each with a real C{twistd -n picluster-master} and herds of
simulated slaves in separate processes (L{bench.herd}, 1,000 slaves each,
each slave from its own 127.1.x.y address):

 1. Memory and keepalive CPU.  The same herds join, in steps (1,000, 5,000,
    10,000, 20,000 slaves: as many as the open-file limit lets one process
    hold, which the benchmark raises to its hard limit), first the threaded
    baseline (L{bench.threaded}: the tutorial's thread-per-connection
    master, up to 5,000: a thread each) and then picluster, secure as
    installed and plain (C{--insecure}); at each
    step, once the server is quiet, its RSS above the empty server (after
    a warm-up herd came and went) per connected slave, and the CPU it spends
    over an idle window of two keepalive periods (default keepalive, 5 s),
    per 1,000 slaves.  Each simulated slave sends picluster as many vitals
    as the dashboard's ring holds (L{picluster.master.history.DEFAULT_SAMPLES}), so
    the ring is counted full, as on a master that has run for 20 minutes.
    For scale, the floor of the threaded design too: a thread per
    connection that only blocks in C{recv} and holds nothing.
 2. Silent slaves.  A master with a short keepalive and dead-after holds
    1,000 slaves; their herds are SIGSTOPped (the slaves vanish without a
    word: no FIN, no RST, their kernels still ACK), and the master's
    C{/api/master} is polled until it counts none.
 3. A master SIGKILLed and restarted (same database, same port, same
    state directory) under its 10,000 slaves (default keepalive): the time
    until every one has rejoined under its own uuid, TLS handshake and
    proven hello included,
    how the jitter spread them, and whether any connect was refused or lost
    in the listen queue (the kernel's ListenOverflows, and connects that
    waited for a SYN to be resent).  Then, to show what the master's default
    backlog of 4,096 (Linux's cap by default) is for, a storm of 2,000
    slaves connecting at once to a fresh master, with that backlog, with
    Twisted's own 50, and with 1,024.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import time
import tracemalloc
import urllib.request
from typing import Any

import psutil

from bench.procs import BenchError, Child, Processes, free_port, port_open, raise_file_limit, wait_until
from bench.report import Report
from picluster.master.admission import RESERVED_DESCRIPTORS
from picluster.master.history import DEFAULT_SAMPLES, VitalsHistory
from picluster.master.service import DEFAULT_BACKLOG
from picluster.wire.messages import Vitals

#: The sizes of a full run and of --quick.  C{threaded}: the steps of the
#: threaded baselines (a thread a slave), the last one shared with
#: C{counts}; C{rejoin}: the slaves of part 3.
SIZES = {
    False: {
        "counts": (1000, 5000, 10000, 20000), "threaded": (1000, 2000, 5000), "per_herd": 1000,
        "window": 10.0, "quiet": 1.0, "silent": 1000, "keepalive": 1.0, "dead_after": 3.0,
        "rejoin": 10000, "storm": 2000,
    },
    True: {
        "counts": (50, 100), "threaded": (50, 100), "per_herd": 50, "window": 1.0, "quiet": 0.5,
        "silent": 60, "keepalive": 0.5, "dead_after": 1.5, "rejoin": 100, "storm": None,
    },
}

#: Descriptors a master keeps for itself, besides its slaves' (its ports, the
#: database, the log), and the steps of slaves are rounded down to this.
MASTER_DESCRIPTORS = RESERVED_DESCRIPTORS
STEP_ROUNDING = 500

#: The master of part 3; its restart takes its state directory over.
REJOIN_MASTER = "rejoin-master"

#: Slaves of the warm-up herd, which joins and leaves before "empty" is read.
WARM_UP = 20

#: Connects a second of all the herds that join at once (each herd takes
#: its share): under what a secure master takes in on a busy 2-core
#: machine, handshakes and all, so that few are turned away at its cap on
#: handshakes and left to back off.
RATE = 500

#: Backlogs a storm is tried with besides the master's default (Linux's
#: largest by default, net.core.somaxconn since 5.4): Twisted's own, and
#: the 1,024 the master had before this benchmark showed SYNs resent.
STORM_BACKLOGS = (50, 1024)

#: Seconds a storm may take to join before we stop waiting (a backlog of 50
#: can take half a minute: each dropped SYN waits 1, 3, 7, 15 s...).
STORM_WAIT = 15.0

#: A server whose CPU use stays under this share of a core is quiet; one
#: whose use is steady is quiet too, below this share (a core is saturated).
QUIET = 0.05
BUSY = 0.9

#: Goals of the issues: RSS per slave against the threaded baseline's, and
#: in KiB; keepalive CPU s/s per 1,000 idle slaves; seconds until the
#: rejoin's slaves are all back; seconds beyond dead_after.
RSS_GOAL = 0.5
KIB_PER_SLAVE_GOAL = 8.0
KEEPALIVE_CPU_GOAL = 0.015
REJOIN_GOAL_SECONDS = 15.0
DETECTION_SLACK = 1.0


# -- herds -------------------------------------------------------------------


def last_line(child: Child, prefix: str) -> dict[str, Any] | None:
    """
    The JSON of the last whole line of C{child}'s output that starts with
    C{prefix} (a line still being written is not yet there).
    """
    with open(child.output_path, "rb") as out:
        size = out.seek(0, os.SEEK_END)
        for tail in (8192, size):
            start = max(0, size - tail)
            out.seek(start)
            lines = out.read().decode("utf-8", "replace").split("\n")
            # The last piece has no newline yet; the first may be cut.
            whole = lines[1 if start else 0:-1]
            for line in reversed(whole):
                if line.startswith(prefix + " "):
                    return json.loads(line[len(prefix) + 1:])
    return None


class Herds:
    """The herd processes of one part, and their summed counts."""

    def __init__(self, procs: Processes, master_port: int, name: str, token_file: str | None = None):
        self.procs = procs
        self.master_port = master_port
        self.name = name
        #: The slave token of a secure master (none for the threaded baselines).
        self.token = ("--token-file", token_file) if token_file is not None else ()
        self.children: list[Child] = []
        self.count = 0

    def add(self, count: int, per_herd: int, *args: str, rate: float = RATE) -> None:
        """
        Start herds of at most C{per_herd} slaves each, C{count} in all,
        with C{args} for each; together they connect C{rate} slaves a second.
        """
        herds = -(-count // per_herd)
        while count > 0:
            size = min(per_herd, count)
            self.children.append(self.procs.python(
                f"{self.name}-{len(self.children) + 1}", "bench.herd",
                "--master", f"127.0.0.1:{self.master_port}", "--count", str(size),
                "--first", str(self.count), "--rate", f"{rate / herds:g}", *self.token, *args,
            ))
            self.count += size
            count -= size

    def status(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for child in self.children:
            if not child.running:
                raise BenchError(f"a herd exited\n{child.report()}")
            shown = last_line(child, "STATUS") or {}
            for key, value in shown.items():
                total[key] = total.get(key, 0) + value
        return total

    def wait(self, key: str, wanted: int, timeout: float | None = None) -> None:
        if timeout is None:
            # Joining takes about count / RATE seconds, and the stragglers' back-off.
            timeout = 120.0 + 2 * wanted / RATE
        wait_until(lambda: self.status().get(key, 0) >= wanted,
                   f"{wanted} {key} in {self.name}", timeout, poll=0.1,
                   report=lambda: f"{self.status()}\n{self.children[-1].report()}")

    def cpu_seconds(self) -> float:
        return sum(child.cpu_seconds() for child in self.children)

    def busy_seconds(self) -> float:
        return sum(child.busy_seconds() for child in self.children)

    def signal(self, number: int) -> None:
        for child in self.children:
            child.signal(number)

    def times(self) -> dict[str, Any]:
        """
        Every herd's rejoin and failure times so far, when the first started
        and the last settled (SIGUSR1, then its TIMES line).
        """
        before = [child.output().count("\nTIMES ") for child in self.children]
        self.signal(signal.SIGUSR1)
        for child, seen in zip(self.children, before):
            wait_until(lambda: child.output().count("\nTIMES ") > seen,
                       f"the times of {child.name}", 30.0, report=child.report)
        rejoins: list[float] = []
        failures: list[tuple[float, str]] = []
        started, settled = [], []
        for child in self.children:
            shown = last_line(child, "TIMES") or {}
            rejoins += shown.get("rejoin_times", [])
            failures += [tuple(failure) for failure in shown.get("failure_times", [])]
            started.append(shown.get("started_at"))
            settled.append(shown.get("last_settled_at"))
        return {"rejoins": sorted(rejoins), "failures": failures,
                "started_at": min(filter(None, started), default=None),
                "last_settled_at": max(filter(None, settled), default=None)}

    def stop(self) -> None:
        for child in self.children:
            child.stop()
        self.children = []


# -- servers -------------------------------------------------------------------


def rss(child: Child, samples: int = 5) -> int:
    """The median of a few readings of C{child}'s resident memory."""
    readings = []
    for _ in range(samples):
        readings.append(child.rss())
        time.sleep(0.1)
    return int(statistics.median(readings))


def quiet(child: Child, window: float, timeout: float = 60.0) -> float:
    """
    Wait until C{child} is done with what it was doing: its CPU use over
    C{window} seconds is under L{QUIET} of a core, or (a server whose
    keepalives alone keep it busier: 20,000 slaves) steady, under L{BUSY}
    and within a quarter of the window before.  Returns that last use, in
    CPU seconds a second.
    """
    uses: list[float] = []

    def calm() -> bool:
        before = child.cpu_seconds()
        time.sleep(window)
        uses.append((child.cpu_seconds() - before) / window)
        if uses[-1] < QUIET:
            return True
        return len(uses) > 1 and uses[-1] < BUSY and abs(uses[-1] - uses[-2]) <= 0.25 * uses[-2]

    wait_until(calm, f"{child.name} to go quiet", timeout, poll=0,
               report=lambda: f"CPU use by window: {uses}\n{child.report()}")
    return uses[-1]


def api_master(web_port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/api/master", timeout=10) as page:
        return json.load(page)


def connected(web_port: int) -> int:
    return api_master(web_port)["slaves"]["connected"]


def listen_drops() -> dict[str, int]:
    """The kernel's counts of connects lost at a full listen queue."""
    counts: dict[str, int] = {}
    with open("/proc/net/netstat") as netstat:
        lines = netstat.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2]):
        for name, value in zip(names.split()[1:], values.split()[1:]):
            if name in ("ListenOverflows", "ListenDrops", "TCPSynRetrans"):
                counts[name] = int(value)
    return counts


def open_file_limit(child: Child) -> int:
    return child.ps.rlimit(psutil.RLIMIT_NOFILE)[0]


# -- part 1: memory and keepalive CPU ------------------------------------------


def grow(report: Report, procs: Processes, kind: str, counts: tuple[int, ...],
         sizes: dict[str, Any]) -> list[dict[str, Any]]:
    """
    Start one server (C{kind}: C{"threaded"}, C{"bare_thread"},
    C{"picluster"}, secure as installed, or C{"plain"}, with --insecure),
    let a warm-up herd come and go, then add herds step by step to
    C{counts} slaves; at each step read RSS and the CPU of an idle
    window (none for the bare threads, which do nothing).
    """
    port = free_port()
    web = free_port()
    bare = kind == "bare_thread"
    window = 0.0 if bare else sizes["window"]
    settle = sizes["quiet"]
    if kind in ("picluster", "plain"):
        server = procs.master(kind, port, "--web", f"tcp:{web}:interface=127.0.0.1",
                              secure=kind == "picluster")

        def holding() -> int:
            return connected(web)
    else:
        server = procs.python(kind.replace("_", "-"), "bench.threaded", "--port", str(port),
                              *(["--bare"] if bare else []))
        server.wait_for_output("READY")

        def holding() -> int:
            return server.ps.num_threads() - 1
    # Children inherit our raised limit; check that twistd kept it.
    limit = report.figure(f"{kind}_open_file_limit", open_file_limit(server))
    if limit < max(counts) + 64:
        raise BenchError(f"{kind} runs with an open-file limit of {limit}:"
                         f" too low for {max(counts)} slaves")
    # picluster keeps a ring of each slave's vitals: fill it.  The threaded
    # master keeps the latest only, as the tutorial's did.
    master = kind in ("picluster", "plain")
    herd_args = ("--bare",) if bare else ("--vitals", str(DEFAULT_SAMPLES if master else 1))

    token_file = procs.token_file("picluster", "slave") if kind == "picluster" else None
    warm_up = Herds(procs, port, f"{kind}-warm-up", token_file)
    warm_up.add(WARM_UP, WARM_UP, *herd_args)
    warm_up.wait("settled", WARM_UP)
    warm_up.stop()
    wait_until(lambda: holding() == 0, f"{kind} to see the warm-up herd go", report=server.report)
    quiet(server, settle)
    empty = rss(server)
    report.figure(f"{kind}_empty_rss", empty)

    herds = Herds(procs, port, f"{kind}-herd", token_file)
    steps = []
    for count in counts:
        herds.add(count - herds.count, sizes["per_herd"], *herd_args)
        herds.wait("settled", count)
        wait_until(lambda: holding() >= count, f"{kind} to hold {count} slaves",
                   report=server.report)
        quiet(server, settle)
        memory = rss(server)
        server_cpu, herd_cpu = server.busy_seconds(), herds.busy_seconds()
        if window:
            time.sleep(window)
            server_cpu = (server.busy_seconds() - server_cpu) / window
            herd_cpu = (herds.busy_seconds() - herd_cpu) / window
        else:
            server_cpu = herd_cpu = None
        held = holding()
        if held != count:
            raise BenchError(f"{kind} held {held} slaves, not {count}, after the idle window")
        steps.append({
            "slaves": count, "rss": memory, "per_slave": (memory - empty) / count,
            "cpu": server_cpu, "herd_cpu": herd_cpu,
            "cpu_per_1000": None if server_cpu is None else server_cpu * 1000 / count,
        })
    herds.stop()
    server.stop()
    return steps


def ring_bytes(samples: int) -> float:
    """What one node's vitals ring holds in memory after C{samples} vitals, in bytes."""
    rings = 200
    vitals = Vitals(cpu_percentage=12.5, cpu_temperature=48.2, ram_free=512 * 2**20)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [VitalsHistory() for _ in range(rings)]
        for ring in kept:
            for at in range(samples):
                ring.record(float(at), vitals)
        return (tracemalloc.get_traced_memory()[0] - before) / rings
    finally:
        tracemalloc.stop()


# -- part 2: silent slaves -----------------------------------------------------


def silent(report: Report, procs: Processes, sizes: dict[str, Any],
           master_args: tuple[str, ...], port: int, web: int, db: str) -> tuple[Child, Herds]:
    """Stop the herds dead; time until the master counts no slave."""
    master = procs.master("master", port, *master_args, db=db)
    count = sizes["silent"]
    herds = Herds(procs, port, "silent-herd", procs.token_file("master", "slave"))
    herds.add(count, (count + 1) // 2)
    herds.wait("settled", count)
    wait_until(lambda: connected(web) == count, f"the master to hold {count} slaves",
               report=master.report)
    # Pings flowing both ways, and the master quiet, before they vanish.
    time.sleep(2 * sizes["keepalive"])
    quiet(master, sizes["quiet"])

    herds.signal(signal.SIGSTOP)
    stopped = time.monotonic()
    first_gone = None
    while True:
        held = connected(web)
        now = time.monotonic()
        if first_gone is None and held < count:
            first_gone = now - stopped
        if held == 0:
            break
        if now - stopped > 10 * sizes["dead_after"] + 30:
            raise BenchError(f"the master still held {held} silent slaves\n{master.report()}")
        time.sleep(0.02)
    detection = now - stopped
    report.figure("silent_slaves", count)
    report.figure("silent_detection_seconds", detection)
    report.figure("silent_first_dropped_seconds", first_gone)

    # Back to life: each finds its connection reset, and rejoins.
    rejoins = herds.status().get("rejoins", 0)
    herds.signal(signal.SIGCONT)
    woke = time.monotonic()
    herds.wait("rejoins", rejoins + count)
    wait_until(lambda: connected(web) == count, f"the master to hold {count} slaves again",
               report=master.report)
    report.figure("silent_back_after_resume_seconds", time.monotonic() - woke)
    return master, herds


# -- part 3: a master killed and restarted -------------------------------------


def holding(procs: Processes, sizes: dict[str, Any], master_args: tuple[str, ...], port: int,
            web: int, db: str) -> tuple[Child, Herds]:
    """A master (default keepalive) with the rejoin's slaves joined, quiet."""
    master = procs.master(REJOIN_MASTER, port, *master_args, db=db)
    count = sizes["rejoin"]
    herds = Herds(procs, port, "rejoin-herd", procs.token_file(REJOIN_MASTER, "slave"))
    herds.add(count, sizes["per_herd"])
    herds.wait("settled", count)
    wait_until(lambda: connected(web) == count, f"the master to hold {count} slaves",
               report=master.report)
    return master, herds


def restart(procs: Processes, sizes: dict[str, Any], master: Child, herds: Herds, port: int,
            web: int, master_args: tuple[str, ...], db: str) -> tuple[Child, dict[str, Any]]:
    """SIGKILL the master and start it again; time until every slave is back."""
    count = herds.count
    quiet(master, sizes["quiet"])
    status = herds.status()
    herd_cpu = herds.cpu_seconds()
    drops = listen_drops()
    master.signal(signal.SIGKILL)
    killed = time.time()
    master.kill()
    master = procs.master(f"{REJOIN_MASTER}-restarted", port, *master_args, db=db,
                          cluster=REJOIN_MASTER)
    listening = time.time()
    herds.wait("rejoins", status.get("rejoins", 0) + count, timeout=90.0)
    back = time.time()
    drops = {key: value - drops[key] for key, value in listen_drops().items()}
    times = herds.times()
    rejoins = [moment - killed for moment in times["rejoins"] if moment > killed]
    after = herds.status()
    shown = api_master(web)
    figures = {
        "slaves": count,
        "seconds": back - killed if not rejoins else max(rejoins),
        "restart_seconds": listening - killed,
        "p10": _percentile(rejoins, 0.10), "p50": _percentile(rejoins, 0.50),
        "p90": _percentile(rejoins, 0.90),
        "spread_seconds": statistics.pstdev(rejoins) if len(rejoins) > 1 else 0.0,
        "per_second": _histogram(rejoins),
        "rejoined_same_uuid": len(rejoins),
        "new_uuids": after.get("new_uuids", 0) - status.get("new_uuids", 0),
        "master_reconnections": shown["wire"]["reconnections"],
        "master_connected": shown["slaves"]["connected"],
        "refused_while_down": sum(1 for moment, kind in times["failures"]
                                  if killed < moment <= listening and kind == "refused"),
        "failed_while_listening": sum(1 for moment, _ in times["failures"] if moment > listening),
        "lost_before_welcome": after.get("lost_before_welcome", 0)
        - status.get("lost_before_welcome", 0),
        "attempts_per_slave": (after.get("attempts", 0) - status.get("attempts", 0)) / count,
        # The herds share the machine's cores with the master: what both spent.
        "herd_cpu_seconds": herds.cpu_seconds() - herd_cpu,
        "master_cpu_seconds": master.cpu_seconds(),
        "slow_connects": after.get("slow_connects", 0) - status.get("slow_connects", 0),
        "listen_overflows": drops.get("ListenOverflows", 0),
        "listen_drops": drops.get("ListenDrops", 0),
        "backlog": DEFAULT_BACKLOG,
    }
    return master, figures


def storm(procs: Processes, sizes: dict[str, Any], backlog: int | None) -> dict[str, Any]:
    """
    C{sizes["storm"]} slaves connecting all at once to a fresh master with
    C{backlog} in its port description (C{None}: the master's default):
    how long until all have joined, and how many connects the listen queue
    dropped (each then waits for its SYN to be resent, a second or more).
    """
    count = sizes["storm"]
    port = free_port()
    description = f"tcp:{port}:interface=127.0.0.1"
    if backlog is not None:
        description += f":backlog={backlog}"
    name = f"master-storm-{backlog or DEFAULT_BACKLOG}"
    master = procs.twistd(name, "picluster-master", "--port", description, "--db", ":memory:",
                          "--web", "none", "--state-dir", procs.cluster(name))
    wait_until(lambda: port_open(port) or not master.running, f"{master.name} to listen",
               report=master.report)
    quiet(master, sizes["quiet"])
    herds = Herds(procs, port, f"storm-{backlog or DEFAULT_BACKLOG}", procs.token_file(name, "slave"))
    drops = listen_drops()
    # Every connect at once: far more a second than the herd can issue.
    herds.add(count, sizes["per_herd"], "--rate", "1000000")
    try:
        herds.wait("settled", count, timeout=STORM_WAIT)
    except BenchError:
        pass
    drops = {key: value - drops[key] for key, value in listen_drops().items()}
    times = herds.times()
    status = herds.status()
    herds.stop()
    master.stop()
    joined = status.get("settled", 0)
    return {
        "slaves": count,
        "backlog": backlog or DEFAULT_BACKLOG,
        "joined": joined,
        # None: not all joined within STORM_WAIT.
        "seconds": times["last_settled_at"] - times["started_at"] if joined == count else None,
        "slow_connects": status.get("slow_connects", 0),
        "failed": status.get("refused", 0) + status.get("timed_out", 0)
        + status.get("other_failures", 0),
        "lost_before_welcome": status.get("lost_before_welcome", 0),
        "listen_overflows": drops.get("ListenOverflows", 0),
    }


def connected_or_none(web: int) -> int | None:
    try:
        return connected(web)
    except OSError:
        return None


def _percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def _histogram(values: list[float]) -> list[int]:
    """How many rejoined in each second after the kill."""
    if not values:
        return []
    counts = [0] * (int(max(values)) + 1)
    for value in values:
        counts[int(value)] += 1
    return counts


# -- the benchmark -------------------------------------------------------------


def run(report: Report, options: Any) -> None:
    sizes = dict(SIZES[bool(options.quick)])
    most = getattr(options, "max_slaves", None)
    if most is not None:
        capped = tuple(count for count in sizes["counts"] if count <= most) or (most,)
        if capped != sizes["counts"] or sizes["rejoin"] > most:
            report.note(f"--max-slaves {most:,}: steps {', '.join(f'{c:,}' for c in capped)}"
                        f" (not {', '.join(f'{c:,}' for c in sizes['counts'])}), and"
                        f" {min(sizes['rejoin'], most):,} slaves through the master's SIGKILL")
        sizes.update(counts=capped, rejoin=min(sizes["rejoin"], most),
                     storm=sizes["storm"] and min(sizes["storm"], most),
                     threaded=tuple(c for c in sizes["threaded"] if c <= most) or capped[:1])
    limit = raise_file_limit(2 * max(sizes["counts"]) + 1024)
    report.figure("open_file_limit", limit)
    counts = fitting(sizes["counts"], limit)
    if not counts or counts[0] < 1:
        raise BenchError(f"the open-file limit is {limit:,}: too low for a master to hold a"
                         f" step of {STEP_ROUNDING} slaves")
    report.figure("counts", counts)
    if counts[-1] < max(sizes["counts"]):
        report.note(f"the open-file limit is {limit:,} (its hard limit: the benchmark raises it"
                    f" no further), so a master holds {counts[-1]:,} slaves at most here, not"
                    f" {max(sizes['counts']):,}")
        # The rejoin and the storm are held to it too.
        sizes.update(rejoin=min(sizes["rejoin"], counts[-1]),
                     storm=sizes["storm"] and min(sizes["storm"], counts[-1]))
    # The threaded baselines' steps that picluster's share (the last is compared).
    threaded_counts = tuple(count for count in sizes["threaded"] if count in counts) or counts[:1]

    with Processes("scale", options.keep) as procs:
        threaded = grow(report, procs, "threaded", threaded_counts, sizes)
        [bare] = grow(report, procs, "bare_thread", threaded_counts[-1:], sizes)
        picluster = grow(report, procs, "picluster", counts, sizes)
        plain = grow(report, procs, "plain", counts, sizes)

        port, web = free_port(), free_port()
        master_args = ("--web", f"tcp:{web}:interface=127.0.0.1",
                       "--keepalive", str(sizes["keepalive"]),
                       "--dead-after", str(sizes["dead_after"]))
        master, herds = silent(report, procs, sizes, master_args, port, web,
                               procs.path("silent.db"))
        herds.stop()
        master.stop()

        port, web = free_port(), free_port()
        db = procs.path("restarted.db")
        master_args = ("--web", f"tcp:{web}:interface=127.0.0.1")
        master, herds = holding(procs, sizes, master_args, port, web, db)
        master, rejoin = restart(procs, sizes, master, herds, port, web, master_args, db)
        herds.stop()
        master.stop()
        storms = []
        if sizes["storm"]:
            storms = [storm(procs, sizes, backlog) for backlog in (None, *STORM_BACKLOGS)
                      if backlog != DEFAULT_BACKLOG]

    _report_growth(report, threaded, bare, picluster, plain)
    _report_failures(report, sizes)
    _report_rejoin(report, rejoin, storms)


def fitting(counts: tuple[int, ...], limit: int) -> tuple[int, ...]:
    """
    The steps of C{counts} that one master holds under the open-file limit
    C{limit}: a step past it is cut to the most that fits, rounded down.
    """
    room = (limit - MASTER_DESCRIPTORS - 64) // STEP_ROUNDING * STEP_ROUNDING
    return tuple(sorted({min(count, room) for count in counts}))


def _report_growth(report: Report, threaded: list[dict[str, Any]], bare: dict[str, Any],
                   picluster: list[dict[str, Any]], plain: list[dict[str, Any]]) -> None:
    table = report.table(
        "Memory and idle CPU by slave count (picluster's vitals ring full: "
        f"{DEFAULT_SAMPLES} vitals each; keepalive 5 s)",
        ["server", "slaves", "RSS MiB", "KiB per slave", "CPU s/s", "CPU s/s per 1,000",
         "herd CPU s/s"],
    )
    for kind, steps in (("threaded", threaded), ("bare_thread", [bare]), ("picluster", picluster),
                        ("plain", plain)):
        for step in steps:
            table.rows.append([kind, step["slaves"], step["rss"] / 2**20, step["per_slave"] / 1024,
                               step["cpu"], step["cpu_per_1000"], step["herd_cpu"]])
        # Lists by slave count, for a plot of RSS against slaves.
        for key in ("slaves", "rss", "per_slave", "cpu", "cpu_per_1000", "herd_cpu"):
            name = "rss_per_slave" if key == "per_slave" else key
            report.figure(f"{kind}_{name}", [step[key] for step in steps])
    # The curve bench.summary plots: memory against slaves, both servers.
    report.figure("rss_curve", {
        "slaves": [step["slaves"] for step in picluster],
        "picluster_bytes_per_slave": [step["per_slave"] for step in picluster],
        "threaded_bytes_per_connection": [step["per_slave"] for step in threaded],
        "picluster_total_bytes": [step["per_slave"] * step["slaves"] for step in picluster],
        "threaded_total_bytes": [step["per_slave"] * step["slaves"] for step in threaded],
    })
    # Like for like, all on plain TCP: the master with --insecure against the
    # threaded baseline (which has no TLS either), at the counts both held.
    plain_at = {step["slaves"]: step for step in plain}
    pairs = [(plain_at[t["slaves"]], t) for t in threaded if t["slaves"] in plain_at]
    ratios = [p["per_slave"] / t["per_slave"] for p, t in pairs]
    report.figure("rss_ratio_by_count", ratios)
    compared, baseline = pairs[-1]
    secure, most = picluster[-1], plain[-1]
    tls_bytes = secure["per_slave"] - most["per_slave"]
    report.figure("tls_bytes_per_slave", tls_bytes)
    report.note(
        f"the secure master (as installed) holds {secure['per_slave'] / 1024:.1f} KiB a"
        f" slave at {secure['slaves']:,} slaves, {tls_bytes / 1024:.1f} KiB more than with"
        " --insecure: OpenSSL's state of each TLS connection (its buffers are released while"
        " the connection is idle); the goal against the threaded baseline compares the plain"
        " master with it, both without TLS"
    )
    versus_bare = compared["per_slave"] / bare["per_slave"]
    report.figure("rss_per_slave_vs_bare_thread", versus_bare)
    ring_one, ring_full = ring_bytes(1), ring_bytes(DEFAULT_SAMPLES)
    report.figure("vitals_ring_bytes_one_sample", ring_one)
    report.figure("vitals_ring_bytes_full", ring_full)
    report.ratio(
        "rss_per_slave_vs_threaded", ratios[-1], RSS_GOAL, higher=False,
        what=f"picluster's RSS per idle slave (plain, vitals ring full) / the threaded"
        f" baseline's per connection, at {compared['slaves']:,} slaves",
    )
    for key, step, mode in (("kib_per_slave_vs_8", secure, "secure, as installed"),
                            ("kib_per_slave_plain_vs_8", most, "plain, --insecure")):
        report.ratio(
            key, step["per_slave"] / 1024 / KIB_PER_SLAVE_GOAL, 1.0, higher=False,
            what=f"picluster's RSS per idle slave ({mode}, vitals ring full) at"
            f" {step['slaves']:,} slaves, in KiB / {KIB_PER_SLAVE_GOAL:g}",
        )
    report.note(
        f"a bare thread blocked in recv (the floor of the threaded design, holding nothing)"
        f" takes {bare['per_slave'] / 1024:.1f} KiB a connection; picluster's"
        f" {compared['per_slave'] / 1024:.1f} KiB a slave (plain) is {versus_bare:.2f}x that"
    )
    report.note(
        f"of picluster's per-slave memory, the vitals ring takes {ring_full:,.0f} bytes when"
        f" full ({DEFAULT_SAMPLES} samples; {ring_one:,.0f} with one)"
    )
    keepalive_cpu = report.figure(
        "keepalive_cpu_vs_threaded",
        compared["cpu_per_1000"] / baseline["cpu_per_1000"] if baseline["cpu_per_1000"] else None,
    )
    report.note(
        f"at {secure['slaves']:,} idle slaves picluster's master spends"
        f" {secure['cpu_per_1000']:.4f} CPU s/s per 1,000 slaves on keepalives secure,"
        f" {most['cpu_per_1000']:.4f} plain (at {baseline['slaves']:,}: plain"
        f" {compared['cpu_per_1000']:.4f}, the threaded baseline {baseline['cpu_per_1000']:.4f}"
        + (f", {keepalive_cpu:.2f}x" if keepalive_cpu is not None else "") + ")"
    )
    report.ratio(
        "keepalive_cpu_vs_goal", secure["cpu_per_1000"] / KEEPALIVE_CPU_GOAL, 1.0, higher=False,
        what=f"the secure master's CPU s/s per 1,000 idle slaves at {secure['slaves']:,}"
        f" / {KEEPALIVE_CPU_GOAL:g}",
    )


def _report_failures(report: Report, sizes: dict[str, Any]) -> None:
    detection = report.figures["silent_detection_seconds"]
    dead_after = sizes["dead_after"]
    table = report.table(
        f"Silent slaves (keepalive {sizes['keepalive']:g} s, dead-after {dead_after:g} s)",
        ["slaves", "first dropped s", "all dropped s", "goal s", "back after SIGCONT s"],
    )
    table.rows.append([report.figures["silent_slaves"], report.figures["silent_first_dropped_seconds"],
                       detection, dead_after + DETECTION_SLACK,
                       report.figures["silent_back_after_resume_seconds"]])
    report.figure("dead_after", dead_after)
    report.ratio(
        "silent_detection_vs_dead_after", detection / (dead_after + DETECTION_SLACK), 1.0,
        higher=False, what="seconds from SIGSTOP until the master holds no slave / (dead_after + 1 s)",
    )


def _report_rejoin(report: Report, rejoin: dict[str, Any], storms: list[dict[str, Any]]) -> None:
    table = report.table(
        f"Master SIGKILLed and restarted under its {rejoin['slaves']:,} slaves"
        " (seconds from the kill)",
        ["listening", "p10", "p50", "p90", "all back", "spread sd", "refused (down)",
         "failed (up)", "lost in handshake", "SYN resent", "listen overflows"],
    )
    table.rows.append([
        rejoin["restart_seconds"], rejoin["p10"], rejoin["p50"], rejoin["p90"], rejoin["seconds"],
        rejoin["spread_seconds"], rejoin["refused_while_down"], rejoin["failed_while_listening"],
        rejoin["lost_before_welcome"], rejoin["slow_connects"], rejoin["listen_overflows"],
    ])
    for key, value in rejoin.items():
        report.figure(f"rejoin_{key}", value)
    report.note(
        f"during the rejoin each slave made {rejoin['attempts_per_slave']:.1f} attempts; the"
        f" restarted master spent {rejoin['master_cpu_seconds']:.1f} CPU s (its start"
        f" included), the herds {rejoin['herd_cpu_seconds']:.1f} (their TLS and proofs, as"
        " each Pi would on its own core), on the same cores"
    )
    if rejoin["rejoined_same_uuid"] != rejoin["slaves"] or rejoin["new_uuids"]:
        report.note(f"only {rejoin['rejoined_same_uuid']} of {rejoin['slaves']} slaves"
                    f" rejoined under their uuid ({rejoin['new_uuids']} got a new one)")
    if storms:
        table = report.table(
            f"A storm: {storms[0]['slaves']:,} slaves connecting at once to a fresh master",
            ["backlog", f"joined in {STORM_WAIT:g} s", "all joined s", "SYN resent",
             "listen overflows", "failed", "lost in handshake"],
        )
        for figures in storms:
            table.rows.append([figures["backlog"], figures["joined"], figures["seconds"],
                               figures["slow_connects"],
                               figures["listen_overflows"], figures["failed"],
                               figures["lost_before_welcome"]])
            for key, value in figures.items():
                report.figure(f"storm_backlog_{figures['backlog']}_{key}", value)
    report.ratio(
        "rejoin_seconds_vs_15", rejoin["seconds"] / REJOIN_GOAL_SECONDS, 1.0, higher=False,
        what=f"seconds from SIGKILL until all {rejoin['slaves']:,} slaves rejoined, TLS"
        f" included / {REJOIN_GOAL_SECONDS:g} s",
    )
