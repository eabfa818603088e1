"""
The TLS layer of a secure cluster, and the proof a node sends in its hello.

B{The master, pinned.}  A node knows the cluster CA only by the fingerprint
in its token, so it cannot hand OpenSSL a trust root before the handshake.
As k3s does with its token's CA hash, the node takes the master's chain as
offered, then, once the handshake is done and before it sends a single
byte, checks it with pyca's X.509 verifier against the one certificate of
the chain whose fingerprint the token pins (L{verify_master}): a chain that
does not end in the cluster's CA, or whose leaf does not name
C{picluster-master}, closes the connection.

B{The node, proven.}  In its hello the node sends
C{proof = HMAC-SHA256(secret, label || credential || binding)}, where
C{binding} is the TLS exporter (RFC 8446 section 7.5) of this very
connection.  The master computes the same from its side.  The secret never
crosses the wire; a proof recorded from one connection is worthless on
another (a replay); and a man in the middle who relays a node's hello to
the master has a different TLS session on each side, so the proof fails
there too (a relay).  TLS 1.3 only, where the exporter is bound to the
whole handshake.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from zope.interface import implementer

from picluster import immediate
from picluster.trust.pki import MASTER_NAME, fingerprint

log = Logger()

#: The exporter label (RFC 5705 / RFC 8446): names what the secret is for.
EXPORTER_LABEL = b"EXPORTER-picluster-hello"
#: Bytes of exporter output bound into a proof.
BINDING_BYTES = 32
#: What a proof's HMAC covers before the credential and the binding.
PROOF_CONTEXT = b"picluster hello proof v2\x00"
#: What a node proof's HMAC covers before the uuid and the binding.
NODE_PROOF_CONTEXT = b"picluster node proof v1\x00"


class UntrustedMaster(Exception):
    """The master's certificate chain is not the one the token pins."""


def channel_binding(transport: Any) -> bytes | None:
    """
    The TLS exporter value of the connection under C{transport}, or C{None}
    on a plain connection.
    """
    handle = getattr(transport, "getHandle", None)
    connection = handle() if handle is not None else None
    if not isinstance(connection, SSL.Connection):
        return None
    return connection.export_keying_material(EXPORTER_LABEL, BINDING_BYTES)


def _keyed_proof(key: bytes, context: bytes, name: str, binding: bytes) -> str:
    """Hex HMAC-SHA256 under C{key} of C{context}, C{name} and the channel C{binding}."""
    return hmac.new(key, context + name.encode("ascii") + b"\x00" + binding, hashlib.sha256).hexdigest()


def proof(key: bytes, credential: str, binding: bytes) -> str:
    """The hello proof of holding C{key} for C{credential} on the channel C{binding}."""
    return _keyed_proof(key, PROOF_CONTEXT, credential, binding)


def proof_holds(key: bytes, credential: str, binding: bytes, offered: str) -> bool:
    """Whether C{offered} is the proof for C{key}, in constant time."""
    return _same(proof(key, credential, binding), offered)


def node_proof(key: bytes, uuid: str, binding: bytes) -> str:
    """The proof that a slave holds the node key of C{uuid}, on the channel C{binding}."""
    return _keyed_proof(key, NODE_PROOF_CONTEXT, uuid, binding)


def node_proof_holds(key: bytes, uuid: str, binding: bytes, offered: str) -> bool:
    """Whether C{offered} is the node proof of C{uuid} for C{key}, in constant time."""
    return _same(node_proof(key, uuid, binding), offered)


def _same(expected: str, offered: str) -> bool:
    """C{offered} is C{expected}, compared in constant time; any text a peer sends is safe here."""
    return hmac.compare_digest(expected.encode("ascii"), offered.encode("utf-8", "surrogatepass"))


def verify_master(transport: Any, pinned: str) -> None:
    """
    Check the chain the master presented on C{transport} against the CA
    fingerprint C{pinned}.

    @raise UntrustedMaster: saying why, for the log.
    """
    connection = transport.getHandle()
    chain = connection.get_peer_cert_chain(as_cryptography=True) or []
    if not chain:
        raise UntrustedMaster("the master presented no certificate")
    roots = [certificate for certificate in chain if fingerprint(certificate) == pinned]
    if not roots:
        raise UntrustedMaster(
            f"the master's certificate is not from the cluster's CA (the token pins"
            f" {pinned[:16]}..., the master offers {fingerprint(chain[-1])[:16]}...):"
            " an impostor, or a master whose state directory was replaced"
        )
    verifier = PolicyBuilder().store(Store(roots)).build_server_verifier(x509.DNSName(MASTER_NAME))
    try:
        verifier.verify(chain[0], chain[1:])
    except VerificationError as e:
        raise UntrustedMaster(f"the master's certificate does not verify: {e}") from None


@implementer(IOpenSSLClientConnectionCreator)
class PinnedMasterTLS:
    """
    TLS for a node dialling a master it knows by its CA's fingerprint.

    OpenSSL is told to take the chain as offered (there is no trust root to
    give it yet); L{verify_master} judges the chain once the handshake is
    done, before the node sends anything.
    """

    def __init__(self, pinned: str):
        self.pinned = pinned
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.set_min_proto_version(SSL.TLS1_3_VERSION)
        context.set_mode(SSL.MODE_RELEASE_BUFFERS)
        context.set_verify(SSL.VERIFY_NONE)
        self._context = context

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        connection.set_tlsext_host_name(MASTER_NAME.encode("ascii"))
        connection.set_connect_state()
        return connection


@implementer(IOpenSSLServerConnectionCreator)
class MasterTLS:
    """
    The master's side: its certificate with the CA after it (a node pins
    the CA, so it must be shown), TLS 1.3 only, no client certificate asked.
    """

    def __init__(self, key: Any, certificate: x509.Certificate, ca: x509.Certificate):
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        context.set_min_proto_version(SSL.TLS1_3_VERSION)
        # A master holds thousands of mostly idle connections: OpenSSL's
        # buffers (some 34 KiB each) go back while a connection is idle.
        context.set_mode(SSL.MODE_RELEASE_BUFFERS)
        context.use_privatekey(key)
        context.use_certificate(certificate)
        context.add_extra_chain_cert(ca)
        context.check_privatekey()
        self._context = context

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        return connection


#: Bytes handed to OpenSSL's receive buffer at a time: a memory BIO keeps
#: the largest size it was ever given, for as long as the connection lasts.
RECEIVE_CHUNK = 4096

#: Bytes taken from OpenSSL's send buffer at a time, as Twisted takes them.
SEND_CHUNK = 2**15

#: Bytes a connection gathers before it hands them to OpenSSL anyway, as
#: Twisted's own TLS transport does (its C{_AggregateSmallWrites}).
GATHER_BYTES = 64_000


class BoundedTLSTransport(TLSMemoryBIOProtocol):
    """
    Twisted's TLS transport, fed at most L{RECEIVE_CHUNK} bytes at a time,
    whose small writes are gathered into one TLS record.

    B{Reads in pieces.}  A read from the socket may bring 64 KiB at once (a
    slave's burst of vitals after it joins), and OpenSSL's memory BIO keeps
    a buffer that size afterwards, idle or not: some 80 KiB a connection on
    a master of thousands of slaves (the scale benchmark).  Fed in pieces,
    it never holds more than a piece and a part-read record.

    B{Writes gathered.}  Encrypting costs per record, so small writes wait
    to leave together, as in Twisted's C{BufferingTLSTransport}; but where
    that schedules a reactor call per connection with something to send,
    here the answers to a read leave at the read's end (waiting for the
    reactor's next turn would gain nothing), and what is written outside a
    read (a keepalive round's pings, tasks handed out) waits for one call
    of the factory's that sends for every connection
    (L{TLSFactory.send_soon}).  An idle master answering thousands of
    pings makes no timer for them at all.
    """

    factory: TLSFactory

    #: What the protocol wrote that OpenSSL has not yet been given, or C{None}.
    _gathered: list[bytes] | None = None
    _gathered_bytes = 0
    #: Whether a read is being handled: its end sends what it gathered.
    _reading = False

    def write(self, data: bytes) -> None:
        if not isinstance(data, bytes):
            if isinstance(data, str):
                raise TypeError("Must write bytes")
            data = bytes(data)
        gathered = self._gathered
        if gathered is None:
            if self.disconnecting and self._producer is None:
                return
            self._gathered = gathered = []
            if not self._reading:
                self.factory.send_soon(self)
        gathered.append(data)
        self._gathered_bytes += len(data)
        if self._gathered_bytes > GATHER_BYTES:
            self.send_gathered()

    def writeSequence(self, sequence: Any) -> None:
        self.write(b"".join(sequence))

    def send_gathered(self) -> None:
        """Hand what was gathered to OpenSSL, and what it makes to the socket."""
        gathered = self._gathered
        if gathered is None:
            return
        self._gathered = None
        self._gathered_bytes = 0
        TLSMemoryBIOProtocol.write(self, gathered[0] if len(gathered) == 1 else b"".join(gathered))

    def loseConnection(self) -> None:
        self.send_gathered()
        super().loseConnection()

    def abortConnection(self) -> None:
        self._gathered = None
        super().abortConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self._gathered = None
        super().connectionLost(reason)

    def _flushSendBIO(self) -> None:
        # What OpenSSL has to send goes to a plain TCP socket at once when
        # nothing waits before it (L{picluster.immediate}), rather than on
        # the reactor's next turn.
        try:
            data = self._tlsConnection.bio_read(SEND_CHUNK)
        except SSL.WantReadError:
            return
        transport = self.transport
        assert transport is not None  # OpenSSL has bytes to send only on a connection made
        if immediate.writes_directly(transport):
            immediate.write(transport, data)
        else:
            transport.write(data)

    def dataReceived(self, data: bytes) -> None:
        self._reading = True
        try:
            if len(data) <= RECEIVE_CHUNK:
                super().dataReceived(data)
            else:
                view = memoryview(data)
                for start in range(0, len(data), RECEIVE_CHUNK):
                    if self._lostTLSConnection:
                        break
                    super().dataReceived(bytes(view[start:start + RECEIVE_CHUNK]))
        finally:
            self._reading = False
        # What the protocol wrote while handling this read (its answers)
        # leaves now, in one record.
        self.send_gathered()


class TLSFactory(TLSMemoryBIOFactory):
    """
    Twisted's TLS around a picluster factory, on a L{BoundedTLSTransport};
    it sends, once a reactor turn, what its connections wrote outside a read.
    """

    protocol = BoundedTLSTransport

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._sending: dict[BoundedTLSTransport, None] = {}
        self._send_call: Any = None

    def buildProtocol(self, addr: Any) -> BoundedTLSTransport | None:  # type: ignore[override]
        # The wrapped factory may turn a connection away (its caps): then
        # there is nothing to wrap, and the connection is closed at once.
        # (IProtocolFactory allows None; Twisted types a WrappingFactory's as never None.)
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        return self.protocol(self, wrapped)

    def send_soon(self, transport: BoundedTLSTransport) -> None:
        """Send what C{transport} gathers on the reactor's next turn, with every other's."""
        self._sending[transport] = None
        if self._send_call is None:
            self._send_call = self._clock.callLater(0, self._send_all)

    def _send_all(self) -> None:
        self._send_call = None
        sending, self._sending = self._sending, {}
        for transport in sending:
            try:
                transport.send_gathered()
            except Exception:
                # One connection's trouble is its own: the rest still send.
                log.failure("Sending on {peer} failed", peer=transport.getPeer())
