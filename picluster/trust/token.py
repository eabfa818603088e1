"""
Join tokens: one string that lets a node join a cluster, as k3s's K10 tokens do.

A token reads C{PIC1:<fingerprint>:<credential>:<secret>}:

  - C{fingerprint}: the SHA-256 of the cluster CA's certificate (DER), 64
    hexadecimal digits.  The node accepts only a master whose certificate
    that CA signed: no CA file to copy.
  - C{credential}: C{slave}, C{client} or C{read-only}; what the holder may
    be and do.
  - C{secret}: 43 characters of URL-safe base64 (32 random bytes).  It is
    never sent: the node proves it holds it (L{picluster.trust.channel}).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass

#: What a token starts with: the format's name and version.
PREFIX = "PIC1"

#: The credentials a master issues, each with its token.
SLAVE, CLIENT, READ_ONLY = "slave", "client", "read-only"
CREDENTIALS = (SLAVE, CLIENT, READ_ONLY)

#: The role each credential may say in its hello.
ROLE_OF = {SLAVE: "slave", CLIENT: "client", READ_ONLY: "client"}

#: The environment variable where the picluster command and the Python
#: client find a token they are not given.
TOKEN_ENV = "PICLUSTER_TOKEN"

#: Random bytes in a secret.
SECRET_BYTES = 32

_FINGERPRINT = re.compile(r"[0-9a-f]{64}")
_SECRET = re.compile(r"[A-Za-z0-9_-]{43}")


class TokenError(ValueError):
    """A token that cannot be read, with what is wrong with it."""


def new_secret() -> str:
    """A fresh secret, as a token carries it."""
    return base64.urlsafe_b64encode(os.urandom(SECRET_BYTES)).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class JoinToken:
    """The parts of a join token; C{str()} gives the token back."""

    fingerprint: str
    credential: str
    secret: str

    def __post_init__(self) -> None:
        if not _FINGERPRINT.fullmatch(self.fingerprint):
            raise TokenError("the CA fingerprint must be 64 lowercase hexadecimal digits")
        if self.credential not in CREDENTIALS:
            raise TokenError(
                f"unknown credential {self.credential!r} (known: {', '.join(CREDENTIALS)})"
            )
        check_secret(self.secret)

    def __str__(self) -> str:
        return f"{PREFIX}:{self.fingerprint}:{self.credential}:{self.secret}"

    def __repr__(self) -> str:
        # Never the secret: tokens end up in tracebacks and log lines.
        return f"JoinToken({self.fingerprint[:12]}..., {self.credential})"

    @property
    def role(self) -> str:
        """The role this token's holder says in its hello."""
        return ROLE_OF[self.credential]

    @property
    def key(self) -> bytes:
        """The secret as the bytes a proof is keyed with."""
        return secret_key(self.secret)


def check_secret(secret: str) -> str:
    """
    C{secret}, if it is one as tokens write them.

    @raise TokenError: it is not.
    """
    if not isinstance(secret, str) or not _SECRET.fullmatch(secret):
        raise TokenError("the secret must be 43 characters of URL-safe base64")
    return secret


def secret_key(secret: str) -> bytes:
    """The bytes of a secret as a token writes it."""
    try:
        return base64.urlsafe_b64decode(secret + "=")
    except (binascii.Error, ValueError) as e:
        raise TokenError(f"the secret is not URL-safe base64: {e}") from None


def parse_token(text: str) -> JoinToken:
    """
    Read a join token.

    @raise TokenError: saying what is wrong with it (never quoting the secret).
    """
    parts = text.strip().split(":")
    if len(parts) != 4 or parts[0] != PREFIX:
        raise TokenError(
            f"a join token reads {PREFIX}:<fingerprint>:<credential>:<secret>;"
            " print one with 'picluster token' on the master"
        )
    return JoinToken(parts[1].lower(), parts[2], parts[3])


def read_token_file(path: str) -> JoinToken:
    """
    The token in the file at C{path} (its first non-empty line).

    @raise TokenError: the file cannot be read, or holds no valid token.
    """
    try:
        with open(path, encoding="utf-8") as source:
            text = source.read()
    except OSError as e:
        raise TokenError(f"cannot read the token file {path}: {e.strerror or e}") from None
    for line in text.splitlines():
        if line.strip():
            return parse_token(line)
    raise TokenError(f"the token file {path} is empty")
