"""
A slave's identity in its cluster, kept across restarts.

A secure master gives a slave, at its first join, a uuid and a node key of
its own (L{picluster.master.nodes}).  The slave keeps both in C{node.json}
in its C{--state-dir} (mode 0600, written whole), so that a rebooted Pi
comes back as the same node: the same row on the dashboard, the runs it
held.  The identity belongs to one cluster: the file names the CA of the
token it was given with, and a token of another cluster starts afresh.

One slave per state directory: a second one started on the same
directory would present the same identity, and the master would take the
two for a cloned SD card.  So the slave holds a lock (C{node.lock}) while it
runs, and a second one refuses to start.  To give a cloned card's copy an
identity of its own, stop its slave, delete its C{node.json}, and start it.
"""

from __future__ import annotations

import fcntl
import json
import os
from typing import IO, Any

from picluster.trust.cluster import TrustError, write_private
from picluster.trust.token import TokenError, check_secret, secret_key

IDENTITY_FILE = "node.json"
LOCK_FILE = "node.lock"
_FORMAT = "picluster-node-1"


class IdentityError(Exception):
    """The state directory cannot hold this slave's identity, saying why."""


class NodeIdentity:
    """
    The uuid and node key of this slave, and where they are kept.

    @ivar uuid: The node's uuid, or C{None} before its first join.
    @ivar key: The node key's text, or C{None} before its first join.
    """

    def __init__(self, state_dir: str, fingerprint: str, lock: IO[Any] | None = None):
        self.state_dir = state_dir
        self.fingerprint = fingerprint
        self.uuid: str | None = None
        self.key: str | None = None
        self._lock = lock

    @property
    def path(self) -> str:
        return os.path.join(self.state_dir, IDENTITY_FILE)

    @property
    def key_bytes(self) -> bytes | None:
        return None if self.key is None else secret_key(self.key)

    @classmethod
    def open(cls, state_dir: str, fingerprint: str) -> NodeIdentity:
        """
        Lock C{state_dir} for this slave and read the identity it holds for
        the cluster whose CA has C{fingerprint}.

        @raise IdentityError: the directory cannot be used, or another slave holds it.
        """
        try:
            os.makedirs(state_dir, mode=0o700, exist_ok=True)
            lock = open(os.path.join(state_dir, LOCK_FILE), "a")  # noqa: SIM115 - held while running
        except OSError as e:
            raise IdentityError(f"cannot use the state directory {state_dir}: {e.strerror or e}") from None
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            raise IdentityError(
                f"another slave runs on the state directory {os.path.abspath(state_dir)}: give each"
                " slave its own --state-dir (two slaves with one identity look like a cloned SD card)"
            ) from None
        identity = cls(state_dir, fingerprint, lock)
        try:
            identity._load()
        except IdentityError:
            identity.close()
            raise
        return identity

    def _load(self) -> None:
        if not os.path.exists(self.path):
            return
        try:
            with open(self.path, encoding="utf-8") as source:
                content: Any = json.load(source)
            if content.get("format") != _FORMAT:
                raise ValueError(f"not a {_FORMAT} file")
            uuid, key, cluster = content["uuid"], content["key"], content["cluster"]
            check_secret(key)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, TokenError) as e:
            raise IdentityError(
                f"cannot read this node's identity in {self.path} ({e}): delete the file to"
                " join as a new node"
            ) from None
        if cluster == self.fingerprint:
            self.uuid, self.key = uuid, key

    def save(self, uuid: str, key: str) -> None:
        """
        Keep the identity a master just gave.

        @raise IdentityError: the key is not a secret (kept, it would stop the
            slave's next start), or it could not be written (the node joins, for now).
        """
        try:
            check_secret(key)
        except TokenError as e:
            raise IdentityError(f"the master's node key is malformed: {e}") from None
        content = {"format": _FORMAT, "uuid": uuid, "key": key, "cluster": self.fingerprint}
        try:
            write_private(self.path, (json.dumps(content, indent=1) + "\n").encode("utf-8"))
        except TrustError as e:
            raise IdentityError(str(e)) from None
        self.uuid, self.key = uuid, key

    def close(self) -> None:
        """Let another slave use the directory."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None
