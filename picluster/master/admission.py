"""
Who may open a connection to the master: caps on connections and strangers.

A connection costs the master a file descriptor and some memory before its
peer has said a word, and a TLS handshake costs it CPU; so the master counts
them and turns new ones away, at once and cheaply, when a cap is reached:

  - connections in all, below the process's file-descriptor limit, so that
    the web port, the task database and the log always have descriptors
    left, and the slaves already connected keep theirs;
  - strangers (connections whose hello has not yet proven a token) in all,
    and from any one host, so that a scan or a flood from one address
    cannot keep the others from joining.

Each stranger also has a deadline for its handshake
(L{picluster.wire.protocol.PiClusterProtocol.trusted}); this module only
counts.
"""

from __future__ import annotations

import resource

#: Connections a master accepts at once unless told otherwise.
DEFAULT_MAX_CONNECTIONS = 25_000

#: Strangers at once, in all and from one host, unless told otherwise.
DEFAULT_MAX_STRANGERS = 512
DEFAULT_MAX_STRANGERS_PER_HOST = 16

#: Seconds a stranger has to finish TLS and prove a token in its hello.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0

#: File descriptors kept back from slaves for everything else: the
#: listening ports, the web's clients, the database and its journal, logs.
RESERVED_DESCRIPTORS = 256


def raise_file_limit() -> int:
    """
    Raise this process's soft limit on open files to its hard limit (as a
    server should: the soft limit of 1,024 is for interactive programs), and
    return the soft limit in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def connection_cap(wanted: int, file_limit: int) -> int:
    """The connections a master may hold: C{wanted}, or fewer if descriptors are short."""
    return max(1, min(wanted, file_limit - RESERVED_DESCRIPTORS))


class Admission:
    """
    The counts behind the caps: open connections, and strangers by host.

    @ivar max_connections: Connections in all.
    @ivar max_strangers: Strangers in all; C{0} where there are none (a
        plain master, whose peers prove nothing).
    @ivar max_strangers_per_host: Strangers from one host.
    """

    def __init__(self, max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 max_strangers: int = DEFAULT_MAX_STRANGERS,
                 max_strangers_per_host: int = DEFAULT_MAX_STRANGERS_PER_HOST):
        self.max_connections = max_connections
        self.max_strangers = max_strangers
        self.max_strangers_per_host = max_strangers_per_host
        self.connections = 0
        self.strangers = 0
        self._strangers_by_host: dict[str, int] = {}

    def refusal(self, host: str, stranger: bool) -> str | None:
        """Why a new connection from C{host} must be turned away, or C{None}."""
        if self.connections >= self.max_connections:
            return f"at the cap of {self.max_connections} connections"
        if not stranger:
            return None
        if self.strangers >= self.max_strangers:
            return f"{self.strangers} handshakes already in progress"
        if self._strangers_by_host.get(host, 0) >= self.max_strangers_per_host:
            return f"{self.max_strangers_per_host} handshakes already in progress from {host}"
        return None

    def opened(self, host: str, stranger: bool) -> None:
        self.connections += 1
        if stranger:
            self.strangers += 1
            self._strangers_by_host[host] = self._strangers_by_host.get(host, 0) + 1

    def known(self, host: str) -> None:
        """A stranger from C{host} proved itself."""
        self.strangers -= 1
        left = self._strangers_by_host[host] - 1
        if left:
            self._strangers_by_host[host] = left
        else:
            del self._strangers_by_host[host]

    def closed(self, host: str, stranger: bool) -> None:
        self.connections -= 1
        if stranger:
            self.known(host)

    def strangers_from(self, host: str) -> int:
        return self._strangers_by_host.get(host, 0)
