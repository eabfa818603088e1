"""
The attacks on a secure cluster, with real processes and real TLS on
loopback: a real C{twistd picluster-master} and real slaves, and the
attacker in the test process (or a C{picluster} command), as someone on
the LAN would try them.  Each attack must fail for the attacker.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from typing import Any

from twisted.internet import defer, endpoints, protocol, reactor
from twisted.trial import unittest

from picluster.address import MasterAddress, dial, hello_for
from picluster.cli import main as cli
from picluster.trust.cluster import ClusterTrust
from picluster.trust.token import JoinToken, new_secret
from picluster.wire.errors import RemoteError
from tests.helpers import frame
from tests.processes import Cluster, wait_until
from tests.test_trust import Knocker


class DiallingKnocker(Knocker, protocol.ClientFactory):
    """A L{Knocker} that dials a real master."""


class Recorder(protocol.Protocol):
    """A plain-TCP peer: keeps what it is sent, notes when it is closed."""

    def __init__(self) -> None:
        self.received = b""
        self.closed: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(None)


class Relay(protocol.Protocol):
    """One side of a TCP relay: forwards bytes to its partner, and keeps a copy."""

    def __init__(self, seen: list[bytes]) -> None:
        self.seen = seen
        self.partner: Relay | None = None
        self.pending: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.seen.append(data)
        if self.partner is not None and self.partner.transport is not None:
            self.partner.transport.write(data)
        else:
            self.pending.append(data)

    def connectionLost(self, reason: Any = None) -> None:
        if self.partner is not None and self.partner.transport is not None:
            self.partner.transport.loseConnection()


class RelayFactory(protocol.Factory):
    """A man in the middle that forwards every byte between a node and the master."""

    def __init__(self, master_port: int) -> None:
        self.master_port = master_port
        self.seen: list[bytes] = []

    def buildProtocol(self, addr: Any) -> Relay:
        near = Relay(self.seen)
        far = Relay(self.seen)
        near.partner, far.partner = far, near
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.master_port)

        def connected(_: Any) -> None:
            for data in near.pending:
                far.transport.write(data)
            near.pending.clear()

        endpoints.connectProtocol(endpoint, far).addCallback(connected)
        return near


class SecureClusterTests(unittest.TestCase):
    """A master and a real slave, secure as installed; strangers try their luck."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.cluster = Cluster(self)
        self.master = self.cluster.master("master")
        self.slave = self.cluster.slave("slave")
        yield self.cluster.wait_for_slaves("the real slave to join", lambda slaves: len(slaves) == 1)

    @defer.inlineCallbacks
    def picluster(self, *argv: str) -> Any:
        stdout, stderr = io.StringIO(), io.StringIO()
        code = yield cli.main([*argv, "--master", f"127.0.0.1:{self.cluster.port}"],
                              reactor=reactor, stdout=stdout, stderr=stderr, environ={})
        return code, stdout.getvalue(), stderr.getvalue()

    @defer.inlineCallbacks
    def knock(self, token: JoinToken, role: str, pinned: str | None = None) -> Any:
        """Say one hello over real TLS with C{token}'s proof, as C{role}; fire with the knocker."""
        node = DiallingKnocker(lambda transport: hello_for(token, role, transport), reactor,
                       pinned=pinned or token.fingerprint)
        dial(reactor, MasterAddress("127.0.0.1", self.cluster.port), node, token)
        yield wait_until(lambda: node.answer is not None or (
            node.connection is not None and node.connection.lost is not None), "an answer to the hello")
        self.addCleanup(lambda: node.connection.lost or node.connection.close("test over"))
        return node

    @defer.inlineCallbacks
    def assertRefused(self, node: Knocker, text: str) -> Any:
        try:
            yield node.answer
        except RemoteError as e:
            self.assertEqual(e.reply["payload"]["error"], text)
        else:
            self.fail("the master welcomed the attacker")
        yield wait_until(lambda: node.connection.lost is not None, "the master to close the connection")

    @defer.inlineCallbacks
    def test_plainTcpPeerGetsNothing(self) -> Any:
        """A plain-TCP peer's hello and questions are never read: no frame comes back, and it is closed."""
        peer = Recorder()
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.cluster.port)
        yield endpoints.connectProtocol(endpoint, peer)
        peer.transport.write(frame({"type": "info", "payload": "slave_details", "id": 1}))
        peer.transport.write(frame({"type": "hello", "id": 2,
                                    "payload": {"version": 1, "uuid": None, "role": "client"}}))
        yield peer.closed
        self.assertNotIn(b"slave_details", peer.received)
        self.assertNotIn(b'"type"', peer.received)

    @defer.inlineCallbacks
    def test_noToken(self) -> Any:
        """The picluster command without a token is told how to get one, and sends nothing."""
        code, out, err = yield self.picluster("status")
        self.assertEqual(code, 2, err)
        self.assertIn("a token is needed to reach the master", err)

    @defer.inlineCallbacks
    def test_wrongToken(self) -> Any:
        """A token with the cluster's CA and a made-up secret is refused."""
        forged = JoinToken(self.cluster.trust.fingerprint, "client", new_secret())
        code, out, err = yield self.picluster("status", "--token", str(forged))
        self.assertEqual(code, 1, err)
        self.assertIn("authentication failed", err)
        self.assertEqual(out, "")
        yield self.cluster.wait_for_log(self.master, "Refused 127.0.0.1:")

    @defer.inlineCallbacks
    def test_slaveTokenAsClient(self) -> Any:
        """A slave's token cannot submit: it cannot even say it is a client."""
        node = yield self.knock(self.cluster.trust.token("slave"), "client")
        yield self.assertRefused(node, "authentication failed")

    @defer.inlineCallbacks
    def test_clientTokenAsSlave(self) -> Any:
        """A user's token cannot join as a slave (and so is never handed work)."""
        node = yield self.knock(self.cluster.trust.token("client"), "slave")
        yield self.assertRefused(node, "authentication failed")

    @defer.inlineCallbacks
    def test_replayedHello(self) -> Any:
        """A hello recorded on one TLS connection is refused on another: its proof is bound to the first."""
        token = self.cluster.trust.token("client")
        recorded: list[Any] = []

        def record(transport: Any) -> Any:
            recorded.append(hello_for(token, "client", transport))
            return recorded[-1]

        first = DiallingKnocker(record, reactor, pinned=token.fingerprint)
        dial(reactor, MasterAddress("127.0.0.1", self.cluster.port), first, token)
        yield wait_until(lambda: first.answer is not None, "the first hello's answer")
        welcome = yield first.answer
        self.assertEqual(welcome.type, "welcome")
        first.connection.close("test over")
        replay = DiallingKnocker(lambda transport: recorded[0], reactor, pinned=token.fingerprint)
        dial(reactor, MasterAddress("127.0.0.1", self.cluster.port), replay, token)
        yield wait_until(lambda: replay.answer is not None, "the replayed hello's answer")
        yield self.assertRefused(replay, "authentication failed")

    @defer.inlineCallbacks
    def test_forgedResult(self) -> Any:
        """A client cannot send a task_result: nobody but a slave reports results."""
        node = yield self.knock(self.cluster.trust.token("client"), "client")
        yield node.answer
        answer = node.connection.request("task_result", {"id": 1, "attempt": 1, "outcome": "done",
                                                         "result": "forged"})
        try:
            yield answer
        except RemoteError as e:
            self.assertEqual(e.reply["payload"]["error"], "not served to a client")
        else:
            self.fail("the master took a client's task_result")

    @defer.inlineCallbacks
    def test_readOnlyCannotSubmit(self) -> Any:
        """A read-only token lists tasks and cannot submit one."""
        token = str(self.cluster.trust.token("read-only"))
        code, out, err = yield self.picluster("tasks", "--token", token)
        self.assertEqual(code, 0, err)
        code, out, err = yield self.picluster("submit", "primes", "--args",
                                              '{"start": 0, "stop": 10}', "--token", token)
        self.assertEqual(code, 1, err)
        self.assertIn("not served to a read-only", err)

    @defer.inlineCallbacks
    def test_submitterRecorded(self) -> Any:
        """The master records which credential, from where, submitted each task."""
        token = str(self.cluster.trust.token("client"))
        code, out, err = yield self.picluster("submit", "primes", "--args", '{"start": 0, "stop": 10}',
                                              "--token", token)
        self.assertEqual(code, 0, err)
        task_id = out.split()[-1]
        code, out, err = yield self.picluster("task", task_id, "--json", "--token", token)
        self.assertEqual(code, 0, err)
        self.assertRegex(json.loads(out)["submitted_by"], r"^client at 127\.0\.0\.1:\d+$")

    @defer.inlineCallbacks
    def test_uuidTakeover(self) -> Any:
        """A holder of the slave token cannot take a real slave's uuid: the slave stays, unbothered."""
        [real] = yield self.cluster.slave_details()
        token = self.cluster.trust.token("slave")
        for _ in range(3):
            node = DiallingKnocker(
                lambda transport: hello_for(token, "slave", transport, uuid=real["uuid"]), reactor,
                pinned=token.fingerprint)
            dial(reactor, MasterAddress("127.0.0.1", self.cluster.port), node, token)
            yield wait_until(lambda: node.answer is not None, "an answer to the hello")
            yield self.assertRefused(node, "this uuid belongs to another node")
        [still] = yield self.cluster.slave_details()
        self.assertEqual((still["uuid"], still["connected_at"]), (real["uuid"], real["connected_at"]))
        # One session from start to end: never dropped, never rejoined.
        self.assertEqual(self.slave.output().count("oined master"), 1, self.slave.output())

    @defer.inlineCallbacks
    def test_rotation(self) -> Any:
        """After 'picluster token --rotate' the old token is refused; the new one joins."""
        old = str(self.cluster.trust.token("client"))
        stdout, stderr = io.StringIO(), io.StringIO()
        code = yield cli.main(["token", "--rotate", "--client", "--state-dir", self.cluster.state_dir],
                              reactor=reactor, stdout=stdout, stderr=stderr, environ={})
        self.assertEqual(code, 0, stderr.getvalue())
        new = stdout.getvalue().strip()
        self.assertNotEqual(new, old)
        code, out, err = yield self.picluster("status", "--token", old)
        self.assertEqual(code, 1, err)
        self.assertIn("authentication failed", err)
        code, out, err = yield self.picluster("status", "--token", new)
        self.assertEqual(code, 0, err)

    @defer.inlineCallbacks
    def test_relayLearnsNothing(self) -> Any:
        """A man in the middle forwarding bytes sees neither the proof nor any message."""
        relay = RelayFactory(self.cluster.port)
        port = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(relay)
        self.addCleanup(port.stopListening)
        token = self.cluster.trust.token("client")
        errors = io.StringIO()
        code = yield cli.main(
            ["status", "--json", "--master", f"127.0.0.1:{port.getHost().port}", "--token", str(token)],
            reactor=reactor, stdout=io.StringIO(), stderr=errors, environ={})
        self.assertEqual(code, 0, errors.getvalue())
        seen = b"".join(relay.seen)
        self.assertTrue(seen, "nothing went through the relay")
        for plain in (b"hello", b"proof", b"slave_details", b"status", token.secret.encode()):
            self.assertNotIn(plain, seen)


class ImpostorMasterTests(unittest.TestCase):
    """A master that is not the cluster's gets nothing from a slave."""

    @defer.inlineCallbacks
    def test_slaveRefusesImpostor(self) -> Any:
        """A slave dialling a master with another CA refuses it, logs why, and keeps trying."""
        cluster = Cluster(self)
        impostor_dir = os.path.join(cluster.cwd, "impostor")
        shutil.rmtree(impostor_dir, ignore_errors=True)
        ClusterTrust.open(impostor_dir)
        impostor = cluster.master("impostor", "--state-dir", impostor_dir)
        slave = cluster.slave("slave")
        yield cluster.wait_for_log(slave, "not from the cluster's CA")
        yield cluster.wait_until(lambda: slave.output().count("Connecting to master") >= 2,
                                 "the slave to try again")
        self.assertNotIn("joined with", impostor.output())
        self.assertTrue(slave.running, cluster.report())


class ClonedCardTests(unittest.TestCase):
    """Two Pis from one SD card image, identity and all."""

    @defer.inlineCallbacks
    def test_clonedIdentityFoundOut(self) -> Any:
        """The clones displace each other a few times, then one is refused and the node shown as cloned."""
        cluster = Cluster(self)
        cluster.master("master")
        first_dir = os.path.join(cluster.cwd, "pi-one")
        first = cluster.slave("pi-one", "--state-dir", first_dir)
        [joined] = yield cluster.wait_for_slaves("the first Pi", lambda slaves: len(slaves) == 1)
        clone_dir = os.path.join(cluster.cwd, "pi-two")
        os.makedirs(clone_dir)
        shutil.copy(os.path.join(first_dir, "node.json"), clone_dir)
        clone = cluster.slave("pi-two", "--state-dir", clone_dir)
        refusal = "this node's identity is in use by another machine (a cloned SD card?)"
        # Which of the two is refused depends on who came back last.
        yield cluster.wait_until(lambda: refusal in first.output() + clone.output(),
                                 "one of the clones to be refused")
        yield cluster.wait_for_slaves(
            "the node shown as cloned",
            lambda slaves: len(slaves) == 1 and slaves[0]["cloned"] and slaves[0]["uuid"] == joined["uuid"])
        self.assertTrue(first.running and clone.running, cluster.report())
