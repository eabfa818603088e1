"""
Network faults between real hosts: a master and two slaves, each a real
C{twistd} in its own network namespace, on one LAN (a bridge in the master's
namespace, a veth pair to each slave's, and one to the test process), secure
as installed, with short keepalives.

nftables inside a namespace makes the faults: every packet of a slave, or
of the master, dropped both ways for longer than C{--dead-after} (a cable
pulled: a real half-open connection on both sides), idle or while a
C{picluster map} runs, or a share of the master's TCP packets dropped at
random during a map.  Only a real network stack
shows these: the kernel retransmits, times out and keeps the sockets open
as it would on a LAN of Pis.

It needs root, C{ip} (iproute2) and C{nft} (nftables), and skips without
them.  Each test makes its own namespaces, named after this process, and
removes them at cleanup whatever happens.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial import unittest

from picluster.address import MasterAddress
from picluster.client import Client
from tests.processes import Child, Cluster, child_env, sleep, twistd_command
from tests.system.test_tasks_e2e import task_states

#: The port the master listens on, in its own namespace.
PORT = 12345

#: Keepalive and dead-after of every node, in seconds: short, so faults show fast.
KEEPALIVE = 1
DEAD_AFTER = 3

#: How long the cut lasts: well past DEAD_AFTER, so that both ends give up.
CUT = 2 * DEAD_AFTER + 1

#: Tasks in the map run under loss, and the share of TCP packets lost.
TASKS = 300
LOSS_PERCENT = 5

#: Tasks in the map during which a slave is cut off.
CUT_TASKS = 60

#: One way delay of the slow link, in milliseconds (where tc netem works).
DELAY_MS = 150

_numbers = itertools.count()


def _missing() -> str | None:
    """Why these tests cannot run here, or C{None}."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "network namespaces need root"
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            return f"needs {tool!r} (apt-get install {package})"
    return None


def run(*argv: str, stdin: str | None = None) -> str:
    """Run a command to its end; its stdout, or a failure saying what it printed."""
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 no interface of this machine is on (tests may run side by side)."""
    used = run("ip", "-4", "-o", "addr", "show") + run("ip", "-4", "route", "show")
    for attempt in range(200):
        second, third = 200 + (os.getpid() + attempt) % 50, (os.getpid() // 50 + attempt) % 250
        if f"10.{second}.{third}." not in used:
            return ipaddress.IPv4Network(f"10.{second}.{third}.0/24")
    raise RuntimeError("no free 10.x.y.0/24 for the test LAN")


class Lan:
    """
    Namespaces for a master and its slaves on one bridge, and a veth from
    the test process's namespace to it; all removed at the test's cleanup.

    The master is C{.1}, slave I{n} is C{.1n}, the test process C{.100}.
    """

    def __init__(self, case: unittest.TestCase, slaves: int):
        number = next(_numbers)
        tag = f"picnf-{os.getpid()}-{number}"
        self.master_ns = f"{tag}-master"
        self.slave_ns = [f"{tag}-slave{n}" for n in range(1, slaves + 1)]
        # The one name outside a namespace: 15 characters at most.
        self.outside = f"pnf{os.getpid() % 10**7}{number}"[:15]
        case.addCleanup(self.remove)
        self.subnet = _free_subnet()
        hosts = list(self.subnet.hosts())
        self.master_ip = str(hosts[0])
        self.slave_ips = [str(hosts[10 + n]) for n in range(slaves)]
        own_ip = str(hosts[99])
        prefix = self.subnet.prefixlen
        try:
            run("ip", "netns", "add", self.master_ns)
        except RuntimeError as e:
            raise unittest.SkipTest(f"cannot make network namespaces here: {e}") from None
        ip_m = ("ip", "-n", self.master_ns)
        run(*ip_m, "link", "add", "br0", "type", "bridge")
        for n, (namespace, address) in enumerate(zip(self.slave_ns, self.slave_ips), 1):
            run("ip", "netns", "add", namespace)
            run("ip", "link", "add", "eth0", "netns", namespace, "type", "veth",
                "peer", "name", f"slave{n}", "netns", self.master_ns)
            run(*ip_m, "link", "set", f"slave{n}", "master", "br0", "up")
            run("ip", "-n", namespace, "addr", "add", f"{address}/{prefix}", "dev", "eth0")
            run("ip", "-n", namespace, "link", "set", "eth0", "up")
            run("ip", "-n", namespace, "link", "set", "lo", "up")
        run("ip", "link", "add", self.outside, "type", "veth", "peer", "name", "host",
            "netns", self.master_ns)
        run(*ip_m, "link", "set", "host", "master", "br0", "up")
        run(*ip_m, "addr", "add", f"{self.master_ip}/{prefix}", "dev", "br0")
        run(*ip_m, "link", "set", "br0", "up")
        run(*ip_m, "link", "set", "lo", "up")
        run("ip", "addr", "add", f"{own_ip}/{prefix}", "dev", self.outside)
        run("ip", "link", "set", self.outside, "up")
        try:
            self.faults(self.master_ns, "counter")
        except RuntimeError as e:
            raise unittest.SkipTest(f"nftables does not work in a namespace here: {e}") from None
        self.heal(self.master_ns)

    def remove(self) -> None:
        """Remove every namespace (their interfaces go with them) and the veth outside."""
        for namespace in [self.master_ns, *self.slave_ns]:
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        subprocess.run(["ip", "link", "del", self.outside], capture_output=True)

    def inside(self, namespace: str) -> list[str]:
        """The argv prefix that runs a command in C{namespace}."""
        return ["ip", "netns", "exec", namespace]

    def faults(self, namespace: str, rule: str) -> None:
        """Apply C{rule} to every packet in and out of C{namespace} (one table of ours)."""
        self.heal(namespace)
        run(*self.inside(namespace), "nft", "-f", "-", stdin=f"""
table inet picluster_fault {{
    chain input {{ type filter hook input priority 0; policy accept; {rule}; }}
    chain output {{ type filter hook output priority 0; policy accept; {rule}; }}
}}
""")

    def dropped(self, namespace: str) -> int:
        """Packets the faults of C{namespace} have dropped so far (each rule counts its own)."""
        listing = run(*self.inside(namespace), "nft", "list", "table", "inet", "picluster_fault")
        return sum(int(n) for n in re.findall(r"counter packets (\d+)", listing))

    def heal(self, namespace: str) -> None:
        """Remove the faults of C{namespace}, if any."""
        subprocess.run([*self.inside(namespace), "nft", "delete", "table", "inet", "picluster_fault"],
                       capture_output=True)


class NetCluster(Cluster):
    """A L{Cluster} whose master and slaves each run in a namespace of a L{Lan}."""

    def __init__(self, case: unittest.TestCase, lan: Lan):
        super().__init__(case)
        self.lan = lan
        self.port = PORT
        self.db = os.path.join(self.cwd, "tasks.db")

    def in_namespace(self, namespace: str, name: str, *arguments: str) -> Child:
        argv = [*self.lan.inside(namespace), *twistd_command(), "-n", "--pidfile=", "--logfile=-", *arguments]
        child = Child(self.case, name, argv, cwd=self.cwd, env=child_env())
        self.children.append(child)
        return child

    def master(self, name: str = "master", *arguments: str) -> Child:
        return self.in_namespace(
            self.lan.master_ns, name, "picluster-master", "--port", f"tcp:{PORT}", "--web", "none",
            "--state-dir", self.state_dir, "--db", self.db, "--keepalive", str(KEEPALIVE),
            "--dead-after", str(DEAD_AFTER), *arguments)

    def slave(self, name: str = "slave1", *arguments: str) -> Child:
        number = int(name.removeprefix("slave"))
        return self.in_namespace(
            self.lan.slave_ns[number - 1], name, "picluster-slave",
            "--master", f"{self.lan.master_ip}:{PORT}", "--token-file", self.slave_token_file,
            "--state-dir", os.path.join(self.cwd, f"{name}-state"), "--keepalive", str(KEEPALIVE),
            "--dead-after", str(DEAD_AFTER), "--initial-delay", "0.2", "--max-delay", "1",
            "--vitals", "1", "--slots", "2", *arguments)

    def client(self, **settings: Any) -> Client:
        address = MasterAddress(self.lan.master_ip, PORT, timeout=5.0)
        return Client(address, token=self.trust.token("client"), **settings)

    def by_host(self, slaves: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Slaves by the namespace they run in, told apart by address."""
        names = {ip: f"slave{n}" for n, ip in enumerate(self.lan.slave_ips, 1)}
        return {names[s["address"].rsplit(":", 1)[0]]: s for s in slaves}

    def assertNoTraceback(self) -> None:
        for child in self.children:
            self.case.assertNotIn("Traceback", child.output(), self.report())


class NetworkFaultTests(unittest.TestCase):
    """A LAN of namespaces between a master and two slaves, and what goes wrong on it."""

    def setUp(self) -> Any:
        missing = _missing()
        if missing is not None:
            raise unittest.SkipTest(missing)
        self.lan = Lan(self, slaves=2)
        self.cluster = NetCluster(self, self.lan)
        self.master = self.cluster.master()
        self.slaves = [self.cluster.slave(f"slave{n}") for n in (1, 2)]
        return self.cluster.wait_for_slaves("both slaves to join over the LAN",
                                            lambda slaves: len(slaves) == 2)

    @defer.inlineCallbacks
    def test_cableCut(self) -> Any:
        """A slave cut off past dead-after is dropped by the master, and rejoins as itself once the link is back."""
        cluster, lan = self.cluster, self.lan
        before = cluster.by_host((yield cluster.slave_details()))
        uuid = before["slave1"]["uuid"]
        cut_at = reactor.seconds()
        lan.faults(lan.slave_ns[0], 'iifname "eth0" counter drop; oifname "eth0" counter drop')
        # Half-open: the master still lists the silent slave for a while.
        still = cluster.by_host((yield cluster.slave_details()))
        self.assertEqual(still["slave1"]["uuid"], uuid)
        yield cluster.wait_for_slaves("the master to drop the cut slave",
                                      lambda slaves: list(cluster.by_host(slaves)) == ["slave2"])
        self.assertGreaterEqual(reactor.seconds() - cut_at, DEAD_AFTER - 1)
        yield cluster.wait_for_log(self.master, f"({uuid}): nothing received for")
        yield cluster.wait_for_log(self.slaves[0], "no sign of life")
        remaining = CUT - (reactor.seconds() - cut_at)
        if remaining > 0:
            yield sleep(remaining)
        self.assertGreater(lan.dropped(lan.slave_ns[0]), 0)
        lan.heal(lan.slave_ns[0])
        back = yield cluster.wait_for_slaves(
            "the slave to rejoin once the link is back", lambda slaves: len(slaves) == 2)
        back = cluster.by_host(back)
        self.assertEqual(back["slave1"]["uuid"], uuid, cluster.report())
        self.assertGreater(back["slave1"]["connected_at"], before["slave1"]["connected_at"])
        # The other slave never noticed.
        self.assertEqual((back["slave2"]["uuid"], back["slave2"]["connected_at"]),
                         (before["slave2"]["uuid"], before["slave2"]["connected_at"]), cluster.report())
        yield cluster.wait_for_log(self.slaves[0], f"Rejoined master {lan.master_ip}:{PORT} as {uuid}")
        self.assertTrue(all(child.running for child in cluster.children), cluster.report())
        cluster.assertNoTraceback()

    @defer.inlineCallbacks
    def test_masterCut(self) -> Any:
        """The master's own cable pulled past dead-after: both slaves give up on it, and rejoin as themselves."""
        cluster, lan = self.cluster, self.lan
        before = cluster.by_host((yield cluster.slave_details()))
        lan.faults(lan.master_ns, 'iifname "br0" counter drop; oifname "br0" counter drop')
        for slave in self.slaves:
            yield cluster.wait_for_log(slave, "no sign of life")
        yield sleep(CUT - DEAD_AFTER)
        lan.heal(lan.master_ns)
        for n, slave in enumerate(self.slaves, 1):
            uuid = before[f"slave{n}"]["uuid"]
            yield cluster.wait_for_log(slave, f"Rejoined master {lan.master_ip}:{PORT} as {uuid}")
        back = yield cluster.wait_for_slaves("both slaves back", lambda slaves: len(slaves) == 2)
        self.assertEqual({name: s["uuid"] for name, s in cluster.by_host(back).items()},
                         {name: s["uuid"] for name, s in before.items()}, cluster.report())
        self.assertIn("nothing received for", self.master.output(), cluster.report())
        cluster.assertNoTraceback()

    def start_map(self, task: str, arguments: list[dict[str, Any]]) -> Child:
        """C{picluster map} of C{task} over C{arguments}, run from the test's own namespace."""
        cluster = self.cluster
        args_file = os.path.join(cluster.cwd, "args.jsonl")
        with open(args_file, "w") as lines:
            lines.writelines(json.dumps(each) + "\n" for each in arguments)
        mapping = Child(
            self, "map",
            [sys.executable, "-m", "picluster.cli", "map", task, "--args-file", args_file, "--json",
             "--master", f"{self.lan.master_ip}:{PORT}", "--state-dir", cluster.state_dir],
            cwd=cluster.cwd, env=child_env(),
        )
        cluster.children.append(mapping)
        return mapping

    def assertEachDoneOnce(self, mapping: Child, status: int, expected: list[Any]) -> list[dict[str, Any]]:
        """The map succeeded: every task done, once, with its own result; its records, in order."""
        cluster = self.cluster
        self.assertEqual(status, 0, cluster.report())
        records = [json.loads(line) for line in mapping.stdout().splitlines()]
        self.assertEqual([r["state"] for r in records], ["done"] * len(expected), cluster.report())
        self.assertEqual([r["result"] for r in records], expected)
        self.assertEqual(len({r["id"] for r in records}), len(expected))
        self.assertTrue(all(r["attempts"] >= 1 for r in records))
        if any(r["attempts"] > 1 for r in records):
            # A task is handed out again only when the master lost its
            # slave's connection, or moved a run a slave held ready to a
            # slave left idle (docs/tasks.rst).
            output = self.master.output()
            self.assertTrue("Lost connection to slave" in output or "moved to idle slave" in output,
                            cluster.report())
        # The master stored each task once, and ended it once.
        self.assertEqual(task_states(cluster.db), {"done": len(expected)}, cluster.report())
        return records

    @defer.inlineCallbacks
    def test_mapUnderLoss(self) -> Any:
        """Under random packet loss a picluster map ends with every task done once, with its own result."""
        cluster, lan = self.cluster, self.lan
        lan.faults(lan.master_ns, f"meta l4proto tcp numgen random mod 100 < {LOSS_PERCENT} counter drop")
        arguments = [{"n": n, "pad": "x" * (n * 37 % 3000)} for n in range(TASKS)]
        mapping = self.start_map("echo", arguments)
        status = yield mapping.wait_for_exit(timeout=90, report=cluster.report)
        dropped = lan.dropped(lan.master_ns)
        lan.heal(lan.master_ns)
        self.assertGreater(dropped, 0, "no packet was lost: the fault did not bite")
        self.assertEachDoneOnce(mapping, status, arguments)
        cluster.assertNoTraceback()
        yield cluster.wait_for_slaves("both slaves listed once the loss is gone",
                                      lambda slaves: len(slaves) == 2)

    @defer.inlineCallbacks
    def test_cutDuringMap(self) -> Any:
        """A slave cut off in the middle of a map: its runs are redone elsewhere, and each task ends done once."""
        cluster, lan = self.cluster, self.lan
        uuid = cluster.by_host((yield cluster.slave_details()))["slave1"]["uuid"]
        # Each run's length is its own, so that each result says which task it is.
        seconds = [0.4 + n / 1000 for n in range(CUT_TASKS)]
        mapping = self.start_map("sleep", [{"seconds": s} for s in seconds])
        yield cluster.wait_until(lambda: task_states(cluster.db).get("done", 0) >= 8, "the map under way")
        lan.faults(lan.slave_ns[0], 'iifname "eth0" counter drop; oifname "eth0" counter drop')
        yield sleep(CUT)
        lan.heal(lan.slave_ns[0])
        status = yield mapping.wait_for_exit(timeout=90, report=cluster.report)
        records = self.assertEachDoneOnce(mapping, status, [{"slept": s} for s in seconds])
        # The runs the cut slave held were given to the other.
        self.assertGreater(max(r["attempts"] for r in records), 1, cluster.report())
        back = yield cluster.wait_for_slaves("the cut slave back", lambda slaves: len(slaves) == 2)
        self.assertEqual(cluster.by_host(back)["slave1"]["uuid"], uuid)
        cluster.assertNoTraceback()

    @defer.inlineCallbacks
    def test_slowLink(self) -> Any:
        """A slave behind a link with 150 ms of delay shows it in its round trip; the other does not."""
        cluster, lan = self.cluster, self.lan
        try:
            run(*lan.inside(lan.slave_ns[0]), "tc", "qdisc", "add", "dev", "eth0", "root",
                "netem", "delay", f"{DELAY_MS}ms")
        except (RuntimeError, FileNotFoundError) as e:
            raise unittest.SkipTest(f"tc netem is refused here (a kernel without sch_netem?): {e}") from None

        def slow_and_fast(slaves: list[dict[str, Any]]) -> bool:
            rtt = {name: s["rtt_ms"] for name, s in cluster.by_host(slaves).items()}
            return (rtt.get("slave1") or 0) >= DELAY_MS and (rtt.get("slave2") or DELAY_MS) < DELAY_MS / 2

        yield cluster.wait_for_slaves("the delay in slave1's round trip, and none in slave2's", slow_and_fast)
        cluster.assertNoTraceback()
