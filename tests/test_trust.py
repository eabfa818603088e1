"""
The trust layer: tokens, the master's state directory, and the TLS
handshake with its proof, each attack as a test that fails for the attacker.

Real TLS (Twisted's TLSMemoryBIOProtocol over pyOpenSSL) between a real
master factory and real nodes, carried in memory by iosim with a Clock.
"""

from __future__ import annotations

import os
import shutil
import stat
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim
from twisted.trial import unittest

from picluster.address import MasterAddress, hello_for
from picluster.client.connection import ClientFactory
from picluster.master.connection import MasterFactory
from picluster.master.registry import SlaveRegistry
from picluster.trust import pki
from picluster.trust.channel import (
    RECEIVE_CHUNK,
    MasterTLS,
    PinnedMasterTLS,
    TLSFactory,
    UntrustedMaster,
    channel_binding,
    proof,
    verify_master,
)
from picluster.trust.cluster import SECRETS, ClusterTrust, TrustError
from picluster.trust.token import JoinToken, TokenError, new_secret, parse_token, read_token_file
from picluster.wire.errors import RemoteError
from picluster.wire.handler import PeerHandler
from picluster.wire.messages import AUTHENTICATION_FAILED, SAY_HELLO_FIRST, Hello
from picluster.wire.protocol import PiClusterFactory, PiClusterProtocol
from tests.helpers import frame, slave_factory

MASTER_FACTS = {"hostname": "master", "cpu_cores": 4}


class TrustDirectory(unittest.TestCase):
    """
    A cluster's trust material for each test, in its temporary directory
    (per test rather than per class: trial runs no setUpClass).
    """

    def setUp(self) -> None:
        self.trust = ClusterTrust.open(os.path.join(self.mktemp(), "state"))


class TokenTests(unittest.TestCase):
    """Join tokens are read as written, and refused with reasons that never quote the secret."""

    def test_roundTrip(self) -> None:
        """A token's text reads back as the same token."""
        token = JoinToken("ab" * 32, "client", new_secret())
        self.assertEqual(parse_token(f"  {token}\n"), token)
        self.assertEqual(token.role, "client")
        self.assertEqual(len(token.key), 32)

    def test_reprHidesSecret(self) -> None:
        """repr() names the credential and never shows the secret."""
        secret = new_secret()
        self.assertNotIn(secret, repr(JoinToken("ab" * 32, "slave", secret)))

    def test_malformed(self) -> None:
        """A wrong prefix, fingerprint, credential or secret is refused, secret unquoted."""
        secret = new_secret()
        for text, problem in [
            (f"K10{'ab' * 32}::slave:{secret}", "a join token reads PIC1:"),
            (f"PIC1:{'ab' * 31}:slave:{secret}", "fingerprint"),
            (f"PIC1:{'ab' * 32}:admin:{secret}", "unknown credential 'admin'"),
            (f"PIC1:{'ab' * 32}:slave:{secret[:-1]}!", "URL-safe base64"),
        ]:
            error = self.assertRaises(TokenError, parse_token, text)
            self.assertIn(problem, str(error))
            self.assertNotIn(secret[:20], str(error))

    def test_tokenFile(self) -> None:
        """A token file's first non-empty line is its token; an empty or missing one is refused."""
        directory = self.mktemp()
        os.makedirs(directory)
        token = JoinToken("cd" * 32, "slave", new_secret())
        path = os.path.join(directory, "token")
        with open(path, "w") as out:
            out.write(f"\n{token}\n")
        self.assertEqual(read_token_file(path), token)
        with open(path, "w") as out:
            out.write("\n \n")
        self.assertIn("is empty", str(self.assertRaises(TokenError, read_token_file, path)))
        missing = os.path.join(directory, "nope")
        self.assertIn("cannot read the token file", str(self.assertRaises(TokenError, read_token_file, missing)))


class StateDirectoryTests(TrustDirectory):
    """The master's state directory: made once, private, read back, rotated."""

    def test_filesArePrivate(self) -> None:
        """Every file the master made is mode 0600."""
        for name in os.listdir(self.trust.state_dir):
            mode = stat.S_IMODE(os.stat(os.path.join(self.trust.state_dir, name)).st_mode)
            self.assertEqual(mode, 0o600, name)

    def test_reopenedAsItWas(self) -> None:
        """Opening the directory again finds the same CA and the same tokens."""
        again = ClusterTrust.open(self.trust.state_dir)
        self.assertEqual(again.fingerprint, self.trust.fingerprint)
        self.assertEqual(again.token("slave"), self.trust.token("slave"))
        self.assertEqual(self.trust.token("slave").fingerprint, pki.fingerprint(self.trust.ca))

    def test_noClusterYet(self) -> None:
        """Reading (not making) a directory without a cluster says where to start it."""
        empty = self.mktemp()
        error = self.assertRaises(TrustError, ClusterTrust.open, empty, create=False)
        self.assertIn("start the master there first", str(error))
        self.assertFalse(os.path.exists(empty))

    def test_damagedSecrets(self) -> None:
        """A secrets file that is not one is refused by name, not half-read."""
        directory = self.mktemp()
        shutil.copytree(self.trust.state_dir, directory)
        with open(os.path.join(directory, SECRETS), "w") as out:
            out.write('{"format": "picluster-tokens-1", "secrets": {"slave": 3}}')
        error = self.assertRaises(TrustError, ClusterTrust.open, directory)
        self.assertIn("is not a picluster-tokens-1 file", str(error))

    def test_secretsNotAnObject(self) -> None:
        """A secrets file holding JSON of another shape, or a damaged secret, is refused by name."""
        for content in ('["a list"]', '{"format": "picluster-tokens-1", "secrets": {"slave": "!",'
                                      ' "client": "!", "read-only": "!"}}'):
            directory = self.mktemp()
            shutil.copytree(self.trust.state_dir, directory)
            with open(os.path.join(directory, SECRETS), "w") as out:
                out.write(content)
            self.assertRaises(TrustError, ClusterTrust.open, directory)

    def test_rotateChangesEveryToken(self) -> None:
        """Rotation gives every credential a new secret; the CA stays."""
        directory = self.mktemp()
        shutil.copytree(self.trust.state_dir, directory)
        trust = ClusterTrust.open(directory)
        before = {credential: trust.token(credential) for credential in ("slave", "client", "read-only")}
        trust.rotate()
        for credential, token in before.items():
            after = trust.token(credential)
            self.assertEqual(after.fingerprint, token.fingerprint)
            self.assertNotEqual(after.secret, token.secret, credential)

    def test_rotationKeepsTheOwner(self) -> None:
        """Root rotating the secrets leaves the file to the master's own user."""
        if os.getuid() != 0:
            raise unittest.SkipTest("only root can hand a file to another user")
        directory = self.mktemp()
        shutil.copytree(self.trust.state_dir, directory)
        secrets = os.path.join(directory, SECRETS)
        os.chown(secrets, 65534, 65534)
        ClusterTrust.open(directory).rotate()
        status = os.stat(secrets)
        self.assertEqual((status.st_uid, status.st_gid), (65534, 65534))
        self.assertEqual(stat.S_IMODE(status.st_mode), 0o600)

    def test_masterCertificateVerifies(self) -> None:
        """The master's certificate is issued by the CA for the name nodes check."""
        from cryptography import x509
        from cryptography.x509.verification import PolicyBuilder, Store

        with open(self.trust.path("master.pem"), "rb") as source:
            leaf = x509.load_pem_x509_certificate(source.read())
        verifier = PolicyBuilder().store(Store([self.trust.ca])).build_server_verifier(
            x509.DNSName(pki.MASTER_NAME))
        verifier.verify(leaf, [])


class ProofTests(unittest.TestCase):
    """The hello proof holds for one key, one credential and one channel only."""

    def test_boundToEverything(self) -> None:
        key, binding = os.urandom(32), os.urandom(32)
        offered = proof(key, "slave", binding)
        from picluster.trust.channel import proof_holds

        self.assertTrue(proof_holds(key, "slave", binding, offered))
        self.assertFalse(proof_holds(key, "slave", os.urandom(32), offered), "another channel")
        self.assertFalse(proof_holds(os.urandom(32), "slave", binding, offered), "another key")
        self.assertFalse(proof_holds(key, "client", binding, offered), "another credential")

    def test_anyTextOffered(self) -> None:
        """A proof of any text (non-ASCII, lone surrogates) is simply wrong, never an error."""
        from picluster.trust.channel import node_proof_holds, proof_holds

        key, binding = os.urandom(32), os.urandom(32)
        for offered in ("é" * 64, "\ud800" * 64, "", "0" * 64):
            self.assertFalse(proof_holds(key, "slave", binding, offered))
            self.assertFalse(node_proof_holds(key, "a" * 32, binding, offered))

    def test_plainHasNoBinding(self) -> None:
        """A plain connection has no channel to bind a proof to."""
        self.assertIsNone(channel_binding(object()))


class _Recording:
    """An OpenSSL connection whose bio_write sizes are noted."""

    def __init__(self, connection: Any, sizes: list[int]):
        self._connection = connection
        self._sizes = sizes

    def bio_write(self, data: bytes) -> int:
        self._sizes.append(len(data))
        return self._connection.bio_write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


class Knocker(PiClusterFactory):
    """
    A node that says one chosen hello over TLS: a real one, or an attacker's.

    @ivar hello: Makes the hello from the TLS transport, or C{None} to say
        nothing at first.
    """

    tls = True

    def __init__(self, hello: Any, clock: Clock, pinned: str | None = None):
        super().__init__(clock=clock, keepalive=5)
        self.hello = hello
        self.pinned = pinned
        self.answer: Any = None
        self.connection: PiClusterProtocol | None = None
        self.started = False

    def check_peer(self, protocol: PiClusterProtocol) -> None:
        if self.pinned is not None:
            verify_master(protocol.transport, self.pinned)

    def make_handler(self, protocol: PiClusterProtocol) -> PeerHandler:
        factory = self

        class Handler(PeerHandler):
            def connection_made(self) -> None:
                factory.connection = protocol
                factory.started = True
                if factory.hello is not None:
                    factory.answer = protocol.request("hello", factory.hello(protocol.transport))

        return Handler(protocol)


def tls_pair(server_options: Any, master: PiClusterFactory, node: Any, creator: Any,
             clock: Clock) -> tuple[Any, Any, iosim.IOPump]:
    """A node connected to a master over real TLS in memory: (master side, node side, pump)."""
    server = TLSFactory(server_options, False, master, clock=clock).buildProtocol(
        IPv4Address("TCP", "10.0.0.9", 5000))
    client = TLSFactory(creator, True, node, clock=clock).buildProtocol(
        IPv4Address("TCP", "10.0.0.1", 12345))
    # Taken now: a TLS wrapper lets go of its protocol once the connection is lost.
    master_side, node_side = server.wrappedProtocol, client.wrappedProtocol
    pump = iosim.connect(server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client),
                         clock=clock)
    return master_side, node_side, pump


class HandshakeTests(TrustDirectory):
    """Only a holder of a token's secret gets past the hello, and only as its credential allows."""

    def setUp(self) -> None:
        super().setUp()
        self.clock = Clock()
        self.master = MasterFactory(SlaveRegistry(), clock=self.clock, trust=self.trust,
                                    computer_details=MASTER_FACTS, keepalive=5)

    def knock(self, hello: Any, *, trust: ClusterTrust | None = None, pinned: str | None = None,
              ) -> tuple[Any, Knocker, iosim.IOPump]:
        options = (trust or self.trust).server_options()
        node = Knocker(hello, self.clock, pinned=pinned)
        master_side, _, pump = tls_pair(options, self.master, node,
                                        PinnedMasterTLS(self.trust.fingerprint), self.clock)
        pump.flush()
        return master_side, node, pump

    def hello_with(self, token: JoinToken, role: str | None = None) -> Any:
        return lambda transport: hello_for(token, role or token.role, transport)

    def refusal(self, node: Knocker) -> str:
        failure = self.failureResultOf(node.answer, RemoteError)
        return failure.value.reply["payload"]["error"]

    def test_slaveJoins(self) -> None:
        """A real slave with the slave token joins: welcomed, listed, its role from its credential."""
        slave = slave_factory(self.clock, token=self.trust.token("slave"))
        master_side, node_side, pump = tls_pair(self.trust.server_options(), self.master, slave,
                                                PinnedMasterTLS(self.trust.fingerprint), self.clock)
        pump.flush()
        self.assertIsNotNone(slave.uuid)
        self.assertEqual(master_side.handler.credential, "slave")
        self.assertEqual([s.uuid for s in self.master.registry], [slave.uuid])

    def test_burstInPieces(self) -> None:
        """A burst far larger than a receive chunk reaches OpenSSL in pieces, and the master whole, in order."""
        master_side, node, pump = self.knock(self.hello_with(self.trust.token("client")))
        self.successResultOf(node.answer)
        fed: list[int] = []
        tls = master_side.transport
        tls._tlsConnection = _Recording(tls._tlsConnection, fed)
        seen: list[str] = []
        master_side.handler.msg_message = seen.append
        for number in range(200):
            node.connection.send("message", f"{number} {'x' * 1000}")
        pump.flush()
        self.assertEqual(seen, [f"{number} {'x' * 1000}" for number in range(200)])
        self.assertGreater(sum(fed), 200 * 1000)
        self.assertLessEqual(max(fed), RECEIVE_CHUNK)

    def test_readAnsweredAtOnce(self) -> None:
        """The answers to a read leave over TLS at once, not on a later turn of the reactor."""
        master_side, node, pump = self.knock(self.hello_with(self.trust.token("client")))
        self.successResultOf(node.answer)
        asked = node.connection.request("ping", 1.5)
        self.clock.advance(0)  # the node's request, sent outside a read, leaves on the next turn
        pump.flush(advanceClock=False)
        self.assertEqual(self.successResultOf(asked).payload, 1.5)

    def test_clientJoins(self) -> None:
        """The client token joins as a client, listed nowhere."""
        master_side, node, _ = self.knock(self.hello_with(self.trust.token("client")))
        self.assertEqual(self.successResultOf(node.answer).type, "welcome")
        self.assertEqual((master_side.handler.role, master_side.handler.credential), ("client", "client"))
        self.assertEqual(list(self.master.registry), [])

    def assertRefused(self, hello: Any, text: str = AUTHENTICATION_FAILED) -> Any:
        master_side, node, pump = self.knock(hello)
        self.assertEqual(self.refusal(node), text)
        pump.flush()
        self.assertIsNotNone(master_side.lost, "the master kept the connection")
        self.assertNotIn(master_side.handler, list(self.master.registry))
        self.assertIsNone(master_side.handler.credential)
        return master_side

    def test_noToken(self) -> None:
        """A version 2 hello without credential or proof is refused and closed."""
        self.assertRefused(lambda transport: Hello(version=2, role="slave"))

    def test_wrongToken(self) -> None:
        """A token with the right CA but another secret is refused and closed."""
        forged = JoinToken(self.trust.fingerprint, "slave", new_secret())
        self.assertRefused(self.hello_with(forged))

    def test_plainHelloOverTls(self) -> None:
        """Version 1 (plain mode) is refused by a secure master, which names version 2."""
        master_side, node, _ = self.knock(lambda transport: {"version": 1, "uuid": None, "role": "slave"})
        failure = self.failureResultOf(node.answer, RemoteError)
        self.assertEqual(failure.value.reply["payload"]["supported"], [2])

    def test_slaveTokenAsClient(self) -> None:
        """A slave token cannot say it is a client."""
        self.assertRefused(self.hello_with(self.trust.token("slave"), role="client"))

    def test_clientTokenAsSlave(self) -> None:
        """A client token cannot say it is a slave."""
        self.assertRefused(self.hello_with(self.trust.token("client"), role="slave"))

    def test_readOnlyTokenAsSlave(self) -> None:
        """A read-only token cannot say it is a slave."""
        self.assertRefused(self.hello_with(self.trust.token("read-only"), role="slave"))

    def test_replayedProof(self) -> None:
        """A proof recorded on one connection fails on another (a replay, or a relay)."""
        recorded: list[Any] = []

        def record(transport: Any) -> Any:
            hello = hello_for(self.trust.token("slave"), "slave", transport)
            recorded.append(hello)
            return hello

        _, first, _ = self.knock(record)
        self.assertEqual(self.successResultOf(first.answer).type, "welcome")
        self.assertRefused(lambda transport: recorded[0])

    def test_messageBeforeHello(self) -> None:
        """Anything but a hello first is refused, and the connection closed."""
        master_side, node, pump = self.knock(None)
        answer = node.connection.request("info", "slave_details")
        pump.flush()
        failure = self.failureResultOf(answer, RemoteError)
        self.assertEqual(failure.value.reply["payload"]["error"], SAY_HELLO_FIRST)
        self.assertIsNotNone(master_side.lost)

    def test_unreadableSecrets(self) -> None:
        """A master that cannot read its secrets says so to the node, and logs it; nobody is let in."""
        directory = self.mktemp()
        shutil.copytree(self.trust.state_dir, directory)
        self.master.trust = trust = ClusterTrust.open(directory)
        token = trust.token("client")
        with open(trust.path(SECRETS), "w") as out:
            out.write("garbage")
        master_side, node, _ = self.knock(self.hello_with(token))
        failure = self.failureResultOf(node.answer, RemoteError)
        self.assertEqual(failure.value.reply["type"], "error")
        self.assertIn("the master cannot check tokens now", failure.value.reply["payload"]["error"])
        self.assertIsNone(master_side.handler.credential)
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_silentStrangerDropped(self) -> None:
        """
        A peer that completes TLS and says nothing is not pinged, and is
        dropped when its handshake deadline passes.
        """
        master_side, node, pump = self.knock(None)
        self.clock.advance(self.master.handshake_timeout - 0.1)
        pump.flush()
        self.assertEqual(node.connection.frames_in, 0)
        self.assertIsNone(master_side.lost)
        self.clock.advance(0.1)
        pump.flush()
        self.assertEqual(master_side.lost.cause, "no proven hello within 10 s")

    def test_readOnlyOnlyLooks(self) -> None:
        """A read-only client may ask, never submit or cancel."""
        _, node, pump = self.knock(self.hello_with(self.trust.token("read-only")))
        self.successResultOf(node.answer)
        for message, payload in [("submit", {"tasks": [{"name": "sleep"}]}), ("cancel", {"id": 1})]:
            answer = node.connection.request(message, payload)
            pump.flush()
            failure = self.failureResultOf(answer, RemoteError)
            self.assertEqual(failure.value.reply["payload"]["error"], "not served to a read-only")
        answer = node.connection.request("info", "uuid")
        pump.flush()
        self.assertEqual(self.successResultOf(answer).type, "uuid")

    def test_slaveMayNotLook(self) -> None:
        """A slave token asks only about the master itself, and submits nothing."""
        _, node, pump = self.knock(self.hello_with(self.trust.token("slave")))
        self.successResultOf(node.answer)
        for message, payload in [("info", "slave_details"), ("info", "status"),
                                 ("submit", {"tasks": [{"name": "sleep"}]})]:
            answer = node.connection.request(message, payload)
            pump.flush()
            failure = self.failureResultOf(answer, RemoteError)
            self.assertEqual(failure.value.reply["payload"]["error"], "not served to a slave")

    def test_rotation(self) -> None:
        """After a rotation the old token is refused and the new one joins."""
        directory = self.mktemp()
        shutil.copytree(self.trust.state_dir, directory)
        trust = ClusterTrust.open(directory)
        self.master.trust = trust
        old = trust.token("slave")
        ClusterTrust.open(directory).rotate()  # as 'picluster token --rotate' does, elsewhere
        self.assertRefused(self.hello_with(old))
        _, node, _ = self.knock(self.hello_with(trust.token("slave")))
        self.assertEqual(self.successResultOf(node.answer).type, "welcome")

    def test_impostorMaster(self) -> None:
        """A master with its own CA is refused by the node before it sends anything."""
        impostor = ClusterTrust.open(self.mktemp())
        impostor_master = MasterFactory(SlaveRegistry(), clock=self.clock, trust=impostor,
                                        computer_details=MASTER_FACTS, keepalive=5)
        slave = slave_factory(self.clock, token=self.trust.token("slave"))
        master_side, node_side, pump = tls_pair(impostor.server_options(), impostor_master, slave,
                                                PinnedMasterTLS(self.trust.fingerprint), self.clock)
        pump.flush()
        self.assertIsNotNone(node_side.lost)
        self.assertIn("not from the cluster's CA", node_side.lost.cause)
        self.assertEqual(node_side.frames_out, 0)
        self.assertIsNone(slave.uuid)
        self.assertEqual(master_side.frames_in, 0)

    def test_impostorShowingTheRealCa(self) -> None:
        """An impostor that sends the real (public) CA after its own certificate still fails."""
        ca_key, ca = pki.new_ca("impostor")
        key, leaf = pki.new_master_certificate(ca_key, ca)
        options = MasterTLS(key, leaf, self.trust.ca)
        impostor_master = MasterFactory(SlaveRegistry(), clock=self.clock, trust=self.trust,
                                        computer_details=MASTER_FACTS, keepalive=5)
        slave = slave_factory(self.clock, token=self.trust.token("slave"))
        _, node_side, pump = tls_pair(options, impostor_master, slave,
                                      PinnedMasterTLS(self.trust.fingerprint), self.clock)
        pump.flush()
        self.assertIsNotNone(node_side.lost)
        self.assertIn("does not verify", node_side.lost.cause)
        self.assertEqual(node_side.frames_out, 0)

    def test_verifyMasterWithoutChain(self) -> None:
        """A peer that shows no certificate at all is untrusted."""

        class NoChain:
            def getHandle(self) -> Any:
                class Handle:
                    def get_peer_cert_chain(self, as_cryptography: bool = False) -> None:
                        return None

                return Handle()

        self.assertRaises(UntrustedMaster, verify_master, NoChain(), self.trust.fingerprint)

    def test_plainPeerGetsNothing(self) -> None:
        """A plain-TCP peer's hello is never read as one: no frame back, and the connection closed."""
        server = TLSMemoryBIOFactory(self.trust.server_options(), False, self.master,
                                     clock=self.clock).buildProtocol(
            IPv4Address("TCP", "10.0.0.9", 5000))
        plain = PiClusterFactory(clock=self.clock, keepalive=5).buildProtocol(
            IPv4Address("TCP", "10.0.0.1", 12345))
        pump = iosim.connect(server, iosim.makeFakeServer(server), plain, iosim.makeFakeClient(plain),
                             clock=self.clock)
        plain.transport.write(frame({"type": "hello", "id": 1,
                                     "payload": {"version": 1, "uuid": None, "role": "client"}}))
        pump.flush()
        self.assertEqual(plain.frames_in, 0)
        self.assertEqual(list(self.master.registry), [])
        self.assertIsNone(server.wrappedProtocol, "the master kept the connection")


class ClientFactoryTests(TrustDirectory):
    """The client's factory pins the master as the slave's does."""

    def test_clientRefusesImpostor(self) -> None:
        clock = Clock()

        class Events:
            def __getattr__(self, name: str) -> Any:
                return lambda *args: None

        impostor = ClusterTrust.open(self.mktemp())
        master = MasterFactory(SlaveRegistry(), clock=clock, trust=impostor,
                               computer_details=MASTER_FACTS, keepalive=5)
        client = ClientFactory(MasterAddress("10.0.0.9", 5000), Events(), clock=clock,
                               token=self.trust.token("client"))
        _, node_side, pump = tls_pair(impostor.server_options(), master, client,
                                      PinnedMasterTLS(self.trust.fingerprint), clock)
        pump.flush()
        self.assertIn("not from the cluster's CA", node_side.lost.cause)
        self.assertEqual(node_side.frames_out, 0)
