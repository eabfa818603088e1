"""
The master as a service: the port slaves connect to, and the parts that
share its one L{SlaveRegistry} and L{Scheduler}.

L{MasterService} owns the registry, the scheduler with its task database,
and the listening port; the web server (dashboard, JSON API, C{/metrics})
and the InfluxDB export join as child services when asked for.  What the
master does for each connection is L{picluster.master}'s.
"""

from __future__ import annotations

import os
import re
from typing import Any

from twisted.application import service, strports
from twisted.internet import defer, interfaces
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from picluster.master.connection import MasterFactory
from picluster.master.registry import DEFAULT_FORGET_AFTER, SlaveRegistry
from picluster.master.store import COMMIT_INTERVAL, StoreError, TaskStore, check_database
from picluster.master.views import SlaveList
from picluster.timebase import wall_time
from picluster.trust.channel import TLSFactory
from picluster.trust.cluster import ClusterTrust

log = Logger()

#: Listening backlog used when the port description names none: Twisted's
#: 50 drops connections when a whole cluster rejoins a restarted master, and
#: with 1024 a storm of 2,000 connects still had SYNs resent (the scale
#: benchmark).  Linux caps it at net.core.somaxconn (4096 by default).
DEFAULT_BACKLOG = 4096


def with_default_backlog(description: str) -> str:
    """Add C{backlog=DEFAULT_BACKLOG} to a TCP port description without one."""
    kind = description.split(":", 1)[0].strip().lower()
    if kind in ("tcp", "tcp6") and "backlog=" not in description:
        return f"{description}:backlog={DEFAULT_BACKLOG}"
    return description


class MasterService(service.MultiService):
    """
    A picluster master: the registry of slaves and the port they connect to.

    It also owns the L{Scheduler} and its task database at C{db} (an SQLite
    file; C{":memory:"} keeps tasks only while the master runs).  The other
    parts of the master join as child services and read L{registry} and
    L{scheduler}: the web server on C{web} (dashboard, JSON API and
    C{/metrics}; C{None} for none), and the InfluxDB export when C{influxdb}
    names a server.
    """

    #: When the service started, in the reactor's seconds; None before.
    started_at: float | None = None
    #: The TCP port slaves connect to, once listening.
    slave_port: int | None = None
    web_listener: service.Service | None = None

    def __init__(
        self,
        port: str = "tcp:12345",
        *,
        reactor: Any = None,
        db: str = ":memory:",
        rejoin_grace: float = 30.0,
        max_args: int | None = None,
        task_limits: dict[str, Any] | None = None,
        web: str | None = None,
        forget_after: float = DEFAULT_FORGET_AFTER,
        influxdb: str | None = None,
        influxdb_db: str = "picluster",
        influxdb_interval: float = 10.0,
        trust: ClusterTrust | None = None,
        web_public: bool = False,
        **settings: Any,
    ):
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor
        #: The cluster's CA and secrets; C{None} for a plain master (C{--insecure}).
        self.trust = trust
        self.port = port
        self.db = db
        self.web = web
        self.reactor = reactor
        self.registry = SlaveRegistry(forget_after)
        self.factory = MasterFactory(self.registry, clock=reactor, trust=trust, **settings)
        self.slave_list = SlaveList(self)
        self.factory.cluster_answers = {
            "status": self.slave_list.status,
            "slaves": lambda query, room: self.slave_list.page(query, room),
            "summary": lambda query, room: self.slave_list.summary(),
        }
        self.scheduler = self.factory.scheduler
        self.scheduler.rejoin_grace = rejoin_grace
        if max_args is not None:
            self.scheduler.max_args = max_args
        self.scheduler.set_limits(**(task_limits or {}))
        listening: Any = self.factory
        if trust is not None:
            # TLS around the factory rather than an ssl: endpoint, so that any
            # endpoint (a systemd socket too) speaks TLS, and only TLS.
            listening = TLSFactory(trust.server_options(), False, self.factory)
        self.listener = strports.service(with_default_backlog(port), listening, reactor=reactor)
        self.listener.setServiceParent(self)
        if web is not None:
            from picluster.master.web.site import DashboardSite

            self.site = DashboardSite(self, public=web_public)
            self.web_listener = strports.service(web, self.site, reactor=reactor)
            self.web_listener.setServiceParent(self)
        self.influx: Any = None
        if influxdb is not None:
            from picluster.master.influx import InfluxExporter

            self.influx = InfluxExporter(
                influxdb, influxdb_db, self.registry, clock=reactor, interval=influxdb_interval
            )
            self.influx.setServiceParent(self)

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
            # Which of the two ports: the error names the interface and port.
            port = self.port
            if self.web is not None and e.port == _port_number(self.web):
                port = self.web
            raise SystemExit(f"picluster-master: cannot listen on {port}: {cause}") from e

    def startService(self) -> None:
        """Listen, and load the task queue; tasks are served once it is loaded."""
        self.started_at = wall_time(self.reactor)
        super().startService()
        if self.trust is None:
            log.warn(
                "Plain mode (--insecure): no TLS, no tokens; anyone who reaches {port} can run"
                " tasks and read every result.  For benchmarks and experiments only.",
                port=self.port,
            )
        else:
            log.info(
                "Secure mode: TLS only, nodes join with a token.  Print the join token for"
                " slaves with 'picluster token --state-dir {state_dir}' (--client for users)",
                state_dir=os.path.abspath(self.trust.state_dir),
            )
        # The port slaves reach, as bound (the description may say 0, or
        # name a socket that systemd handed over).
        self.when_listening().addCallbacks(
            lambda port: setattr(self, "slave_port", port.getHost().port), lambda _: None
        )
        if self.web_listener is not None:
            # Who may see the dashboard depends on where it really listens.
            self.when_web_listening().addCallbacks(
                lambda port: self.site.gate.listening_on(port.getHost().host), lambda _: None
            )
        queue_loaded: defer.Deferred[None] = defer.Deferred()
        self._queue_loaded = queue_loaded
        opened = TaskStore.open(self.db, self.reactor, commit_interval=COMMIT_INTERVAL)
        opened.addCallbacks(self._store_opened, self.scheduler.failed_to_start)
        opened.addErrback(lambda failure: log.failure("Loading the task queue failed", failure))
        opened.addBoth(lambda _: queue_loaded.callback(None))

    def _store_opened(self, store: TaskStore) -> defer.Deferred[None]:
        if not self.running:
            # Stopped while the database was opening: nobody will close it.
            return store.close()
        return self.scheduler.start(store)

    def when_listening(self) -> defer.Deferred[interfaces.IListeningPort]:
        """The listening port for slaves, once the service has started listening."""
        return _when_listening(self.listener, self.port)

    def when_web_listening(self) -> defer.Deferred[interfaces.IListeningPort]:
        """The web server's listening port, once listening."""
        if self.web_listener is None:
            return defer.fail(RuntimeError("this master serves no web page"))
        return _when_listening(self.web_listener, self.web)

    #: Fires once the task queue has loaded or failed to; None before start.
    _queue_loaded: defer.Deferred[None] | None = None

    def stopService(self) -> defer.Deferred[None]:
        """
        Stop listening, close every connection and wait for it, then write
        what the task queue still holds and close its database.
        """
        if self.web_listener is not None:
            self.site.events.close()
        service.Service.stopService(self)
        # Only the parts that started: a start that failed on a taken port
        # leaves the later listeners unstarted, and stopping one of those
        # raises.
        stopped = defer.gatherResults([
            defer.maybeDeferred(child.stopService) for child in reversed(list(self)) if child.running
        ])
        closing = []
        for connection in list(self.factory.connections):
            closing.append(connection.when_lost())
            connection.close("master shutting down")
        loading = [self._queue_loaded] if self._queue_loaded is not None else []
        closed: defer.Deferred[Any] = defer.gatherResults([stopped, *closing, *loading])
        closed.addCallback(lambda _: self.factory.refusals.flush())
        nodes = self.factory.nodes
        if nodes is not None:
            closed.addCallback(lambda _: nodes.flush())
        closed.addCallback(lambda _: self.scheduler.stop())
        return closed.addCallback(lambda _: None)


def _when_listening(listener: Any, description: str | None) -> defer.Deferred[interfaces.IListeningPort]:
    listened: defer.Deferred[interfaces.IListeningPort] = defer.Deferred()

    def relay(port: Any) -> Any:
        if port is None:
            # The service's own errback has already logged why.
            listened.errback(RuntimeError(f"the master could not listen on {description}"))
        else:
            listened.callback(port)
        return port

    # StreamServerEndpointService keeps the listen() result here; relay it
    # rather than add callbacks that would change what it holds.
    listener._waitingForPort.addBoth(relay)
    return listened


def _port_number(description: str) -> int | None:
    """The port number of a C{tcp:PORT...} description, if it is one."""
    match = re.match(r"\s*tcp6?:(?:port=)?(\d+)", description)
    return int(match.group(1)) if match else None
