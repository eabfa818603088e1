"""
The client's side of the wire: its connection to the master, and the shape
of what it sends and reads there.

L{ClientConnection} says hello as a C{"client"}, keeps the connection alive
and hands the master's pushed C{task_update}s on; L{ClientFactory} makes
one per connection and reconnects, with the slave's backoff, once a first
welcome has come.  L{submit_batches} and L{checked_payload} keep messages
within a frame and replies within the contract.  What a program does with
all that is L{picluster.client.api.Client}'s.
"""

from __future__ import annotations

import uuid as uuid_module
from collections.abc import Callable
from typing import Any, Protocol, cast

import msgspec
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import ReconnectingClientFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from picluster import wire
from picluster.address import MasterAddress, hello_for
from picluster.trust.channel import verify_master
from picluster.trust.token import JoinToken
from picluster.wire.errors import DisconnectionException, HandshakeError
from picluster.wire.messages import SHORTEST_KEEPALIVE, TaskUpdate
from picluster.wire.protocol import PeerHandler, PiClusterFactory, PiClusterProtocol, Reply

#: A submission is split into messages of at most this many specs or bytes,
#: well inside the master's default 1 MiB frame.
MAX_BATCH_TASKS = 500
MAX_BATCH_BYTES = 512 * 1024

#: Ids per watch request: its reply holds whole records, results included,
#: and must fit in one frame.
MAX_WATCH_IDS = 100

log = Logger()


class UnexpectedReply(Exception):
    """The master answered a request with something the contract does not allow."""


class ConnectionEvents(Protocol):
    """
    What a L{ClientFactory} tells the program it serves (a
    L{picluster.client.api.Client}) about its connections.
    """

    def _connected(self, connection: PiClusterProtocol) -> None:
        """The master welcomed us on C{connection}."""

    def _handshake_failed(self, failure: Failure) -> None:
        """The master refused our hello."""

    def _disconnected(self, connection: PiClusterProtocol, lost: DisconnectionException) -> None:
        """C{connection} is gone."""

    def _connect_failed(self, reason: Failure) -> None:
        """A connection attempt failed."""

    def _task_updated(self, record: dict[str, Any]) -> None:
        """The master pushed a watched task's new record."""


class ClientConnection(PeerHandler):
    """A client's session over one connection: hello, then pushed updates."""

    log = log
    protocol: PiClusterProtocol

    def __init__(self, protocol: PiClusterProtocol, factory: ClientFactory):
        super().__init__(protocol)
        self.factory = factory

    def describe_peer(self) -> str:
        return f"master {self.factory.master}"

    def connection_made(self) -> None:
        hello = hello_for(self.factory.token, "client", self.protocol.transport)
        self.protocol.request("hello", hello).addCallbacks(self._welcomed, self._refused)

    def _welcomed(self, reply: Reply) -> None:
        if reply.type != "welcome":
            raise HandshakeError(f"master answered hello with {reply.type}, not welcome")
        # Ping at least as often as the master expects, or it counts us dead
        # while we sit waiting for a long task (but not in a busy loop).
        master_keepalive = max(reply.payload.keepalive, SHORTEST_KEEPALIVE)
        self.protocol.start_keepalive(min(self.factory.keepalive, master_keepalive))
        self.factory.resetDelay()
        self.factory.client._connected(self.protocol)

    def _refused(self, failure: Failure) -> None:
        if failure.check(DisconnectionException):
            return  # connection_lost says what happened
        self.factory.client._handshake_failed(failure)
        self.protocol.close(f"handshake failed: {failure.getErrorMessage()}")

    def connection_lost(self, failure: Failure) -> None:
        self.factory.client._disconnected(self.protocol, failure.value)

    def msg_task_update(self, update: TaskUpdate) -> None:
        # Programs get records as plain JSON values, as from every other reply.
        self.factory.client._task_updated(msgspec.to_builtins(update.task))


class ClientFactory(PiClusterFactory, ReconnectingClientFactory):
    """
    Connects to the master and, once it has welcomed us, reconnects with
    backoff whenever it goes: the slave's policy (factor 2, reset on welcome).
    """

    factor = 2.0
    # PiClusterFactory's clock times the reconnections too; Twisted's
    # default (clock = None) has mypy take the attribute for None alone.
    clock: IReactorTime  # type: ignore[assignment]

    def __init__(
        self,
        master: MasterAddress,
        client: ConnectionEvents,
        *,
        initial_delay: float = 1.0,
        max_delay: float = 60.0,
        token: JoinToken | None = None,
        **settings: Any,
    ):
        PiClusterFactory.__init__(self, **settings)
        #: The join token; C{None} in plain mode.
        self.token = token
        self.tls = token is not None
        self.master = master
        self.client = client
        self.initialDelay = self.delay = initial_delay
        # Twisted's default (3600) has mypy take maxDelay for an int; it is seconds, any number.
        self.maxDelay = max_delay  # type: ignore[assignment]
        self.connection: PiClusterProtocol | None = None

    def make_handler(self, protocol: PiClusterProtocol) -> ClientConnection:
        return ClientConnection(protocol, self)

    def check_peer(self, protocol: PiClusterProtocol) -> None:
        """Talk only to a master whose certificate the token's CA signed."""
        assert self.token is not None
        verify_master(protocol.transport, self.token.fingerprint)

    def buildProtocol(self, addr: Any) -> PiClusterProtocol:
        # Typed as a protocol or None: a plain Factory's is never None.
        self.connection = cast(PiClusterProtocol, super().buildProtocol(addr))
        return self.connection

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.client._connect_failed(reason)
        super().clientConnectionFailed(connector, reason)

    def clientConnectionLost(self, connector: Any, reason: Failure) -> None:
        self.connection = None
        super().clientConnectionLost(connector, reason)
        if self.continueTrying and self._callID is not None:
            delay = self._callID.getTime() - self.clock.seconds()
            log.info("Reconnecting to master {master} in {delay:.1f} s",
                     master=self.master, delay=delay)


def is_record(record: Any) -> bool:
    return (
        isinstance(record, dict)
        and type(record.get("id")) is int
        and isinstance(record.get("state"), str)
    )


#: What the payload of each reply type the client reads must hold.
_READABLE: dict[str, Callable[[dict[str, Any]], bool]] = {
    "submitted": lambda payload: isinstance(payload.get("tasks"), list),
    "tasks": lambda payload: (isinstance(payload.get("tasks"), list)
                              and all(map(is_record, payload["tasks"]))),
    "status": lambda payload: (isinstance(payload.get("master"), dict)
                               and isinstance(payload.get("slaves"), list)
                               and isinstance(payload.get("tasks"), dict)),
    "slaves": lambda payload: (isinstance(payload.get("slaves"), list)
                               and all(isinstance(slave, dict) for slave in payload["slaves"])
                               and isinstance(payload.get("more"), bool)
                               and isinstance(payload.get("next"), (str, type(None)))),
}


def checked_payload(message_type: str, reply: Reply, reply_type: str) -> dict[str, Any]:
    """
    The payload of C{reply} as plain JSON values (what the client hands to
    programs), if it is the C{reply_type} expected and readable as one.
    """
    payload = reply.payload
    if isinstance(payload, msgspec.Struct):
        payload = msgspec.structs.asdict(payload)
    if (
        reply.type != reply_type
        or not isinstance(payload, dict)
        or not _READABLE[reply_type](payload)
    ):
        raise UnexpectedReply(f"master answered {message_type} with a {reply.type} we cannot read")
    return payload


def _with_key(spec: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise TypeError(f"a task spec must be a dict, not {type(spec).__name__}")
    if spec.get("key") is None:
        return {**spec, "key": uuid_module.uuid4().hex}
    return spec


def submit_batches(specs: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """
    Give every spec without a key a fresh one, and split the specs into
    submit messages small enough for one frame each.

    @raise TypeError: a spec is not a dict, or holds what JSON cannot.
    @raise ValueError: a spec holds a NaN or an infinity.
    """
    specs = [_with_key(spec) for spec in specs]
    batches: list[list[dict[str, Any]]] = []
    batch: list[dict[str, Any]] = []
    size = 0
    for spec in specs:
        spec_size = len(wire.strict_json(spec)) + 1
        if batch and (len(batch) >= MAX_BATCH_TASKS or size + spec_size > MAX_BATCH_BYTES):
            batches.append(batch)
            batch, size = [], 0
        batch.append(spec)
        size += spec_size
    if batch:
        batches.append(batch)
    return batches
