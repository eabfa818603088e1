"""
The cluster's certificates: a private CA, and the master's certificate it signs.

The CA is pinned by its fingerprint (in every join token), never looked up
in the system's store, so these certificates live by other rules than a web
server's:

  - They never expire (RFC 5280's 9999-12-31 "no expiry" date) and are valid
    from 2000: a Raspberry Pi has no real-time clock, and one that boots
    without a network believes it is some day in the past.  What a lost
    token would grant is withdrawn by rotating the secrets, not by waiting
    for a date.
  - The master's certificate names C{picluster-master}, whatever the
    address a node dials: the name says "the master of the cluster this CA
    belongs to", and only the master holds the CA's key.

Keys are ECDSA P-256: cheap for a Pi's handshakes, and supported everywhere.
"""

from __future__ import annotations

import datetime
import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: The name in the master's certificate, which nodes check.
MASTER_NAME = "picluster-master"

_VALID_FROM = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
_NO_EXPIRY = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)

PrivateKey = ec.EllipticCurvePrivateKey


def fingerprint(certificate: x509.Certificate) -> str:
    """The SHA-256 of a certificate's DER, as 64 lowercase hex digits (what tokens carry)."""
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()


def new_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _builder(subject: x509.Name, issuer: x509.Name, key: PrivateKey) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_VALID_FROM)
        .not_valid_after(_NO_EXPIRY)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


_KEY_USAGES = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
               "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")


def _key_usage(*allowed: str) -> x509.KeyUsage:
    """A key usage extension allowing only C{allowed}."""
    return x509.KeyUsage(**{usage: usage in allowed for usage in _KEY_USAGES})


def new_ca(cluster: str) -> tuple[PrivateKey, x509.Certificate]:
    """A fresh cluster CA: its key, and its self-signed certificate."""
    key = new_key()
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "picluster"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"picluster CA {cluster}"),
    ])
    certificate = (
        _builder(name, name, key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage("key_cert_sign", "crl_sign"), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, certificate


def new_master_certificate(
    ca_key: PrivateKey, ca: x509.Certificate
) -> tuple[PrivateKey, x509.Certificate]:
    """A fresh key for the master, and its certificate signed by the cluster CA."""
    key = new_key()
    certificate = (
        _builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, MASTER_NAME)]), ca.subject, key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage("digital_signature"), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(MASTER_NAME)]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, certificate


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def certificate_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)
