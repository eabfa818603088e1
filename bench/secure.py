"""
What the benchmarks' own clients need to join a secure master as real nodes do.

A real master runs secure by default (TLS 1.3, a join token's proof in the
hello), so the simulated slaves and the round-trip client speak that too:
L{wrap} puts TLS pinned to the token's CA around their factory, and, once
the handshake is done, L{hello} gives the hello with its proof.  With no
token (C{--token-file} not given) they speak plain mode, to a master run
with C{--insecure}, or to the bare baselines.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec

from picluster.address import hello_for
from picluster.trust.channel import PinnedMasterTLS, TLSFactory, verify_master
from picluster.trust.token import JoinToken, read_token_file, secret_key


def token_from(path: str | None) -> JoinToken | None:
    return read_token_file(path) if path else None


def wrap(factory: Any, token: JoinToken | None) -> Any:
    """C{factory} over TLS pinned to C{token}'s CA; as it is without a token."""
    if token is None:
        return factory
    return TLSFactory(_pinned(token.fingerprint), True, factory)


@cache
def _pinned(fingerprint: str) -> PinnedMasterTLS:
    """
    One TLS context for all the simulated nodes of a process, as a real
    node has one: a context each would cost a herd of a thousand some
    hundreds of kilobytes, and its CPU, for nothing the master sees.
    """
    return PinnedMasterTLS(fingerprint)


def source_address(index: int, master_host: str) -> tuple[str, int] | None:
    """
    Where simulated slave C{index} connects from: its own loopback address
    (127.1.x.y) when the master is on loopback, as each Pi has its own
    address, so that the master's cap on handshakes from one host (16 by
    default) paces no herd; C{None} (the system's choice) otherwise.
    """
    if not master_host.startswith("127."):
        return None
    return (f"127.1.{index // 250 % 250}.{index % 250 + 1}", 0)


def hello(token: JoinToken | None, role: str, transport: Any, uuid: str | None = None,
          node_key: str | None = None) -> dict[str, Any]:
    """
    The hello a real node sends on C{transport}, as plain JSON values; with a
    token, only once the master's chain has been checked against it, and
    with the proof of C{node_key} when it takes its C{uuid} back.
    """
    if token is not None:
        verify_master(transport, token.fingerprint)
    key = secret_key(node_key) if node_key is not None else None
    made = hello_for(token, role, transport, uuid=uuid, node_key=key)
    return made if isinstance(made, dict) else msgspec.to_builtins(made)
