"""
Hostile peers against a real master, over real TLS on loopback.

Each test runs a real C{twistd picluster-master} (secure, as installed) with
a real slave joined, then attacks it from the test process: from another
loopback address (127.0.0.2 and up), as another machine on the LAN would.
Each attack has a stated bound, and each test checks afterwards that:

  - the master's memory (its RSS, read from C{/proc}, sampled throughout
    the attack) grew by less than that bound;
  - the real slave kept its connection throughout (the same uuid, connected
    since before the attack) and still gets its tasks;
  - a legitimate C{picluster status} answers.

The figures each attack cost before and after the bounds are tabled in
docs/security.rst ("Attacks, before and after"); set
C{PICLUSTER_ATTACK_REPORT=1} to have each test print what it measured.
"""

from __future__ import annotations

import io
import os
import resource
import struct
import sys
from typing import Any

from twisted.internet import defer, protocol, reactor, task
from twisted.internet.interfaces import IHandshakeListener
from twisted.trial import unittest
from zope.interface import implementer

from picluster.address import hello_for
from picluster.cli import main as cli
from picluster.trust.channel import PinnedMasterTLS, TLSFactory
from picluster.trust.token import JoinToken
from picluster.wire import envelope as wire
from tests.helpers import frame
from tests.processes import Cluster, sleep, wait_until

MiB = 1024 * 1024

#: Short deadlines, so that the attacks end within seconds.
HANDSHAKE_TIMEOUT = 3.0
FRAME_DEADLINE = 3.0


def rss(pid: int) -> int:
    """A process's resident memory in bytes, from /proc."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


@implementer(IHandshakeListener)
class Attacker(protocol.Protocol):
    """
    A peer over real TLS pinned to the cluster's CA: with a token, it says a
    proven hello (and is then an authenticated node gone bad); without, it
    is a stranger.  Everything else is up to the test.
    """

    def __init__(self, token: JoinToken | None, role: str) -> None:
        self.token = token
        self.role = role
        self.received = 0
        #: The first MiB of what it was sent.
        self.seen = b""
        self.welcomed: defer.Deferred[Attacker] = defer.Deferred()
        self.closed: defer.Deferred[None] = defer.Deferred()
        self.tls_done = False

    def handshakeCompleted(self) -> None:
        self.tls_done = True
        if self.token is not None:
            hello = hello_for(self.token, self.role, self.transport)
            data = wire.encode({"type": "hello", "id": 1, "payload": hello})
            self.transport.write(struct.pack("!I", len(data)) + data)

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if len(self.seen) < MiB:
            self.seen += data[:MiB]
        if not self.welcomed.called and b'"welcome"' in self.seen:
            self.welcomed.callback(self)

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(None)
        if self.token is not None and not self.welcomed.called:
            self.welcomed.errback(ConnectionError(f"closed before a welcome: {reason}"))

    def send(self, message_type: str, payload: Any = None, **envelope: Any) -> None:
        self.transport.write(frame({"type": message_type, "payload": payload, **envelope}))


class AttackFactory(protocol.ClientFactory):
    def __init__(self, attacker: Attacker) -> None:
        self.attacker = attacker

    def buildProtocol(self, addr: Any) -> Attacker:
        return self.attacker

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        self.attacker.connectionLost(reason)


class AttackTestCase(unittest.TestCase):
    """A secure master with one real slave, and the means to attack it."""

    #: Extra arguments of the master.
    master_arguments: tuple[str, ...] = ()

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < 8192 <= hard or (soft < 8192 and hard == resource.RLIM_INFINITY):
            resource.setrlimit(resource.RLIMIT_NOFILE, (8192, hard))
            self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        self.cluster = Cluster(self)
        self.master = self.cluster.master(
            "master", "--handshake-timeout", str(HANDSHAKE_TIMEOUT),
            "--frame-deadline", str(FRAME_DEADLINE), *self.master_arguments)
        self.slave = self.cluster.slave("slave")
        [slave] = yield self.cluster.wait_for_slaves("the real slave to join", lambda s: len(s) == 1)
        self.slave_uuid = slave["uuid"]
        self.slave_since = slave["connected_at"]
        self.attackers: list[Attacker] = []
        self.addCleanup(self._close_attackers)
        yield sleep(0.5)
        self.baseline = rss(self.master.process.pid)
        self.peak = self.baseline
        self._sampler = task.LoopingCall(self._sample)
        self._sampler.start(0.05)
        self.addCleanup(lambda: self._sampler.running and self._sampler.stop())

    def _sample(self) -> None:
        if self.master.running:
            self.peak = max(self.peak, rss(self.master.process.pid))

    def _close_attackers(self) -> defer.Deferred[Any]:
        waits = []
        for attacker in self.attackers:
            if attacker.transport is not None and not attacker.closed.called:
                attacker.transport.abortConnection()
                waits.append(attacker.closed)
        return defer.DeferredList(waits)

    def attack(self, token: JoinToken | None, role: str = "client", source: str = "127.0.0.2",
               tls: bool = True) -> Attacker:
        """Connect one attacker from C{source}."""
        attacker = Attacker(token, role)
        self.attackers.append(attacker)
        factory: Any = AttackFactory(attacker)
        if tls:
            factory = TLSFactory(PinnedMasterTLS(self.cluster.trust.fingerprint), True, factory)
        reactor.connectTCP("127.0.0.1", self.cluster.port, factory, timeout=10,
                           bindAddress=(source, 0))
        return attacker

    @defer.inlineCallbacks
    def joined(self, count: int, token: JoinToken, role: str = "client") -> Any:
        """C{count} authenticated attackers, from as many addresses as their handshakes need."""
        attackers = []
        for start in range(0, count, 10):
            batch = [self.attack(token, role, source=f"127.0.{3 + n // 250}.{n % 250 + 1}")
                     for n in range(start, min(count, start + 10))]
            yield defer.gatherResults([a.welcomed for a in batch])
            attackers += batch
        return attackers

    def report(self, what: str, figure: str) -> None:
        if os.environ.get("PICLUSTER_ATTACK_REPORT"):
            print(f"\n[attack] {self.id().rsplit('.', 1)[-1]}: {what}: {figure}", file=sys.stderr)

    @defer.inlineCallbacks
    def picluster(self, *argv: str) -> Any:
        stdout, stderr = io.StringIO(), io.StringIO()
        code = yield cli.main([*argv, "--master", f"127.0.0.1:{self.cluster.port}",
                               "--token", str(self.cluster.trust.token("client"))],
                              reactor=reactor, stdout=stdout, stderr=stderr, environ={})
        return code, stdout.getvalue(), stderr.getvalue()

    @defer.inlineCallbacks
    def assertUnharmed(self, bound: int) -> Any:
        """The master's memory grew by less than C{bound}; the slave and the users were served."""
        self._sample()
        grown = self.peak - self.baseline
        self.report("master RSS grew by", f"{grown / MiB:.1f} MiB (bound {bound / MiB:.0f} MiB)")
        self.assertTrue(self.master.running, self.cluster.report())
        self.assertLess(grown, bound, f"the master grew by {grown / MiB:.1f} MiB")
        code, out, err = yield self.picluster("status")
        self.assertEqual(code, 0, out + err)
        slaves = yield self.cluster.slave_details()
        [slave] = [s for s in slaves if s["uuid"] == self.slave_uuid]
        self.assertEqual(slave["connected_at"], self.slave_since, "the slave was never dropped")
        client = self.cluster.client()
        yield client.connect()
        try:
            submitted = yield client.submit([{"name": "echo", "args": {"ok": 1}}])
            [task_id] = [t["id"] for t in submitted["tasks"]]

            @defer.inlineCallbacks
            def done() -> Any:
                record = yield client.task(task_id)
                return record["state"] == "done" and record

            record = yield wait_until(done, "the slave to run a task", self.cluster.report)
            self.assertEqual(record["result"], {"ok": 1})
        finally:
            yield client.close()


class StrangerAttackTests(AttackTestCase):
    """Before any handshake: anyone who reaches the port."""

    @defer.inlineCallbacks
    def test_abandonedConnections(self) -> Any:
        """
        2,000 connections opened from one host and abandoned: the master lets
        16 of them start a handshake and closes the rest at once; those 16
        are dropped at the handshake deadline.  Meanwhile the cluster works.
        """
        attackers = [self.attack(None, tls=False) for _ in range(2000)]
        yield wait_until(lambda: sum(a.closed.called for a in attackers) >= 1984,
                         "the master to close all but 16", self.cluster.report)
        # While 16 are held, users elsewhere are served.
        code, out, err = yield self.picluster("status")
        self.assertEqual(code, 0, out + err)
        yield wait_until(lambda: all(a.closed.called for a in attackers),
                         "the handshake deadline to drop the rest", self.cluster.report,
                         timeout=HANDSHAKE_TIMEOUT + 10)
        yield self.assertUnharmed(24 * MiB)
        self.assertLess(len(self.master.output()), 64 * 1024, "the log stayed small")

    @defer.inlineCallbacks
    def test_slowloris(self) -> Any:
        """
        A stranger trickling a TLS handshake a byte a second, from 100
        hosts: each is dropped at the handshake deadline, trickle or not.
        """
        hello = b"\x16\x03\x01\x02\x00" + b"\x01" * 40
        attackers = [self.attack(None, tls=False, source=f"127.0.9.{n + 1}") for n in range(100)]
        for second in range(int(HANDSHAKE_TIMEOUT) + 3):
            for attacker in attackers:
                if attacker.transport is not None and not attacker.closed.called:
                    attacker.transport.write(hello[second:second + 1])
            yield sleep(1)
        self.assertTrue(all(a.closed.called for a in attackers), "every trickler was dropped")
        yield self.assertUnharmed(24 * MiB)

    @defer.inlineCallbacks
    def test_oversizedBeforeHello(self) -> Any:
        """Frames of 1 MiB before any hello: each connection is closed at its first."""
        attackers = []
        for batch in range(4):
            group = [self.attack(None, source=f"127.0.10.{batch * 10 + n + 1}") for n in range(10)]
            yield wait_until(lambda: all(a.tls_done or a.closed.called for a in group), "TLS")
            for attacker in group:
                attacker.transport.write(struct.pack("!I", MiB) + b"x" * MiB)
            attackers += group
        yield wait_until(lambda: all(a.closed.called for a in attackers), "every sender closed",
                         self.cluster.report)
        yield self.assertUnharmed(24 * MiB)
        self.assertLess(len(self.master.output()), 64 * 1024, "the log stayed small")


class AuthenticatedAttackTests(AttackTestCase):
    """After the handshake: a node or a user whose token was stolen, or a broken one."""

    master_arguments = ("--max-args", "600K")

    @defer.inlineCallbacks
    def test_slowFrames(self) -> Any:
        """100 clients announcing 1 MiB frames, then a byte a second: dropped at the frame deadline."""
        attackers = yield self.joined(100, self.cluster.trust.token("client"))
        for attacker in attackers:
            attacker.transport.write(struct.pack("!I", MiB - 100) + b'{"type":"message","payload":"')
        for _ in range(int(FRAME_DEADLINE) + 3):
            yield sleep(1)
            for attacker in attackers:
                if not attacker.closed.called:
                    attacker.transport.write(b"x")
        self.assertTrue(all(a.closed.called for a in attackers), "every slow sender was dropped")
        yield self.assertUnharmed(32 * MiB)

    @defer.inlineCallbacks
    def test_neverReads(self) -> Any:
        """
        A client asks for every kind of reply, the large ones many times
        (300 task listings, 30 watches of tasks with 500 KiB results), and
        never reads: it is dropped once 8 MiB wait for it.
        """
        client = self.cluster.client()
        yield client.connect()
        big = "r" * (500 * 1024)
        submitted = yield client.submit([{"name": "echo", "args": {"big": big}} for _ in range(10)])
        ids = [t["id"] for t in submitted["tasks"]]

        @defer.inlineCallbacks
        def all_done() -> Any:
            records = yield client.tasks(ids=ids)
            return all(r["state"] == "done" for r in records)

        yield wait_until(all_done, "the big tasks to end", self.cluster.report)
        yield client.close()
        self.baseline = self.peak = rss(self.master.process.pid)
        [attacker] = yield self.joined(1, self.cluster.trust.token("client"))
        attacker.transport.pauseProducing()
        requests = [frame({"type": "tasks", "payload": {"limit": 1000}, "id": n}) for n in range(300)]
        requests += [frame({"type": "watch", "payload": {"ids": ids}, "id": 1000 + n}) for n in range(30)]
        requests += [frame({"type": kind, "payload": payload, "id": 2000 + n})
                     for n, (kind, payload) in enumerate([
                         ("info", "status"), ("info", "slave_details"), ("info", "computer_details"),
                         ("ping", 1.0), ("tasks", None), ("cancel", {"id": ids[0]})])]
        attacker.transport.write(b"".join(requests))
        # It reads nothing, so it answers no ping either: it is dropped for
        # whichever comes first, the bytes waiting for it or its silence.
        yield wait_until(lambda: "Closing connection to client 127.0.3.1" in self.master.output(),
                         "the master to drop the non-reader", self.cluster.report)
        attacker.transport.resumeProducing()  # to see the close
        yield attacker.closed
        yield self.assertUnharmed(48 * MiB)

    @defer.inlineCallbacks
    def test_oversizedAndNestedFacts(self) -> Any:
        """
        Slaves sending 1 MiB facts of empty objects over 8 connections, and
        vitals nested 975 deep: refused, nothing kept; every view still answers.
        """
        token = self.cluster.trust.token("slave")
        attackers = yield self.joined(8, token, role="slave")
        junk = "[" + ",".join(["{}"] * (MiB // 3 - 10)) + "]"
        for attacker in attackers:
            for _ in range(2):
                attacker.transport.write(
                    frame({"type": "computer_details", "payload": {"hostname": "evil", "x": junk}}))
                attacker.transport.write(frame({"type": "vitals", "payload": {"x": junk}}))
        nested = "[" * 975 + "]" * 975
        body = ('{"type":"vitals","payload":{"cpu_temperature":1.0,"x":' + nested + "}}").encode()
        attackers[0].transport.write(struct.pack("!I", len(body)) + body)
        yield sleep(1)
        slaves = yield self.cluster.slave_details()
        self.assertEqual([s["uuid"] for s in slaves if s["computer_details"]], [self.slave_uuid])
        yield self.assertUnharmed(32 * MiB)

    @defer.inlineCallbacks
    def test_queueFlood(self) -> Any:
        """
        One machine submits 10 x 10,000 tasks as fast as it can: its quota
        stops it at 10,000 open; another user's submission is accepted and
        runs meanwhile.
        """
        [flooder] = yield self.joined(1, self.cluster.trust.token("client"))
        spec = {"name": "sleep", "args": {"seconds": 1}, "requirements": {"hostname": "nowhere"}}
        for n in range(10):
            flooder.send("submit", {"tasks": [dict(spec, key=f"f{n}-{i}") for i in range(10_000)]},
                         id=10 + n)
        yield wait_until(lambda: flooder.seen.count(b'"reply_to"') >= 11, "answers to the flood",
                         self.cluster.report)
        self.assertEqual(flooder.seen.count(b"over your quota"), 9)
        yield self.assertUnharmed(64 * MiB)

    @defer.inlineCallbacks
    def test_messageFlood(self) -> Any:
        """A slave sending 40 messages of 1 MiB, and 1,000 of 4 KiB: refused or budgeted; the log stays small."""
        [attacker] = yield self.joined(1, self.cluster.trust.token("slave"), role="slave")
        before = len(self.master.output())
        for _ in range(40):
            attacker.send("message", "m" * (MiB - 100))
        for _ in range(1000):
            attacker.send("message", "m" * 4000)
        yield sleep(1)
        self.assertLess(len(self.master.output()) - before, 32 * 1024, "the log grew by little")
        yield self.assertUnharmed(32 * MiB)
