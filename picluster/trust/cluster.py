"""
A master's trust material, in its state directory.

On the master's first start L{ClusterTrust.open} creates, next to
C{picluster.db}:

  - C{cluster-ca.pem}, C{cluster-ca.key}: the cluster CA;
  - C{master.pem}, C{master.key}: the master's certificate and key;
  - C{tokens.json}: the secret of each credential (slave, client, read-only).

Every file is mode 0600, written whole (a temporary file, then a rename),
so a crash leaves either the old file or the new.  The join tokens are
printed from these files by C{picluster token}; C{picluster token --rotate}
writes new secrets, which a running master reads at the next hello (it
looks at the file's modification time), so a node holding an old token is
refused from then on.
"""

from __future__ import annotations

import json
import os
import secrets as random_text
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from picluster.trust import pki
from picluster.trust.token import (
    CREDENTIALS,
    JoinToken,
    TokenError,
    check_secret,
    new_secret,
    secret_key,
)

CA_CERTIFICATE = "cluster-ca.pem"
CA_KEY = "cluster-ca.key"
MASTER_CERTIFICATE = "master.pem"
MASTER_KEY = "master.key"
SECRETS = "tokens.json"

#: Where a state directory's secrets file says what it is.
_FORMAT = "picluster-tokens-1"


class TrustError(Exception):
    """The state directory's trust material cannot be read or written."""


def write_private(path: str, content: bytes) -> None:
    """
    Write C{content} to C{path}, mode 0600, whole or not at all.  A file
    replaced keeps its owner: root rotating the tokens of a master that
    runs as its own user must not leave it a file it cannot read.
    """
    temporary = f"{path}.{random_text.token_hex(4)}.tmp"
    try:
        owner = os.stat(path) if os.path.exists(path) else None
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as out:
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
        if owner is not None and (owner.st_uid, owner.st_gid) != (os.getuid(), os.getgid()):
            os.chown(temporary, owner.st_uid, owner.st_gid)
        os.replace(temporary, path)
    except OSError as e:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise TrustError(f"cannot write {path}: {e.strerror or e}") from None


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as source:
            return source.read()
    except OSError as e:
        raise TrustError(f"cannot read {path}: {e.strerror or e}") from None


class ClusterTrust:
    """
    The cluster CA, the master's certificate and the credentials' secrets.

    @ivar state_dir: The directory holding them.
    @ivar ca: The CA certificate; its fingerprint is in every token.
    """

    def __init__(self, state_dir: str, ca: x509.Certificate):
        self.state_dir = state_dir
        self.ca = ca
        self.fingerprint = pki.fingerprint(ca)
        self._secrets: dict[str, str] = {}
        self._secrets_stamp: tuple[int, int] | None = None
        self._load_secrets()

    def path(self, name: str) -> str:
        return os.path.join(self.state_dir, name)

    @classmethod
    def open(cls, state_dir: str, *, create: bool = True) -> ClusterTrust:
        """
        The trust material in C{state_dir}; with C{create} (the master's
        start), whatever is missing is made there first.

        @raise TrustError: a file cannot be read or written, or is not what it should be.
        """
        if create:
            _create_missing(state_dir)
        elif not os.path.exists(os.path.join(state_dir, CA_CERTIFICATE)):
            raise TrustError(
                f"no cluster in {os.path.abspath(state_dir)}: start the master there first"
                " (or name its --state-dir)"
            )
        return cls(state_dir, _certificate(os.path.join(state_dir, CA_CERTIFICATE)))

    # -- secrets ---------------------------------------------------------------

    def _load_secrets(self) -> None:
        location = self.path(SECRETS)
        try:
            stat = os.stat(location)
        except OSError as e:
            raise TrustError(f"cannot read {location}: {e.strerror or e}") from None
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._secrets_stamp:
            return
        try:
            content = json.loads(_read(location))
        except ValueError as e:
            raise TrustError(f"{location} is not a tokens file: {e}") from None
        found = content.get("secrets") if isinstance(content, dict) else None
        if not isinstance(found, dict) or content.get("format") != _FORMAT or not all(
            isinstance(found.get(c), str) for c in CREDENTIALS
        ):
            raise TrustError(f"{location} is not a {_FORMAT} file")
        try:
            for credential in CREDENTIALS:
                check_secret(found[credential])
        except TokenError as e:
            raise TrustError(f"{location} holds a damaged secret: {e}") from None
        self._secrets = {credential: found[credential] for credential in CREDENTIALS}
        self._secrets_stamp = stamp

    def key_of(self, credential: str) -> bytes | None:
        """
        The key a C{credential}'s proof is made with, as the secrets file says
        now; C{None} for an unknown credential.
        """
        if credential not in CREDENTIALS:
            return None
        self._load_secrets()
        return secret_key(self._secrets[credential])

    def token(self, credential: str) -> JoinToken:
        """The join token of C{credential}."""
        self._load_secrets()
        return JoinToken(self.fingerprint, credential, self._secrets[credential])

    def rotate(self) -> None:
        """New secrets for every credential: every token given out so far stops working."""
        write_secrets(self.path(SECRETS), {credential: new_secret() for credential in CREDENTIALS})
        self._load_secrets()

    # -- TLS -------------------------------------------------------------------

    def server_options(self) -> Any:
        """The master's TLS: its certificate, the CA after it, TLS 1.3 only."""
        from picluster.trust.channel import MasterTLS

        return MasterTLS(_key(self.path(MASTER_KEY)), _certificate(self.path(MASTER_CERTIFICATE)),
                         self.ca)


def _create_missing(state_dir: str) -> None:
    """Make whatever trust material C{state_dir} lacks: a new CA voids the rest."""
    try:
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
    except OSError as e:
        raise TrustError(f"cannot create the state directory {state_dir}: {e.strerror or e}") from None
    path = lambda name: os.path.join(state_dir, name)  # noqa: E731
    if not os.path.exists(path(CA_CERTIFICATE)):
        ca_key, ca = pki.new_ca(random_text.token_hex(4))
        # The key first: a CA certificate without its key could sign nothing.
        write_private(path(CA_KEY), pki.key_pem(ca_key))
        write_private(path(CA_CERTIFICATE), pki.certificate_pem(ca))
        for stale in (MASTER_CERTIFICATE, MASTER_KEY, SECRETS):
            if os.path.exists(path(stale)):
                os.unlink(path(stale))
    if not os.path.exists(path(MASTER_CERTIFICATE)):
        ca = _certificate(path(CA_CERTIFICATE))
        key, certificate = pki.new_master_certificate(_key(path(CA_KEY)), ca)
        write_private(path(MASTER_KEY), pki.key_pem(key))
        write_private(path(MASTER_CERTIFICATE), pki.certificate_pem(certificate))
    if not os.path.exists(path(SECRETS)):
        write_secrets(path(SECRETS), {credential: new_secret() for credential in CREDENTIALS})


def write_secrets(location: str, secrets: dict[str, str]) -> None:
    content = json.dumps({"format": _FORMAT, "secrets": secrets}, indent=2) + "\n"
    write_private(location, content.encode("utf-8"))


def _certificate(location: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(_read(location))
    except ValueError as e:
        raise TrustError(f"{location} is not a PEM certificate: {e}") from None


def _key(location: str) -> pki.PrivateKey:
    try:
        key = serialization.load_pem_private_key(_read(location), password=None)
    except (ValueError, TypeError) as e:
        raise TrustError(f"{location} is not an unencrypted PEM private key: {e}") from None
    return key  # type: ignore[return-value]
