"""
A side's handler of one connection: what it does with each message.

L{picluster.wire.protocol.PiClusterProtocol} frames, decodes and dispatches;
a L{PeerHandler} subclass (the master's, the slave's, the client's) says
what each message means to its side.  The rest of a side (a worker, a
watcher) sends through the handler's narrow C{send}/C{request}/C{close},
never through the protocol, so the protocol can change beneath them.
"""

from __future__ import annotations

from typing import Any, Protocol

import msgspec
from twisted.internet import defer
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from picluster.text import clip
from picluster.wire import envelope as wire
from picluster.wire import messages
from picluster.wire.errors import DisconnectionException


class Connection(Protocol):
    """What a handler uses of its L{picluster.wire.protocol.PiClusterProtocol}."""

    peer_address: str
    lost: DisconnectionException | None

    def send(self, message_type: str, payload: Any = None) -> None: ...

    def request(self, message_type: str, payload: Any = None) -> defer.Deferred[Reply]: ...

    def close(self, cause: str, abort: bool = False) -> None: ...

    def hold(self, cause: str) -> None: ...

    def release(self, cause: str) -> None: ...

    @property
    def closing(self) -> bool: ...

    def when_lost(self) -> defer.Deferred[DisconnectionException]: ...

    def record_pong(self, payload: Any) -> None: ...


class Reply(msgspec.Struct, frozen=True, gc=False):
    """
    The answer to one of our requests: its type, and its payload decoded
    into the shape declared for that reply to that request.
    """

    type: str
    payload: Any = None


def format_address(address: Any) -> str:
    """Render an L{IAddress} as C{host:port} (C{[v6]:port} for IPv6)."""
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is None or port is None:
        return str(address)
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


class PeerHandler:
    """
    What one side does with the messages of one connection.

    The protocol calls C{msg_<type>(payload)} for every message that is not a
    reply, its payload already decoded into the shape L{messages} declares
    for that type (plain JSON values for a type nobody declared, as in
    tests).  A handler method returns C{None} (the message is answered with
    C{ack} if it carried an id), a C{(reply_type, payload)} pair (sent back as
    the reply), or a Deferred firing with either; it raises
    L{wire.BadMessage} to refuse the message.  Subclasses add the messages
    their side serves; the ones here are common to both sides.
    """

    log = Logger()
    #: The message types served now; C{None} for all the handler has.
    serves: frozenset[str] | None = None
    #: The message types whose Deferred answers wait only for what the
    #: message carries to be stored: bounded by the factory's
    #: C{max_storing}, not its C{max_in_flight}.
    stored_answers: frozenset[str] = frozenset()

    def __init__(self, protocol: Connection):
        self.protocol = protocol

    def describe_peer(self) -> str:
        """Name the peer for log lines and L{DisconnectionException}s."""
        return f"peer {self.protocol.peer_address}"

    @property
    def quiet(self) -> bool:
        """Whether the protocol keeps its lines about this connection to itself."""
        return False

    def log_fields(self) -> dict[str, Any]:
        """Fields every log event about this connection carries."""
        return {"peer": self.describe_peer(), "address": self.protocol.peer_address}

    # -- what the rest of a side may do with the connection ------------------
    #
    # Domain objects (a worker, a watcher) send through these, never through
    # the protocol itself, so that the protocol may change beneath them.

    def send(self, message_type: str, payload: Any = None) -> None:
        """Send a message that wants no answer."""
        self.protocol.send(message_type, payload)

    def request(self, message_type: str, payload: Any = None) -> defer.Deferred[Reply]:
        """Send a message; the Deferred fires with its reply, see L{PiClusterProtocol.request}."""
        return self.protocol.request(message_type, payload)

    def close(self, cause: str, abort: bool = False) -> None:
        """Close the connection for C{cause}, see L{PiClusterProtocol.close}."""
        self.protocol.close(cause, abort=abort)

    def when_lost(self) -> defer.Deferred[DisconnectionException]:
        """Fires with the L{DisconnectionException} once the connection has gone."""
        return self.protocol.when_lost()

    def hold(self, cause: str) -> None:
        """Stop reading the peer until L{release} is called with the same C{cause}."""
        self.protocol.hold(cause)

    def release(self, cause: str) -> None:
        """Read the peer again, once no other cause holds it."""
        self.protocol.release(cause)

    @property
    def closing(self) -> bool:
        """Whether the connection is closing or closed: send it nothing more."""
        return self.protocol.closing

    @property
    def disconnection(self) -> DisconnectionException | None:
        """Why the connection went, once it has."""
        return self.protocol.lost

    def not_served(self, message_type: str) -> wire.BadMessage:
        """The refusal of a message type outside L{serves}."""
        return wire.BadMessage(messages.UNKNOWN_TYPE, type=message_type)

    def connection_made(self) -> None:
        """The connection is up; start whatever this side does on it."""

    def connection_lost(self, failure: Failure) -> None:
        """
        The connection is gone; C{failure} wraps a L{DisconnectionException}.
        """

    def msg_ping(self, payload: Any) -> tuple[str, Any]:
        return ("pong", payload)

    def msg_pong(self, payload: Any) -> None:
        self.protocol.record_pong(payload)

    def msg_message(self, payload: str) -> None:
        self._peer_says(LogLevel.info, "Message from {peer}: {text}", text=clip(payload))

    def msg_bad_message(self, refusal: messages.Refusal) -> None:
        self._peer_says(LogLevel.warn, "{peer} could not accept a message of ours: {problem}",
                        problem=clip(refusal.error))

    def msg_error(self, failure: messages.ServiceFailure) -> None:
        self._peer_says(LogLevel.warn, "{peer} reported an error: {problem}",
                        problem=clip(failure.error))

    #: Lines of the peer's own texts logged per connection; past them, one
    #: line says so and the rest are not logged.
    LOGGED_PEER_TEXTS = 10
    _peer_texts = 0

    def _peer_says(self, level: LogLevel, format: str, **fields: Any) -> None:
        """Log a line carrying the peer's text, while the connection's budget lasts."""
        self._peer_texts += 1
        if self._peer_texts <= self.LOGGED_PEER_TEXTS:
            self.log.emit(level, format, **fields, **self.log_fields())
        elif self._peer_texts == self.LOGGED_PEER_TEXTS + 1:
            self.log.warn("{peer} keeps sending texts to log; further ones are not logged",
                          **self.log_fields())
