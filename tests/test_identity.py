"""
Node identity: a slave keeps the uuid and node key its master gave it, no
one else can take that uuid, and two machines holding one identity (a
cloned SD card) are found out rather than left to evict each other.

Real TLS between a real master factory and real slave factories, carried
in memory by iosim with a Clock, as in L{tests.test_trust}.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

from twisted.internet.task import Clock

from picluster.address import hello_for
from picluster.master.connection import MasterFactory
from picluster.master.nodes import CLONE_DISPLACEMENTS, NODES_FILE, SAVE_DELAY, NodeBook
from picluster.master.registry import SlaveRegistry
from picluster.slave.identity import IDENTITY_FILE, IdentityError, NodeIdentity
from picluster.trust.channel import PinnedMasterTLS
from picluster.trust.cluster import TrustError
from picluster.wire.errors import RemoteError
from picluster.wire.messages import IDENTITY_IN_USE, NODE_OWNED
from tests.helpers import slave_factory
from tests.test_trust import MASTER_FACTS, Knocker, TrustDirectory, tls_pair


class IdentityFileTests(TrustDirectory):
    """A slave's node.json: read back, one slave at a time, one cluster's."""

    def test_lockedWhileRunning(self) -> None:
        """A second slave on the same state directory is refused: it would be a clone."""
        directory = self.mktemp()
        first = NodeIdentity.open(directory, self.trust.fingerprint)
        self.addCleanup(first.close)
        error = self.assertRaises(IdentityError, NodeIdentity.open, directory, self.trust.fingerprint)
        self.assertIn("give each slave its own --state-dir", str(error))
        first.close()
        NodeIdentity.open(directory, self.trust.fingerprint).close()

    def test_savedAndReadBack(self) -> None:
        """An identity saved is read back by the next slave on the directory, mode 0600."""
        directory = self.mktemp()
        identity = NodeIdentity.open(directory, self.trust.fingerprint)
        identity.save("a" * 32, self.trust.token("slave").secret)
        identity.close()
        self.assertEqual(os.stat(os.path.join(directory, IDENTITY_FILE)).st_mode & 0o777, 0o600)
        again = NodeIdentity.open(directory, self.trust.fingerprint)
        self.addCleanup(again.close)
        self.assertEqual(again.uuid, "a" * 32)

    def test_otherClusterIgnored(self) -> None:
        """An identity from another cluster (another CA) is not presented to this one."""
        directory = self.mktemp()
        identity = NodeIdentity.open(directory, "ab" * 32)
        identity.save("a" * 32, self.trust.token("slave").secret)
        identity.close()
        again = NodeIdentity.open(directory, self.trust.fingerprint)
        self.addCleanup(again.close)
        self.assertIsNone(again.uuid)

    def test_malformedKeyNotKept(self) -> None:
        """A node key that is no secret (a megabyte, say) is refused, so the next start still works."""
        directory = self.mktemp()
        identity = NodeIdentity.open(directory, self.trust.fingerprint)
        self.addCleanup(identity.close)
        for key in ("k" * 1024 * 1024, "not a key"):
            error = self.assertRaises(IdentityError, identity.save, "a" * 32, key)
            self.assertIn("the master's node key is malformed", str(error))
            self.assertLess(len(str(error)), 200)
        self.assertFalse(os.path.exists(os.path.join(directory, IDENTITY_FILE)))
        self.assertIsNone(identity.key)

    def test_damaged(self) -> None:
        """A damaged node.json stops the slave with how to start afresh."""
        directory = self.mktemp()
        os.makedirs(directory)
        with open(os.path.join(directory, IDENTITY_FILE), "w") as out:
            out.write("{not json")
        error = self.assertRaises(IdentityError, NodeIdentity.open, directory, self.trust.fingerprint)
        self.assertIn("delete the file to join as a new node", str(error))
        # The lock went with the refusal.
        NodeIdentity.open(directory + "-other", self.trust.fingerprint).close()


class NodesFileTests(TrustDirectory):
    """The master's nodes.json: a damaged key is refused, never read as an empty one."""

    def test_damagedKey(self) -> None:
        path = os.path.join(self.mktemp() + "-nodes.json")
        with open(path, "w") as out:
            json.dump({"format": "picluster-nodes-1", "nodes": {"a" * 32: "!"}}, out)
        error = self.assertRaises(TrustError, NodeBook, path, Clock())
        self.assertIn("damaged node key", str(error))

    def test_notAnObject(self) -> None:
        path = os.path.join(self.mktemp() + "-nodes.json")
        with open(path, "w") as out:
            out.write("[1, 2]")
        self.assertRaises(TrustError, NodeBook, path, Clock())


class NodeTests(TrustDirectory):
    """The master binds each slave's uuid to a node key, and holds every claim to it."""

    def setUp(self) -> None:
        super().setUp()
        self.clock = Clock()
        self.state = self.mktemp()
        shutil.copytree(self.trust.state_dir, self.state)
        from picluster.trust.cluster import ClusterTrust

        self.cluster = ClusterTrust.open(self.state)
        self.master = MasterFactory(SlaveRegistry(), clock=self.clock, trust=self.cluster,
                                    computer_details=MASTER_FACTS, keepalive=5)

    def slave(self, state_dir: str) -> tuple[Any, Any, Any]:
        identity = NodeIdentity.open(state_dir, self.cluster.fingerprint)
        self.addCleanup(identity.close)
        factory = slave_factory(self.clock, token=self.cluster.token("slave"), identity=identity)
        master_side, node_side, pump = tls_pair(self.cluster.server_options(), self.master, factory,
                                                PinnedMasterTLS(self.cluster.fingerprint), self.clock)
        pump.flush()
        return factory, master_side, pump

    def knock(self, hello: Any) -> Knocker:
        node = Knocker(hello, self.clock)
        tls_pair(self.cluster.server_options(), self.master, node,
                 PinnedMasterTLS(self.cluster.fingerprint), self.clock)[2].flush()
        return node

    def test_identityLastsAcrossRestarts(self) -> None:
        """A slave's first join gives it a node key it keeps; restarted, it is the same node."""
        directory = self.mktemp()
        first, master_side, _ = self.slave(directory)
        with open(os.path.join(directory, IDENTITY_FILE)) as source:
            kept = json.load(source)
        self.assertEqual(kept["uuid"], first.uuid)
        # Written within SAVE_DELAY, once for all the nodes that joined meanwhile.
        self.assertFalse(os.path.exists(self.cluster.path(NODES_FILE)))
        self.clock.advance(SAVE_DELAY)
        with open(self.cluster.path(NODES_FILE)) as source:
            self.assertIn(first.uuid, json.load(source)["nodes"])
        first.identity.close()
        master_side.transport.loseConnection()
        again, _, _ = self.slave(directory)
        self.assertEqual(again.uuid, first.uuid)
        self.assertEqual([slave.uuid for slave in self.master.registry], [first.uuid])

    def test_keysOutliveTheMaster(self) -> None:
        """A master started again on the state directory knows its nodes: a takeover is still refused."""
        real, _, _ = self.slave(self.mktemp())
        self.master.nodes.flush()
        self.master = MasterFactory(SlaveRegistry(), clock=self.clock, trust=self.cluster,
                                    computer_details=MASTER_FACTS, keepalive=5)
        token = self.cluster.token("slave")
        node = self.knock(lambda transport: hello_for(token, "slave", transport, uuid=real.uuid))
        failure = self.failureResultOf(node.answer, RemoteError)
        self.assertEqual(failure.value.reply["payload"]["error"], NODE_OWNED)

    def test_takeoverRefused(self) -> None:
        """Holding the slave token is not enough to take a node's uuid: its key is needed."""
        real, _, _ = self.slave(self.mktemp())
        token = self.cluster.token("slave")
        for node_key in (None, b"\0" * 32):
            node = self.knock(lambda transport, key=node_key: hello_for(
                token, "slave", transport, uuid=real.uuid, node_key=key))
            failure = self.failureResultOf(node.answer, RemoteError)
            self.assertEqual(failure.value.reply["payload"]["error"], NODE_OWNED)
        [listed] = list(self.master.registry)
        self.assertEqual(listed.uuid, real.uuid)
        self.assertIsNone(listed.protocol.lost)
        self.assertIsNone(real.connection.lost)

    def test_clonesFoundOut(self) -> None:
        """Two machines with one node.json displace each other a few times, then the newcomer is refused."""
        original = self.mktemp()
        first, _, _ = self.slave(original)
        copy = self.mktemp()
        shutil.copytree(original, copy)
        os.unlink(os.path.join(copy, "node.lock"))
        sides = [first]
        running = {original: first}
        clone = None
        for turn in range(CLONE_DISPLACEMENTS):
            # The machine that was displaced comes back, displacing the other.
            machine = copy if turn % 2 == 0 else original
            if machine in running:
                running[machine].identity.close()
            clone, _, _ = self.slave(machine)
            running[machine] = clone
            sides.append(clone)
        self.assertEqual(clone.uuid, first.uuid)
        [holder] = list(self.master.registry)
        self.assertTrue(holder.cloned)
        self.assertTrue(holder.describe()["cloned"])
        token = self.cluster.token("slave")
        node = self.knock(lambda transport: hello_for(
            token, "slave", transport, uuid=first.uuid,
            node_key=sides[0].identity.key_bytes))
        failure = self.failureResultOf(node.answer, RemoteError)
        self.assertEqual(failure.value.reply["payload"]["error"], IDENTITY_IN_USE)
        self.assertIs(list(self.master.registry)[0], holder)
        self.assertIsNone(holder.protocol.lost)

    def test_rebootIsNoClone(self) -> None:
        """A node that comes back once while its old connection lingers is not a clone."""
        directory = self.mktemp()
        first, _, _ = self.slave(directory)
        first.identity.close()
        again, _, _ = self.slave(directory)
        [holder] = list(self.master.registry)
        self.assertFalse(holder.cloned)
