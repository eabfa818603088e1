"""
The identities of a secure cluster's slaves: which node owns which uuid.

A slave token lets a machine join; it does not say which node it is, since
every slave holds the same token.  So at a slave's first join the master
gives it a node key of its own, bound to its uuid, and keeps the pair in
C{nodes.json} in its state directory (mode 0600, written whole).  From then
on that uuid is claimed only with a proof of that key, bound to the TLS
channel as the token's proof is: nobody else can take a node's place, its
runs, or its row on the dashboard.

A machine holding a node's key and uuid is that node, and so are two
machines cloned from one SD card.  Each new connection of a node displaces
its older one (a rebooted Pi's old connection may linger half-open), so
two clones would displace each other forever; L{NodeBook.conflicted}
notices a uuid displaced again and again, and the master then refuses the
newcomer instead, and shows the node as cloned until the conflict stops.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from twisted.logger import Logger

from picluster.trust.cluster import TrustError, write_private
from picluster.trust.token import TokenError, check_secret, new_secret, secret_key

log = Logger()

#: Seconds within which a new node's key is written to disk.
SAVE_DELAY = 1.0

#: The file, in the master's state directory.
NODES_FILE = "nodes.json"
_FORMAT = "picluster-nodes-1"

#: Displacements of one uuid within L{CLONE_WINDOW} seconds that mean two
#: machines hold it.  A rebooted node displaces its old connection once.
CLONE_DISPLACEMENTS = 3
CLONE_WINDOW = 120.0
#: Seconds without a conflict after which a node is no longer shown as cloned.
CLONE_FORGIVEN_AFTER = 600.0


@dataclass
class _Conflicts:
    displacements: list[float] = field(default_factory=list)
    cloned_at: float | None = None


class NodeBook:
    """
    Node uuid to its key, kept on disk; and the uuids in conflict.

    @ivar path: The C{nodes.json} file.
    """

    def __init__(self, path: str, clock: Any):
        self.path = path
        self.clock = clock
        self._keys: dict[str, str] = {}
        self._conflicts: dict[str, _Conflicts] = {}
        self._save_call: Any = None
        if os.path.exists(path):
            self._keys = _read(path)

    def __len__(self) -> int:
        return len(self._keys)

    def key_of(self, uuid: str) -> bytes | None:
        """The key of the node that owns C{uuid}, or C{None} if none does."""
        secret = self._keys.get(uuid)
        return None if secret is None else secret_key(secret)

    def issue(self, uuid: str) -> str:
        """
        Bind C{uuid} to a new node key; returns the key, as the welcome
        carries it.  The file is written within L{SAVE_DELAY}, once for
        every node that joined meanwhile (a whole cluster joining a new
        master would otherwise rewrite it once per node).  A key lost to a
        crash before that costs nothing: its uuid is owned by nobody, and the
        node is given a new key when it next joins.
        """
        secret = new_secret()
        self._keys[uuid] = secret
        if self._save_call is None:
            self._save_call = self.clock.callLater(SAVE_DELAY, self.flush)
        return secret

    def flush(self) -> None:
        """Write every node's key now (as the master stops, or when it is time)."""
        if self._save_call is not None and self._save_call.active():
            self._save_call.cancel()
        self._save_call = None
        content = json.dumps({"format": _FORMAT, "nodes": self._keys}, indent=1) + "\n"
        try:
            write_private(self.path, content.encode("utf-8"))
        except TrustError as e:
            log.error("Could not keep the nodes' keys: {problem}; nodes that joined lately get"
                      " new keys when they next join", problem=str(e))

    # -- clones ----------------------------------------------------------------

    def displaced(self, uuid: str, now: float) -> None:
        """A new connection of C{uuid} displaced a live one."""
        conflicts = self._conflicts.setdefault(uuid, _Conflicts())
        conflicts.displacements = [at for at in conflicts.displacements if now - at < CLONE_WINDOW]
        conflicts.displacements.append(now)
        if len(conflicts.displacements) >= CLONE_DISPLACEMENTS:
            conflicts.cloned_at = now

    def conflicted(self, uuid: str, now: float) -> bool:
        """Whether two machines hold C{uuid} as far as the master can tell now."""
        conflicts = self._conflicts.get(uuid)
        if conflicts is None or conflicts.cloned_at is None:
            return False
        if now - conflicts.cloned_at >= CLONE_FORGIVEN_AFTER:
            del self._conflicts[uuid]
            return False
        return True

    def refused_clone(self, uuid: str, now: float) -> None:
        """A clone was refused: the conflict goes on."""
        conflicts = self._conflicts.setdefault(uuid, _Conflicts())
        conflicts.cloned_at = now


def _read(path: str) -> dict[str, str]:
    try:
        with open(path, encoding="utf-8") as source:
            content: Any = json.load(source)
    except (OSError, ValueError) as e:
        raise TrustError(f"cannot read {path}: {e}") from None
    nodes = content.get("nodes") if isinstance(content, dict) else None
    if not isinstance(nodes, dict) or content.get("format") != _FORMAT or not all(
        isinstance(uuid, str) and isinstance(secret, str) for uuid, secret in nodes.items()
    ):
        raise TrustError(f"{path} is not a {_FORMAT} file")
    try:
        for secret in nodes.values():
            # A damaged key must not become an empty one, which anyone could use.
            check_secret(secret)
    except TokenError as e:
        raise TrustError(f"{path} holds a damaged node key: {e}") from None
    return dict(nodes)
