"""
The master's side of its connections: what it does for each slave and client.

L{MasterFactory} gives each accepted connection a L{PeerConnection}, the
master's handler for that slave or client, whose C{gone} Deferred errbacks with
L{DisconnectionException} when the slave goes.  The service that owns the
factory, the registry and the port is L{picluster.master.service.MasterService}.

A master may hold thousands of idle slaves, so what it keeps per slave is
kept small: the text that every node of a cluster sends alike (the keys of its facts, its model,
OS and CPU) is held once, not once per node (L{picluster.master.sharedtexts}),
and one timer (L{picluster.master.keepalives}) pings them all rather than a
timer each.
"""

from __future__ import annotations

import re
import sys
import uuid as uuid_module
from collections.abc import Callable
from typing import Any, cast

import msgspec
from twisted.internet import defer
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from picluster import sysinfo
from picluster.logbudget import LogBudget
from picluster.master import slavelist
from picluster.master.admission import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_STRANGERS,
    DEFAULT_MAX_STRANGERS_PER_HOST,
    Admission,
)
from picluster.master.history import VitalsHistory
from picluster.master.keepalives import Keepalives
from picluster.master.nodes import NODES_FILE, NodeBook
from picluster.master.registry import Departure, SlaveRegistry
from picluster.master.scheduler import Scheduler
from picluster.master.sharedtexts import SharedTexts
from picluster.master.slavelist import BadSlaveQuery, SlaveQuery
from picluster.text import clip
from picluster.timebase import wall_time
from picluster.trust.channel import channel_binding, node_proof_holds, proof_holds
from picluster.trust.cluster import ClusterTrust, TrustError
from picluster.trust.token import ROLE_OF
from picluster.trust.token import SLAVE as SLAVE_CREDENTIAL
from picluster.wire import BadMessage
from picluster.wire.errors import DisconnectionException, ServiceError
from picluster.wire.handler import format_address
from picluster.wire.messages import (
    AUTHENTICATION_FAILED,
    BAD_UUID,
    BEFORE_HELLO,
    IDENTITY_IN_USE,
    INFO_QUESTIONS,
    NODE_OWNED,
    PLAIN_VERSION,
    PROTOCOL_VERSION,
    ROLES,
    SAY_HELLO_FIRST,
    SERVED,
    SLAVE_INFO,
    SUPPORTED_VERSIONS,
    UNKNOWN_INFO,
    UNKNOWN_ROLE,
    UNSUPPORTED_VERSION,
    ComputerDetails,
    Hello,
    InfoQuery,
    Submit,
    TaskRef,
    TaskResult,
    TasksQuery,
    Vitals,
    Watch,
    Welcome,
    WorkerOffer,
)
from picluster.wire.protocol import PeerHandler, PiClusterFactory, PiClusterProtocol

#: Who may offer to work and report results: slaves alone.
_SLAVE = ("slave",)

_UUID = re.compile(r"[0-9a-fA-F]{32}")

log = Logger()

#: Bytes of a frame kept for what wraps a reply's records (the envelope,
#: the counts beside them): the rest of C{--max-frame} is the records'.
REPLY_OVERHEAD = 4096


def new_uuid() -> str:
    """A fresh connection id: 32 lowercase hex digits."""
    return uuid_module.uuid4().hex


class PeerConnection(PeerHandler):
    """
    The master's handler for one connection: a slave's, or a client's.

    Every connection starts as a slave's and is listed in the registry; a
    hello that says C{"role": "client"} takes it out.  For a slave it holds
    what the master knows of that node for as long as the connection lasts.
    Every connection has a uuid from the start; a hello may swap it for the
    uuid the slave had before.

    A client may only ask about tasks and the cluster.

    @ivar gone: Fires once the connection has gone and the master has
        forgotten it (L{MasterFactory.forget}).
    @ivar role: C{"slave"} or C{"client"} once the hello came, else C{None}.
    """

    log = log
    #: The master's own protocol, not just the L{Connection} a handler sends
    #: through: it is pinged, timed and trusted here.
    protocol: PiClusterProtocol
    role: str | None = None
    #: A task result is answered once its task's row is on disk (so that
    #: the slave may forget it): a slave busy with small tasks has a commit's
    #: worth of them waiting at any time, under a bound of their own.
    stored_answers = frozenset({"task_result"})
    #: The credential whose token the hello proved; C{None} before, and always
    #: on a plain (C{--insecure}) master.
    credential: str | None = None
    #: Whether its hello was refused (and logged as such).
    refused_at_hello = False
    #: Made when first asked for: the master itself needs no Deferred to
    #: learn that a connection went, and one with its callback costs each
    #: idle slave some 600 bytes.
    _gone: defer.Deferred[None] | None = None
    _forgotten = False

    def __init__(self, protocol: PiClusterProtocol, master: MasterFactory, host: str):
        super().__init__(protocol)
        self.master = master
        #: The peer's host, as the master's admission counts it.
        self.host = host
        self.uuid = new_uuid()
        self.connected_at = wall_time(master.clock)
        self.computer_details: ComputerDetails | None = None
        self.vitals: Vitals | None = None
        self.vitals_received_at: float | None = None
        self.history = VitalsHistory()

    @property
    def gone(self) -> defer.Deferred[None]:
        """Fires once the connection has gone and the master has forgotten it."""
        if self._gone is None:
            self._gone = defer.succeed(None) if self._forgotten else defer.Deferred()
        return self._gone

    @property
    def address(self) -> str:
        return self.protocol.peer_address

    @property
    def last_seen(self) -> float:
        """
        When the master last heard from the peer, as a time of day: the
        protocol keeps it on the timers' monotonic clock, which a step of
        the system clock leaves behind.
        """
        clock = self.master.clock
        return wall_time(clock) - (clock.seconds() - self.protocol.last_received)

    @property
    def rtt_ms(self) -> float | None:
        return self.protocol.rtt_ms

    @property
    def hostname(self) -> str | None:
        if self.computer_details is None:
            return None
        # Clipped: it is logged, shown and matched, and a peer chose it.
        return clip(self.computer_details.hostname)

    def describe_peer(self) -> str:
        if self.role == "client":
            return f"client {self.address}"
        return f"slave {self.address} ({self.uuid})"

    def log_fields(self) -> dict[str, Any]:
        return {"peer": self.describe_peer(), "address": self.address, "uuid": self.uuid}

    @property
    def stranger(self) -> bool:
        """Whether it has yet to prove a token (on a secure master; never on a plain one)."""
        return self.master.tls and self.credential is None

    @property
    def quiet(self) -> bool:
        # A stranger's closing is logged once, within the refusals' budget,
        # as it goes (MasterFactory.forget): a flood costs a few lines.
        return self.stranger

    def connection_made(self) -> None:
        if self.master.trust is not None:
            # A stranger until its hello proves a token: listed nowhere,
            # served nothing else, not even pinged (its pong would be
            # refused); silent, it is dropped after dead_after.
            self.serves = BEFORE_HELLO
            return
        self.master.keepalives.add(self.protocol)
        self.master.registry.add(self)
        self.master.node_lines.info(
            "joins", "Slave connected from {address} as {uuid}", address=self.address, uuid=self.uuid
        )

    def not_served(self, message_type: str) -> BadMessage:
        if self.credential is None:
            return BadMessage(SAY_HELLO_FIRST, type=message_type, close=True)
        return BadMessage(f"not served to a {self.credential}", type=message_type)

    def connection_lost(self, failure: Failure) -> None:
        self.master.keepalives.discard(self.protocol)
        try:
            self.master.forget(self, failure.value)
        finally:
            self._forgotten = True
            if self._gone is not None:
                self._gone.callback(None)

    def describe(self) -> dict[str, Any]:
        """This slave's entry in a C{slave_details} reply."""
        worker = self.master.scheduler.workers.get(self)
        return {
            "slots": worker.slots if worker is not None else None,
            "running_tasks": len(worker.running) if worker is not None else 0,
            "ready_tasks": len(worker.ready) if worker is not None else 0,
            "uuid": self.uuid,
            "address": self.address,
            "hostname": self.hostname,
            "connected_at": self.connected_at,
            "last_seen": self.last_seen,
            "rtt_ms": self.rtt_ms,
            "vitals": self.vitals,
            "vitals_received_at": self.vitals_received_at,
            "computer_details": self.computer_details,
            "cloned": self.cloned,
        }

    @property
    def cloned(self) -> bool:
        """Whether another machine holds this node's identity too, as far as the master can tell."""
        nodes = self.master.nodes
        return nodes is not None and nodes.conflicted(self.uuid, self.master.clock.seconds())

    # -- messages ----------------------------------------------------------

    def msg_hello(self, hello: Hello) -> tuple[str, Welcome]:
        trust = self.master.trust
        if trust is not None:
            return self._proven_hello(hello, trust)
        version = hello.version
        if type(version) is not int or version != PLAIN_VERSION:
            raise BadMessage(
                UNSUPPORTED_VERSION,
                version=version if type(version) in (int, str) else None,
                supported=[PLAIN_VERSION],
                close=True,
            )
        earlier = hello.uuid
        if earlier is not None:
            if not _UUID.fullmatch(earlier):
                raise BadMessage(
                    BAD_UUID,
                    supported=list(SUPPORTED_VERSIONS),
                    close=True,
                )
            self._reclaim(earlier.lower())
        role = hello.role
        if role not in ROLES:
            raise BadMessage(UNKNOWN_ROLE, role=role, known=list(ROLES), close=True)
        if self.role is None:
            # The master's own copy (checked against ROLES above): as
            # decoded, each slave's would be a string of its own.
            self.role = sys.intern(role)
            if role == "client":
                self.master.registry.remove(self)
                self.log.info("{peer} is a client", peer=self.describe_peer())
        return ("welcome", Welcome(self.uuid, self.master.keepalive, self.master.dead_after,
                                   max_frame=self.master.max_frame))

    def _proven_hello(self, hello: Hello, trust: ClusterTrust) -> tuple[str, Welcome]:
        """
        A secure master's hello: version 2, and a proof of a token's secret
        bound to this TLS connection; the credential decides the role.
        """
        if hello.version != PROTOCOL_VERSION:
            self.master.refused(self.address, f"hello version {clip(repr(hello.version))}")
            self.refused_at_hello = True
            raise BadMessage(
                UNSUPPORTED_VERSION,
                version=hello.version if type(hello.version) in (int, str) else None,
                supported=[PROTOCOL_VERSION],
                close=True,
            )
        credential = hello.credential
        binding = channel_binding(self.protocol.transport)
        try:
            key = trust.key_of(credential) if credential is not None else None
        except TrustError as e:
            # Ours, not the peer's: it may try again once the file is fixed.
            self.log.error("Cannot check a hello: {problem}", problem=str(e))
            raise ServiceError(f"the master cannot check tokens now: {e}") from None
        why = None
        if credential is None or hello.proof is None:
            why = "no token"
        elif key is None:
            why = f"unknown credential {clip(credential)!r}"
        elif binding is None or not proof_holds(key, credential, binding, hello.proof):
            why = f"wrong proof for a {credential} token (an old or forged token, or a replay)"
        elif ROLE_OF[credential] != hello.role:
            why = f"a {credential} token used as a {clip(str(hello.role))}"
        if why is not None:
            self.master.refused(self.address, why)
            self.refused_at_hello = True
            raise BadMessage(AUTHENTICATION_FAILED, close=True)
        # Past the refusals above, both are known: a credential, and the binding its proof held for.
        assert credential is not None and binding is not None
        if hello.uuid is not None and not _UUID.fullmatch(hello.uuid):
            raise BadMessage(BAD_UUID, supported=list(SUPPORTED_VERSIONS), close=True)
        node_key = self._identify(hello, binding) if hello.role == "slave" else None
        self.master.admission.known(self.host)
        self.protocol.trusted()
        self.credential = sys.intern(credential)  # a known one: as the role above
        self.role = ROLE_OF[credential]
        self.serves = SERVED[credential]
        self.master.keepalives.add(self.protocol)
        self.master.node_lines.info("joins", "{peer} joined with a {credential} token",
                                    peer=self.describe_peer(), credential=credential)
        return ("welcome", Welcome(self.uuid, self.master.keepalive, self.master.dead_after,
                                   node_key=node_key, max_frame=self.master.max_frame))

    def _identify(self, hello: Hello, binding: bytes) -> str | None:
        """
        Which node this slave is: the owner of the uuid it takes back, proven
        by its node key; or, for a uuid nobody owns, a node given a key now
        (returned, for the welcome).  Two machines that keep taking one
        uuid from each other are clones: the newcomer is refused.
        """
        nodes = self.master.nodes
        assert nodes is not None  # a secure master's: made with its trust
        now = self.master.clock.seconds()
        uuid = hello.uuid.lower() if hello.uuid is not None else None
        key = nodes.key_of(uuid) if uuid is not None else None
        if uuid is not None and key is not None:
            if hello.node_proof is None or not node_proof_holds(key, uuid, binding, hello.node_proof):
                self.master.refused(self.address, f"uuid {uuid} taken without its node key")
                self.refused_at_hello = True
                raise BadMessage(NODE_OWNED, close=True)
            holder = self.master.registry.get(uuid)
            if holder is not None and holder is not self and nodes.conflicted(uuid, now):
                nodes.refused_clone(uuid, now)
                self.master.refused(self.address, f"node {uuid} is connected from {holder.address}"
                                                  " too: two machines hold its identity")
                self.refused_at_hello = True
                raise BadMessage(IDENTITY_IN_USE, close=True)
            self.master.registry.add(self)
            if self._reclaim(uuid) is not None:
                nodes.displaced(uuid, now)
                if nodes.conflicted(uuid, now):
                    self.log.error(
                        "Node {uuid} keeps joining from two machines ({address} and another):"
                        " a cloned SD card?  Reset the identity of one of them (docs: security)",
                        uuid=uuid, address=self.address,
                    )
            return None
        self.master.registry.add(self)
        if uuid is not None:
            # Nobody owns it (a node from before node keys, or a master that
            # lost its nodes file): it becomes this node's.
            self._reclaim(uuid)
        return nodes.issue(self.uuid)

    def _reclaim(self, earlier: str) -> PeerConnection | None:
        """Take the uuid C{earlier} back; returns the live connection it displaced, if any."""
        registry = self.master.registry
        if earlier != self.uuid:
            self.master.stats.reconnections += 1
        # The registry holds the master's connections, though it knows them only as LiveSlaves.
        displaced = cast("PeerConnection | None", registry.claim(self, earlier))
        # The node's charts go on where they stopped.
        before = displaced if displaced is not None else registry.returned(earlier)
        if before is not None and len(before.history) > len(self.history):
            self.history = before.history
        if displaced is None:
            self.master.node_lines.info(
                "rejoins", "Slave at {address} rejoined as {uuid}", address=self.address, uuid=self.uuid
            )
            return None
        self.log.warn(
            "Slave {uuid} rejoined from {address}; closing its older connection from {old}",
            uuid=self.uuid,
            address=self.address,
            old=displaced.address,
        )
        displaced.close("replaced by a newer connection with the same uuid", abort=True)
        return displaced

    def msg_computer_details(self, details: ComputerDetails) -> None:
        self.computer_details = self.master.shared_texts.details(details)
        self.master.node_lines.info(
            "descriptions", "Slave {uuid} at {address} is {hostname}",
            uuid=self.uuid, address=self.address, hostname=self.hostname,
        )

    def msg_vitals(self, vitals: Vitals) -> None:
        self.vitals = vitals
        self.vitals_received_at = now = wall_time(self.master.clock)
        self.history.record(now, vitals)

    def msg_info(self, asked: str | InfoQuery) -> tuple[str, Any]:
        question = asked if isinstance(asked, str) else asked.question
        if self.credential == SLAVE_CREDENTIAL and question not in SLAVE_INFO:
            raise BadMessage(f"not served to a {self.credential}", request=question)
        if question == "computer_details":
            return ("master_info", self.master.computer_details)
        if question == "uuid":
            return ("uuid", self.uuid)
        # Lists come a page at a time, and a page fits a frame whatever the
        # cluster's size.  A plain question asks for the first page.
        query = self._slave_query(asked)
        room = self.master.max_frame - REPLY_OVERHEAD
        if question == "slave_details":
            nodes = slavelist.matching(
                self.master.registry, query, wall_time(self.master.clock),
                slavelist.silent_after(self.master.keepalive),
            )
            # The registry's live slaves are these connections, whatever it calls them.
            row = cast("Callable[[slavelist.Node], dict[str, Any]]", PeerConnection.describe)
            page = slavelist.page(nodes, query, row, room)
            return ("slave_details", page["slaves"] if isinstance(asked, str) else page)
        answer = self.master.cluster_answers.get(question)
        if answer is not None:
            return (question, answer(query, room))
        raise BadMessage(UNKNOWN_INFO, request=question, known=list(INFO_QUESTIONS))

    @staticmethod
    def _slave_query(asked: str | InfoQuery) -> SlaveQuery:
        if isinstance(asked, str):
            return SlaveQuery()
        try:
            return SlaveQuery(asked.limit, asked.after, asked.order, asked.state, asked.search)
        except BadSlaveQuery as refusal:
            raise BadMessage(str(refusal), request=asked.question) from None

    def msg_message(self, text: str) -> None:
        self.master.peer_lines.emit(
            LogLevel.info, "messages", "Message from slave {uuid} at {address}: {text}",
            uuid=self.uuid, address=self.address, text=clip(text),
        )

    # -- tasks -------------------------------------------------------------

    def _when_ready(self, roles: tuple[str, ...], call: Callable[[Scheduler], Any]) -> Any:
        """
        C{call(scheduler)} for a connection that said hello, once the queue
        has loaded: at once when it has (as nearly always), its answer
        handed straight back; else a Deferred of it.  Every task message
        asks this, and a Deferred in between (fired already, chained to
        the answer's) cost the master's task path more than its own
        bookkeeping.
        """
        if self.role not in roles:
            raise BadMessage(SAY_HELLO_FIRST if self.role is None else f"not served to a {self.role}")
        scheduler = self.master.scheduler
        if scheduler.serving:
            return call(scheduler)
        return scheduler.when_ready().addCallback(lambda _: call(scheduler))

    def msg_worker(self, offer: WorkerOffer) -> Any:
        return self._when_ready(_SLAVE, lambda s: s.worker_joined(self, offer))

    def msg_task_result(self, result: TaskResult) -> Any:
        return self._when_ready(_SLAVE, lambda s: s.task_result(self, result))

    def msg_submit(self, submission: Submit) -> Any:
        return self._when_ready(ROLES, lambda s: s.submit(submission.tasks, self.submitter()))

    def submitter(self) -> str:
        """Who submits on this connection, as the task's record keeps it."""
        credential = self.credential or f"plain {self.role}"
        return f"{credential} at {self.address}"

    def msg_tasks(self, query: TasksQuery | None) -> Any:
        return self._when_ready(ROLES, lambda s: s.view.tasks(query or TasksQuery()))

    def msg_cancel(self, task: TaskRef) -> Any:
        return self._when_ready(ROLES, lambda s: s.cancel(task.id))

    def msg_watch(self, watch: Watch) -> Any:
        return self._when_ready(ROLES, lambda s: s.view.watch(self, watch.ids))


class MasterFactory(PiClusterFactory):
    """
    Makes a L{PeerConnection} for every accepted connection.

    @ivar registry: The live slaves, shared with the owning L{MasterService}.
    @ivar scheduler: The task queue, shared likewise; serves tasks once started.
    @ivar connections: Every open connection, slaves and clients alike.
    @ivar keepalives: Pings every open connection each C{keepalive} seconds.
    @ivar computer_details: The master's own machine facts.
    @ivar cluster_answers: The C{info} questions about the cluster that the
        owning service answers (C{status}, C{slaves}, C{summary}), each with
        the page asked for and the bytes the answer may take.  Without a
        service, none: they are refused.
    """

    def __init__(
        self,
        registry: SlaveRegistry,
        *,
        scheduler: Scheduler | None = None,
        computer_details: ComputerDetails | dict[str, Any] | None = None,
        trust: ClusterTrust | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_strangers: int = DEFAULT_MAX_STRANGERS,
        max_strangers_per_host: int = DEFAULT_MAX_STRANGERS_PER_HOST,
        **settings: Any,
    ):
        if trust is not None:
            settings.setdefault("handshake_timeout", DEFAULT_HANDSHAKE_TIMEOUT)
        super().__init__(**settings)
        self.trust = trust
        self.tls = trust is not None
        self.admission = Admission(max_connections, max_strangers, max_strangers_per_host)
        #: Which node owns which uuid; C{None} on a plain master.
        self.nodes = NodeBook(trust.path(NODES_FILE), self.clock) if trust is not None else None
        #: Refused handshakes, logged a few at a time (a scan must not fill the log).
        self.refusals = LogBudget(
            self.log, self.clock, "Left out of the log in the last {seconds:g} s: {kinds}",
            lines=20, interval=60.0,
        )
        #: Lines about single nodes joining and leaving: one by one while they
        #: are few; a storm (thousands rejoining a restarted master) is
        #: counted, not written three lines a slave to an SD card.
        self.node_lines = LogBudget(
            self.log, self.clock,
            "Left out of the log in the last {seconds:g} s: {kinds} (/api/slaves lists every slave)",
            lines=100, interval=10.0,
        )
        #: Lines carrying text that peers chose (their messages), likewise.
        self.peer_lines = LogBudget(
            self.log, self.clock, "Left out of the log in the last {seconds:g} s: {kinds}",
            lines=20, interval=60.0,
        )
        self.registry = registry
        self.connections: set[PeerConnection] = set()
        self.keepalives = Keepalives(self.clock, self.keepalive, self.dead_after)
        self.shared_texts = SharedTexts()
        self.scheduler = scheduler if scheduler is not None else Scheduler(
            self.clock, overdue_grace=self.dead_after, max_reply=self.max_frame - REPLY_OVERHEAD
        )
        if computer_details is None:
            computer_details = sysinfo.computer_details()
        if not isinstance(computer_details, ComputerDetails):
            computer_details = msgspec.convert(computer_details, ComputerDetails)
        self.computer_details = computer_details
        self.cluster_answers: dict[str, Callable[[SlaveQuery, int], Any]] = {}

    def stopFactory(self) -> None:
        """Say what the logs' budgets left out, now rather than after the port is gone."""
        for budget in (self.node_lines, self.refusals, self.peer_lines):
            budget.flush()
        super().stopFactory()

    def refused(self, address: str, why: str) -> None:
        """Log a refused handshake from C{address}, within the refusals' budget."""
        self.refusals.emit(LogLevel.warn, "refused handshakes", "Refused {address}: {why}",
                           address=address, why=why)

    def buildProtocol(self, addr: Any) -> PiClusterProtocol | None:
        """
        A protocol for a new connection, or C{None} to close it at once
        when a cap of L{Admission} is reached (the peers already connected,
        and the web port, are untouched).
        """
        host = _host(addr)
        why = self.admission.refusal(host, self.tls)
        if why is not None:
            self.refused(format_address(addr), why)
            return None
        # Typed as Twisted's protocol, or None; it is always one of ours.
        protocol = cast(PiClusterProtocol, super().buildProtocol(addr))
        protocol.admitted_host = host
        return protocol

    def make_handler(self, protocol: PiClusterProtocol) -> PeerConnection:
        host = protocol.admitted_host or _host(protocol.transport.getPeer())
        slave = PeerConnection(protocol, self, host)
        self.admission.opened(host, slave.stranger)
        self.connections.add(slave)
        return slave

    def forget(self, slave: PeerConnection, disconnection: DisconnectionException) -> None:
        """Forget a connection that has gone, and remember the slave."""
        self.connections.discard(slave)
        self.admission.closed(slave.host, slave.stranger)
        if self.registry.remove(slave) and slave.role == "slave":
            self.registry.departed(
                Departure.of(slave, wall_time(self.clock), disconnection.cause)
            )
        self.scheduler.forget(slave)
        if self.trust is not None and slave.credential is None:
            # A stranger (a scan, a plain-TCP peer, a wrong token): one line
            # within the refusals' budget, not two for every knock.
            if not slave.refused_at_hello:
                self.refused(slave.address, f"gone before a proven hello: {disconnection.cause}")
            return
        self.node_lines.info(
            "departures", "Got disconnection exception with message: {disconnection}",
            disconnection=str(disconnection), uuid=slave.uuid, address=slave.address,
        )
        self.node_lines.info(
            "departures", "Shutting down {role} connection handler for {uuid} at {address}",
            role=slave.role or "slave", uuid=slave.uuid, address=slave.address,
        )


def _host(address: Any) -> str:
    """The host part of a peer's address (its whole text where it has none)."""
    host = getattr(address, "host", None)
    return host if isinstance(host, str) else str(address)
