"""
The master: accepts slaves, tracks them, answers questions about the cluster.

L{MasterService} owns the one L{SlaveRegistry}; L{MasterFactory} gives each
accepted connection a L{SlaveConnection}, the master's handler for that
slave, whose C{gone} Deferred errbacks with L{DisconnectionException} when
the slave goes.
"""

from __future__ import annotations

import re
import uuid as uuid_module
from typing import Any

from twisted.application import service, strports
from twisted.internet import defer, interfaces
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python.failure import Failure

from picluster import sysinfo
from picluster.errors import DisconnectionException
from picluster.protocol import PeerHandler, PiClusterFactory, PiClusterProtocol
from picluster.registry import SlaveRegistry
from picluster.scheduler import Scheduler
from picluster.store import StoreError, TaskStore, check_database
from picluster.wire import BadMessage

#: Versions of the hello handshake this master speaks.
SUPPORTED_VERSIONS = (1,)

#: What a connection may say it is in its hello.
ROLES = ("slave", "client")

#: Listening backlog used when the port description names none: Twisted's
#: 50 drops connections when a whole cluster rejoins a restarted master.
DEFAULT_BACKLOG = 1024

_UUID = re.compile(r"[0-9a-fA-F]{32}")

log = Logger()


def new_uuid() -> str:
    """A fresh connection id: 32 lowercase hex digits."""
    return uuid_module.uuid4().hex


def with_default_backlog(description: str) -> str:
    """Add C{backlog=DEFAULT_BACKLOG} to a TCP port description without one."""
    kind = description.split(":", 1)[0].strip().lower()
    if kind in ("tcp", "tcp6") and "backlog=" not in description:
        return f"{description}:backlog={DEFAULT_BACKLOG}"
    return description


def _require_object(payload: Any, message_type: str) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise BadMessage(f"{message_type} payload must be a JSON object")
    return payload


class SlaveConnection(PeerHandler):
    """
    The master's handler for one slave connection.

    It holds what the master knows of that slave for as long as the
    connection lasts.  Every connection has a uuid from the start; a hello
    may swap it for the uuid the slave had before.

    A connection whose hello says C{"role": "client"} is not a slave: it
    leaves the registry and may only ask about tasks and the cluster.

    @ivar gone: Errbacks with L{DisconnectionException} when the slave goes.
    @ivar role: C{"slave"} or C{"client"} once the hello came, else C{None}.
    """

    log = log
    role: str | None = None

    def __init__(self, protocol: PiClusterProtocol, master: MasterFactory):
        super().__init__(protocol)
        self.master = master
        self.uuid = new_uuid()
        self.connected_at = master.clock.seconds()
        self.computer_details: dict[str, Any] | None = None
        self.vitals: dict[str, Any] | None = None
        self.vitals_received_at: float | None = None
        self.gone: defer.Deferred[None] = defer.Deferred()

    @property
    def address(self) -> str:
        return self.protocol.peer_address

    @property
    def hostname(self) -> str | None:
        hostname = (self.computer_details or {}).get("hostname")
        return hostname if isinstance(hostname, str) else None

    def describe_peer(self) -> str:
        if self.role == "client":
            return f"client {self.address}"
        return f"slave {self.address} ({self.uuid})"

    def log_fields(self) -> dict[str, Any]:
        return {"peer": self.describe_peer(), "address": self.address, "uuid": self.uuid}

    def connection_made(self) -> None:
        self.master.registry.add(self)
        self.protocol.start_keepalive(self.master.keepalive)
        self.log.info(
            "Slave connected from {address} as {uuid}", address=self.address, uuid=self.uuid
        )

    def connection_lost(self, failure: Failure) -> None:
        self.gone.errback(failure)

    def describe(self) -> dict[str, Any]:
        """This slave's entry in a C{slave_details} reply."""
        worker = self.master.scheduler.workers.get(self)
        return {
            "slots": worker.slots if worker is not None else None,
            "running_tasks": len(worker.running) if worker is not None else 0,
            "uuid": self.uuid,
            "address": self.address,
            "hostname": self.hostname,
            "connected_at": self.connected_at,
            "last_seen": self.protocol.last_received,
            "rtt_ms": self.protocol.rtt_ms,
            "vitals": self.vitals,
            "vitals_received_at": self.vitals_received_at,
            "computer_details": self.computer_details,
        }

    # -- messages ----------------------------------------------------------

    def msg_hello(self, payload: Any) -> tuple[str, Any]:
        hello = _require_object(payload, "hello")
        version = hello.get("version")
        if type(version) is not int or version not in SUPPORTED_VERSIONS:
            raise BadMessage(
                "unsupported protocol version",
                version=version if type(version) in (int, str) else None,
                supported=list(SUPPORTED_VERSIONS),
                close=True,
            )
        earlier = hello.get("uuid")
        if earlier is not None:
            if not isinstance(earlier, str) or not _UUID.fullmatch(earlier):
                raise BadMessage(
                    "uuid must be null or 32 hex digits",
                    supported=list(SUPPORTED_VERSIONS),
                    close=True,
                )
            self._reclaim(earlier.lower())
        role = hello.get("role", "slave")
        if role not in ROLES:
            raise BadMessage("unknown role", role=role if isinstance(role, str) else None,
                             known=list(ROLES), close=True)
        if self.role is None:
            self.role = role
            if role == "client":
                self.master.registry.remove(self)
                self.log.info("{peer} is a client", peer=self.describe_peer())
        return (
            "welcome",
            {
                "uuid": self.uuid,
                "keepalive": self.master.keepalive,
                "dead_after": self.master.dead_after,
            },
        )

    def _reclaim(self, earlier: str) -> None:
        displaced = self.master.registry.claim(self, earlier)
        if displaced is None:
            self.log.info(
                "Slave at {address} rejoined as {uuid}", address=self.address, uuid=self.uuid
            )
            return
        self.log.warn(
            "Slave {uuid} rejoined from {address}; closing its older connection from {old}",
            uuid=self.uuid,
            address=self.address,
            old=displaced.address,
        )
        displaced.protocol.close("replaced by a newer connection with the same uuid", abort=True)

    def msg_computer_details(self, payload: Any) -> None:
        self.computer_details = _require_object(payload, "computer_details")
        self.log.info(
            "Slave {uuid} at {address} is {hostname}",
            uuid=self.uuid, address=self.address, hostname=self.hostname,
        )

    def msg_vitals(self, payload: Any) -> None:
        self.vitals = _require_object(payload, "vitals")
        self.vitals_received_at = self.master.clock.seconds()

    def msg_info(self, payload: Any) -> tuple[str, Any]:
        if payload == "computer_details":
            return ("master_info", self.master.computer_details)
        if payload == "uuid":
            return ("uuid", self.uuid)
        if payload == "slave_details":
            return ("slave_details", [slave.describe() for slave in self.master.registry])
        raise BadMessage(
            "unknown info request",
            request=payload if isinstance(payload, str) else None,
            known=["computer_details", "uuid", "slave_details"],
        )

    def msg_message(self, payload: Any) -> None:
        if not isinstance(payload, str):
            raise BadMessage("message payload must be a string")
        self.log.info(
            "Message from slave {uuid} at {address}: {text}",
            uuid=self.uuid, address=self.address, text=payload,
        )


    # -- tasks -------------------------------------------------------------

    def _when_ready(self, *roles: str) -> defer.Deferred[Scheduler]:
        """The scheduler, once loaded, for a connection that said hello."""
        if self.role not in roles:
            raise BadMessage("say hello first" if self.role is None else f"not served to a {self.role}")
        scheduler = self.master.scheduler
        return scheduler.when_ready().addCallback(lambda _: scheduler)

    def msg_worker(self, payload: Any) -> defer.Deferred[Any]:
        return self._when_ready("slave").addCallback(lambda s: s.worker_joined(self, payload))

    def msg_task_result(self, payload: Any) -> defer.Deferred[Any]:
        return self._when_ready("slave").addCallback(lambda s: s.task_result(self, payload))

    def msg_submit(self, payload: Any) -> defer.Deferred[Any]:
        return self._when_ready(*ROLES).addCallback(lambda s: s.submit(payload))

    def msg_tasks(self, payload: Any) -> defer.Deferred[Any]:
        return self._when_ready(*ROLES).addCallback(lambda s: s.tasks(payload))

    def msg_cancel(self, payload: Any) -> defer.Deferred[Any]:
        return self._when_ready(*ROLES).addCallback(lambda s: s.cancel(payload))

    def msg_watch(self, payload: Any) -> defer.Deferred[Any]:
        return self._when_ready(*ROLES).addCallback(lambda s: s.watch(self, payload))


class MasterFactory(PiClusterFactory):
    """
    Makes a L{SlaveConnection} for every accepted connection.

    @ivar registry: The live slaves, shared with the owning L{MasterService}.
    @ivar scheduler: The task queue, shared likewise; serves tasks once started.
    @ivar connections: Every open connection, slaves and clients alike.
    @ivar computer_details: The master's own machine facts.
    """

    def __init__(
        self,
        registry: SlaveRegistry,
        *,
        scheduler: Scheduler | None = None,
        computer_details: dict[str, Any] | None = None,
        **settings: Any,
    ):
        super().__init__(**settings)
        self.registry = registry
        self.connections: set[SlaveConnection] = set()
        self.scheduler = scheduler if scheduler is not None else Scheduler(
            self.clock, overdue_grace=self.dead_after, max_reply=self.max_frame - 4096
        )
        self.computer_details = (
            computer_details if computer_details is not None else sysinfo.computer_details()
        )

    def make_handler(self, protocol: PiClusterProtocol) -> SlaveConnection:
        slave = SlaveConnection(protocol, self)
        self.connections.add(slave)
        slave.gone.addErrback(self._slave_gone, slave)
        return slave

    def _slave_gone(self, failure: Failure, slave: SlaveConnection) -> None:
        failure.trap(DisconnectionException)
        self.connections.discard(slave)
        self.registry.remove(slave)
        self.scheduler.forget(slave)
        self.log.info(
            "Got disconnection exception with message: {disconnection}",
            disconnection=str(failure.value), uuid=slave.uuid, address=slave.address,
        )
        self.log.info(
            "Shutting down {role} connection handler for {uuid} at {address}",
            role=slave.role or "slave", uuid=slave.uuid, address=slave.address,
        )


class MasterService(service.MultiService):
    """
    A picluster master: the registry of slaves and the port they connect to.

    It also owns the L{Scheduler} and its task database at C{db} (an SQLite
    file; C{":memory:"} keeps tasks only while the master runs).  Further
    parts of the master (the web page) join as child services, sharing
    L{registry} and L{scheduler}.
    """

    def __init__(
        self,
        port: str = "tcp:12345",
        *,
        reactor: Any = None,
        db: str = ":memory:",
        rejoin_grace: float = 30.0,
        max_args: int | None = None,
        **settings: Any,
    ):
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor
        self.port = port
        self.db = db
        self.reactor = reactor
        self.registry = SlaveRegistry()
        self.factory = MasterFactory(self.registry, clock=reactor, **settings)
        self.scheduler = self.factory.scheduler
        self.scheduler.rejoin_grace = rejoin_grace
        if max_args is not None:
            self.scheduler.max_args = max_args
        self.listener = strports.service(with_default_backlog(port), self.factory, reactor=reactor)
        self.listener.setServiceParent(self)

    def privilegedStartService(self) -> None:
        """
        Listen (twistd calls this first, before dropping privileges).

        A port already taken is a common slip, not a bug: say so in one line
        and exit, rather than end twistd with a traceback.
        """
        try:
            check_database(self.db)
        except StoreError as e:
            raise SystemExit(f"picluster-master: {e}") from e
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            cause = getattr(e.socketError, "strerror", None) or e.socketError
            raise SystemExit(f"picluster-master: cannot listen on {self.port}: {cause}") from e

    def startService(self) -> None:
        """Listen, and load the task queue; tasks are served once it is loaded."""
        super().startService()
        self._queue_loaded: defer.Deferred[None] = defer.Deferred()
        opened = TaskStore.open(self.db, self.reactor)
        opened.addCallbacks(self._store_opened, self.scheduler.failed_to_start)
        opened.addErrback(lambda failure: log.failure("Loading the task queue failed", failure))
        opened.addBoth(lambda _: self._queue_loaded.callback(None))

    def _store_opened(self, store: TaskStore) -> defer.Deferred[None]:
        if not self.running:
            # Stopped while the database was opening: nobody will close it.
            return store.close()
        return self.scheduler.start(store)

    def when_listening(self) -> defer.Deferred[interfaces.IListeningPort]:
        """The listening port, once the service has started listening."""
        listened: defer.Deferred[interfaces.IListeningPort] = defer.Deferred()

        def relay(port: Any) -> Any:
            if port is None:
                # The service's own errback has already logged why.
                listened.errback(RuntimeError(f"the master could not listen on {self.port}"))
            else:
                listened.callback(port)
            return port

        # StreamServerEndpointService keeps the listen() result here; relay
        # it rather than add callbacks that would change what it holds.
        self.listener._waitingForPort.addBoth(relay)
        return listened

    #: Fires once the task queue has loaded or failed to; None before start.
    _queue_loaded: defer.Deferred[None] | None = None

    def stopService(self) -> defer.Deferred[None]:
        """
        Stop listening, close every connection and wait for it, then write
        what the task queue still holds and close its database.
        """
        stopped = defer.maybeDeferred(super().stopService)
        closing = []
        for connection in list(self.factory.connections):
            closing.append(connection.protocol.when_lost())
            connection.protocol.close("master shutting down")
        loading = [self._queue_loaded] if self._queue_loaded is not None else []
        closed = defer.gatherResults([stopped, *closing, *loading])
        closed.addCallback(lambda _: self.scheduler.stop())
        return closed.addCallback(lambda _: None)
