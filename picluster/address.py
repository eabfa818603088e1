"""
Where a slave or a client finds its master, and how it says hello there.

C{--master} takes a client endpoint description, C{tcp:host=H:port=P} (or
C{tcp:H:P}), or a plain C{H:P} / C{[v6]:P}, and turns it into the arguments
of the reconnecting factory's C{connectTCP}; L{dial} adds TLS, pinned to the
token's CA, whenever there is a token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from picluster.trust.channel import PinnedMasterTLS, TLSFactory, channel_binding, node_proof, proof
from picluster.trust.token import JoinToken
from picluster.wire.messages import PLAIN_VERSION, PROTOCOL_VERSION, Hello

DEFAULT_CONNECT_TIMEOUT = 30.0


@dataclass(frozen=True)
class MasterAddress:
    """The master's host, port, and how long a connection attempt may take."""

    host: str
    port: int
    timeout: float = DEFAULT_CONNECT_TIMEOUT

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def _split_escaped(text: str) -> list[str]:
    """Split on colons, honouring the backslash escapes of endpoint strings."""
    parts, current, chars = [], [], iter(text)
    for char in chars:
        if char == "\\":
            current.append(next(chars, ""))
        elif char == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise ValueError(f"port must be a number, not {text!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"port must be between 1 and 65535, not {port}")
    return port


def parse_master(description: str) -> MasterAddress:
    """
    Parse a C{--master} value.

    @raise ValueError: saying what is wrong with it.
    """
    description = description.strip()
    if not description:
        raise ValueError("the master's address is empty")
    kind, _, rest = description.partition(":")
    if kind.lower() == "tcp" and rest:
        return _parse_tcp(rest)
    if kind.lower() in ("ssl", "tls"):
        raise ValueError(
            f"{kind}: is not needed: the master is reached over TLS whenever a token is given;"
            " use tcp:HOST:PORT (or HOST:PORT)"
        )
    if kind.lower() in ("unix", "tcp6", "hostname"):
        raise ValueError(f"{kind}: endpoints are not supported for the master yet; use tcp:")
    if description.startswith("["):
        host, bracket, port = description[1:].partition("]:")
        if not bracket or not host:
            raise ValueError(f"expected [IPv6]:PORT, not {description!r}")
        return MasterAddress(host, _port(port))
    host, colon, port = description.rpartition(":")
    if not colon or not host:
        raise ValueError(f"expected tcp:host=HOST:port=PORT or HOST:PORT, not {description!r}")
    return MasterAddress(host, _port(port))


def _parse_tcp(arguments: str) -> MasterAddress:
    positional: list[str] = []
    named: dict[str, str] = {}
    for part in _split_escaped(arguments):
        key, equals, value = part.partition("=")
        if equals:
            if key not in ("host", "port", "timeout"):
                raise ValueError(f"unknown tcp: argument {key!r} (known: host, port, timeout)")
            named[key] = value
        else:
            positional.append(part)
    # As in Twisted's own parser, positional values fill the missing
    # arguments in order: host, then port.
    missing = [key for key in ("host", "port") if key not in named]
    if len(positional) > len(missing):
        raise ValueError(f"too many tcp: arguments: {arguments!r}")
    named.update(zip(missing, positional))
    if not named.get("host"):
        raise ValueError("tcp: needs a host")
    if "port" not in named:
        raise ValueError("tcp: needs a port")
    timeout = DEFAULT_CONNECT_TIMEOUT
    if "timeout" in named:
        try:
            timeout = float(named["timeout"])
        except ValueError:
            raise ValueError(f"timeout must be a number, not {named['timeout']!r}") from None
        if not 0 < timeout < math.inf:
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout}")
    return MasterAddress(named["host"], _port(named["port"]), timeout)


def dial(reactor: Any, master: MasterAddress, factory: Any, token: JoinToken | None) -> Any:
    """
    Connect C{factory} to C{master}: over TLS pinned to C{token}'s CA, or
    plain when there is no token (C{--insecure}).

    @return: The connector, for a reconnecting factory to retry with.
    """
    if token is not None:
        factory = TLSFactory(PinnedMasterTLS(token.fingerprint), True, factory)
    return reactor.connectTCP(master.host, master.port, factory, timeout=master.timeout)


def hello_for(token: JoinToken | None, role: str, transport: Any,
              uuid: str | None = None, node_key: bytes | None = None) -> Hello | dict[str, Any]:
    """
    The hello a node sends: version 2 with the proof of C{token}'s secret
    bound to this TLS connection (and, for a slave taking its C{uuid} back
    with its C{node_key}, the proof of that key), or version 1 in plain mode
    (as it always was, without the version 2 fields).
    """
    if token is None:
        return {"version": PLAIN_VERSION, "uuid": uuid, "role": role}
    binding = channel_binding(transport)
    if binding is None:
        raise ValueError("a token's hello needs a TLS connection")
    owned = node_proof(node_key, uuid, binding) if node_key is not None and uuid is not None else None
    return Hello(version=PROTOCOL_VERSION, uuid=uuid, role=role, credential=token.credential,
                 proof=proof(token.key, token.credential, binding), node_proof=owned)
