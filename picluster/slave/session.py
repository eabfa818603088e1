"""
The slave: joins a master, reports its machine and vitals, and rejoins.

Each connection runs one session, a Deferred chain (hello and welcome, then
computer_details, then the master's own facts, then the offer of work, then
keepalives and vitals until the connection goes), whose errback handles the
L{DisconnectionException}.  Reconnecting is the factory's job: a
L{Backoff} (a L{ReconnectingClientFactory}) whose delay resets once a
welcome arrives, and depends on how each attempt ended.

Tasks run in the factory's L{TaskRunner}, so they outlive a connection: a
run that ends while the master is away keeps its result until a later
session delivers it, and a rejoining slave tells the master what it still
runs.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NoReturn, cast

from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from picluster import sysinfo
from picluster.address import MasterAddress, dial, hello_for
from picluster.logbudget import LogBudget
from picluster.slave.backoff import Backoff
from picluster.slave.identity import IdentityError, NodeIdentity
from picluster.text import clip
from picluster.trust.channel import verify_master
from picluster.trust.token import JoinToken
from picluster.wire import BadMessage
from picluster.wire.errors import (
    BadReply,
    DisconnectionException,
    HandshakeError,
    RemoteError,
    RequestTimeout,
    describe_reason,
)
from picluster.wire.messages import (
    SHORTEST_KEEPALIVE,
    ComputerDetails,
    Refusal,
    Run,
    RunTask,
    ServiceFailure,
    Welcome,
    WorkerAccepted,
    WorkerOffer,
)
from picluster.wire.protocol import PeerHandler, PiClusterFactory, PiClusterProtocol, Reply

__all__ = ["HandshakeError", "SlaveSession", "SlaveFactory", "SlaveService"]


_UUID = re.compile(r"[0-9a-f]{32}")

#: The shortest keepalive interval a master may ask of a slave (the
#: protocol's, L{SHORTEST_KEEPALIVE}); the slave says so when it is raised.
KEEPALIVE_FLOOR = SHORTEST_KEEPALIVE

log = Logger()


class SlaveSession(PeerHandler):
    """
    The slave's session with its master over one connection.

    The session is a chain of steps; the handshake is the first, and stays a
    step of its own so that authentication can join it.
    """

    log = log
    protocol: PiClusterProtocol

    def __init__(self, protocol: PiClusterProtocol, slave: SlaveFactory):
        super().__init__(protocol)
        self.slave = slave
        self._vitals_loop: LoopingCall | None = None
        self.session: defer.Deferred[None] | None = None
        #: Whether the master took our offer of work on this connection.
        self.working = False
        #: Results sent on this connection and not yet acknowledged.
        self._results_in_flight: set[tuple[int, int]] = set()

    def describe_peer(self) -> str:
        return f"master {self.slave.master}"

    def connection_made(self) -> None:
        self.session = self.run_session()

    def connection_lost(self, failure: Failure) -> None:
        self._stop_reporting()

    def run_session(self) -> defer.Deferred[None]:
        """Run the session until the connection ends; never fails."""
        # Each step changes what the chain carries: Any, not the handshake's Welcome.
        session: defer.Deferred[Any] = self._handshake()
        session.addCallback(self._introduce)
        session.addCallback(self._ask_master_info)
        session.addCallback(self._offer_work)
        session.addCallback(self._start_reporting)
        session.addCallback(self._until_disconnected)
        session.addErrback(self._session_ended)
        return session

    # -- steps -------------------------------------------------------------

    def _handshake(self) -> defer.Deferred[Welcome]:
        identity = self.slave.identity
        node_key = identity.key_bytes if identity is not None and identity.uuid == self.slave.uuid else None
        hello = hello_for(self.slave.token, "slave", self.protocol.transport, uuid=self.slave.uuid,
                          node_key=node_key)
        sent = self.protocol.request("hello", hello)
        return sent.addCallbacks(self._welcomed, self._not_welcomed)

    def _not_welcomed(self, failure: Failure) -> NoReturn:
        if failure.check(RemoteError):
            raise HandshakeError(failure.getErrorMessage())
        failure.trap(BadReply)
        raise HandshakeError(f"the master's welcome is malformed: {failure.value.problem}")

    def _welcomed(self, reply: Reply) -> Welcome:
        welcome = reply.payload
        if reply.type != "welcome":
            raise HandshakeError(f"expected a welcome, got {reply.type}")
        uuid = welcome.uuid
        if not _UUID.fullmatch(uuid):
            raise HandshakeError(f"welcome carries no valid uuid: {clip(repr(uuid))}")
        rejoined = uuid == self.slave.uuid
        self.slave.uuid = uuid
        if welcome.node_key is not None and self.slave.identity is not None:
            try:
                self.slave.identity.save(uuid, welcome.node_key)
            except IdentityError as e:
                self.slave.master_log.emit(LogLevel.error, "identities not kept", "Could not keep"
                                           " this node's identity: {problem}; it is this node's"
                                           " until the slave stops", problem=clip(str(e)))
        self.slave.joined()
        self.log.info(
            "{how} master {master} as {uuid}",
            how="Rejoined" if rejoined else "Joined", master=self.slave.master, uuid=uuid,
        )
        return welcome

    def _introduce(self, welcome: Welcome) -> defer.Deferred[Reply]:
        if welcome.max_frame is not None and self.slave.runner is not None:
            self.slave.runner.waiting.fit_frame(welcome.max_frame)
        self._master_keepalive = welcome.keepalive
        if welcome.keepalive < KEEPALIVE_FLOOR:
            self._master_keepalive = KEEPALIVE_FLOOR
            self.slave.master_log.emit(
                LogLevel.warn, "keepalives asked too often",
                "Master {master} asks for a keepalive every {asked:g} s; this slave pings"
                " every {floor:g} s at most", master=self.slave.master, asked=welcome.keepalive,
                floor=KEEPALIVE_FLOOR,
            )
        return self.protocol.request("computer_details", self.slave.computer_details)

    def _ask_master_info(self, _: Any) -> defer.Deferred[None]:
        return self.protocol.request("info", "computer_details").addCallback(self._log_master_info)

    def _log_master_info(self, reply: Reply) -> None:
        facts = reply.payload if isinstance(reply.payload, ComputerDetails) else ComputerDetails()
        # Only clipped texts: the master chose every one of its facts.
        self.slave.master_log.info(
            "descriptions of the master", "Master is {hostname} ({cpu}, {cores} cores, {ram} bytes of RAM)",
            hostname=clip(facts.hostname), cpu=clip(facts.cpu), cores=facts.cpu_cores, ram=facts.ram,
        )

    def _offer_work(self, _: Any) -> defer.Deferred[None] | None:
        runner = self.slave.runner
        if runner is None:
            return None
        offer = WorkerOffer(
            slots=runner.slots, tasks=runner.offers(), refused=runner.refusals(),
            tags=list(self.slave.tags), holding=runner.holding(), prefetch=runner.prefetch,
        )
        offered = self.protocol.request("worker", offer)
        return offered.addCallbacks(self._work_accepted, self._work_refused)

    def _work_accepted(self, reply: Reply) -> None:
        runner = self.slave.runner
        accepted = reply.payload if isinstance(reply.payload, WorkerAccepted) else WorkerAccepted()
        for run in accepted.drop:
            self.slave.master_log.info("runs given up", "Master gave up task {id} (attempt {attempt});"
                                       " stopping it", id=run.id, attempt=run.attempt)
            runner.cancel(run.id, run.attempt)
        self.working = True
        for result in runner.results:
            self.report_result(result)

    def _work_refused(self, failure: Failure) -> None:
        # A master that hands out no tasks (an older one) is still a master.
        failure.trap(RemoteError, BadReply)
        self.slave.master_log.emit(LogLevel.warn, "refusals of work", "Master {master} does not hand"
                                   " out tasks: {problem}", master=self.slave.master,
                                   problem=clip(failure.getErrorMessage()))

    def report_result(self, result: dict[str, Any]) -> None:
        """Send one finished run's result; it is forgotten only once acknowledged."""
        run = (result["id"], result["attempt"])
        if not self.working or self.protocol.closing or run in self._results_in_flight:
            return
        self._results_in_flight.add(run)
        sent = self.protocol.request("task_result", result)
        sent.addCallbacks(self._result_stored, self._result_not_stored,
                          callbackArgs=(run,), errbackArgs=(run,))

    def _result_stored(self, _: Any, run: tuple[int, int]) -> None:
        self._results_in_flight.discard(run)
        self.slave.runner.acknowledged(*run)

    def _result_not_stored(self, failure: Failure, run: tuple[int, int]) -> None:
        self._results_in_flight.discard(run)
        if failure.check(RemoteError):
            # The master will never take it; keeping it would resend it forever.
            self.slave.master_log.emit(LogLevel.error, "refused results", "Master refused the result"
                                       " of task {id} attempt {attempt}: {problem}", id=run[0],
                                       attempt=run[1], problem=clip(failure.getErrorMessage()))
            self.slave.runner.acknowledged(*run)
        elif not failure.check(DisconnectionException):
            # A timeout: the master may be busy; the next session sends it again.
            self.slave.master_log.emit(LogLevel.warn, "unanswered results", "No answer to the result"
                                       " of task {id}: {problem}", id=run[0],
                                       problem=clip(failure.getErrorMessage()))

    def msg_run_task(self, run: RunTask) -> None:
        if self.slave.runner is None or not self.working:
            raise BadMessage("this slave runs no tasks on this connection")
        self.slave.runner.start(run)

    def msg_cancel_task(self, run: Run) -> None:
        if self.slave.runner is not None:
            self.slave.runner.cancel(run.id, run.attempt)

    # The master chooses these texts and how many it sends: each line is
    # clipped, and they share the factory's budget of lines.

    def msg_message(self, payload: str) -> None:
        self.slave.master_log.info("messages", "Message from {peer}: {text}", text=clip(payload),
                                   **self.log_fields())

    def msg_bad_message(self, refusal: Refusal) -> None:
        self.slave.master_log.emit(LogLevel.warn, "refusals of our messages", "{peer} could not"
                                   " accept a message of ours: {problem}", problem=clip(refusal.error),
                                   **self.log_fields())

    def msg_error(self, failure: ServiceFailure) -> None:
        self.slave.master_log.emit(LogLevel.warn, "errors", "{peer} reported an error: {problem}",
                                   problem=clip(failure.error), **self.log_fields())

    def _start_reporting(self, _: Any) -> None:
        # Ping at least as often as the master expects, or it would count us
        # dead; but no faster than KEEPALIVE_FLOOR for its sake (_introduce):
        # a welcome saying 1e-300 would have us ping in a busy loop.
        self.protocol.start_keepalive(min(self.slave.keepalive, self._master_keepalive))
        self._vitals_loop = LoopingCall(self._report_vitals)
        self._vitals_loop.clock = self.slave.clock
        self._vitals_loop.start(self.slave.vitals_interval, now=True).addErrback(
            lambda failure: self.log.failure("Vitals reporting stopped", failure)
        )

    def _until_disconnected(self, _: Any) -> defer.Deferred[None]:
        # The loss is the session's end, so it comes as a failure: the
        # errback below handles it like a loss at any earlier step.
        return self.protocol.when_lost().addCallback(Failure)

    def _session_ended(self, failure: Failure) -> None:
        self._stop_reporting()
        if failure.check(DisconnectionException):
            self.log.info(
                "Got disconnection exception with message: {disconnection}",
                disconnection=str(failure.value),
            )
            return
        # Not a crowd at the master's door: the next attempt waits longer.
        self.slave.rebuffed()
        # What went wrong may quote the master: clipped, as is the close's cause.
        problem = clip(failure.getErrorMessage())
        if failure.check(HandshakeError):
            # Said in one line, without a traceback: a wrong token is the
            # user's to fix, and the factory keeps retrying meanwhile.
            self.slave.master_log.emit(LogLevel.error, "failed joins", "Could not join master"
                                       " {master}: {problem}", master=self.slave.master, problem=problem)
        elif failure.check(RemoteError, BadReply, RequestTimeout):
            # The master refused, garbled or ignored a step of the session:
            # its doing, not a bug of ours, so one line, no traceback.
            self.slave.master_log.emit(LogLevel.error, "failed sessions", "Session with master"
                                       " {master} failed: {problem}", master=self.slave.master,
                                       problem=problem)
        else:
            self.log.failure("Session with {master} failed", failure, master=self.slave.master)
        self.protocol.close(f"session failed: {problem}")

    # -- vitals ------------------------------------------------------------

    def _report_vitals(self) -> defer.Deferred[None]:
        return self.slave.sampler.sample().addCallback(self._send_vitals).addErrback(
            self._vitals_failed
        )

    def _send_vitals(self, vitals: dict[str, Any]) -> None:
        if not self.protocol.closing:
            self.protocol.send("vitals", vitals)

    def _vitals_failed(self, failure: Failure) -> None:
        # Keep the loop going: one bad sample must not silence the node.
        if not failure.check(DisconnectionException):
            self.log.failure("Could not report vitals", failure)

    def _stop_reporting(self) -> None:
        if self._vitals_loop is not None and self._vitals_loop.running:
            self._vitals_loop.stop()
        self._vitals_loop = None


class SlaveFactory(PiClusterFactory, Backoff):
    """
    Connects to the master and reconnects, with backoff, whenever it goes
    (L{Backoff}: how long it waits depends on how the last attempt ended).

    What outlives a connection lives here: the uuid the master gave us
    (presented again in every hello), the machine facts, the sampler, and
    the L{TaskRunner} with its runs and unsent results.
    """

    #: Seconds within which the first retry after a lost session comes,
    #: unless told otherwise, and the shortest wait after a failed attempt.
    initialDelay = Backoff.initialDelay
    # PiClusterFactory's clock times the reconnections too; Twisted's
    # default (clock = None) has mypy take the attribute for None alone.
    clock: IReactorTime  # type: ignore[assignment]
    #: Longest wait between two attempts, unless told otherwise.
    maxDelay = Backoff.maxDelay

    def __init__(
        self,
        master: MasterAddress,
        *,
        vitals_interval: float = 10.0,
        initial_delay: float = initialDelay,
        max_delay: float = maxDelay,
        computer_details: dict[str, Any] | None = None,
        sampler: Any = None,
        runner: Any = None,
        tags: tuple[str, ...] = (),
        token: JoinToken | None = None,
        identity: NodeIdentity | None = None,
        **settings: Any,
    ):
        PiClusterFactory.__init__(self, **settings)
        #: The join token; C{None} in plain mode (C{--insecure}).
        self.token = token
        #: This node's uuid and key, kept in its state directory; C{None}: in memory only.
        self.identity = identity
        self.tls = token is not None
        self.runner = runner
        self.tags = tags
        if runner is not None:
            runner.on_result = self._run_finished
            runner.soon = self._after_answers
        self.master = master
        self.vitals_interval = vitals_interval
        self.initialDelay = self.delay = initial_delay
        self.maxDelay = max_delay
        self.uuid: str | None = identity.uuid if identity is not None else None
        self.computer_details = (
            computer_details if computer_details is not None else sysinfo.computer_details()
        )
        self.sampler = sampler if sampler is not None else sysinfo.VitalsSampler(reactor=self.clock)
        self.connection: PiClusterProtocol | None = None
        #: Lines that carry what a master chose (its messages, errors,
        #: refusals, facts): a few at a time, over every connection, so that
        #: no master can fill this node's SD card.
        self.master_log = LogBudget(
            log, self.clock, "Left out of the log in the last {seconds:g} s: the master's {kinds}",
        )

    def make_handler(self, protocol: PiClusterProtocol) -> SlaveSession:
        return SlaveSession(protocol, self)

    def check_peer(self, protocol: PiClusterProtocol) -> None:
        """Talk only to a master whose certificate the token's CA signed."""
        assert self.token is not None
        try:
            verify_master(protocol.transport, self.token.fingerprint)
        except Exception:
            self.rebuffed()
            raise

    def _run_finished(self, result: dict[str, Any]) -> None:
        """A run ended: tell the master now if connected, else at the next session."""
        handler = getattr(self.connection, "handler", None)
        if isinstance(handler, SlaveSession):
            handler.report_result(result)

    def _after_answers(self, call: Callable[[], Any]) -> None:
        """
        Call C{call} once the master's messages now being read are answered:
        a run that ended at once reports its result in the same write as the
        answer to its C{run_task}, not two reactor turns later.  Outside a
        read, on the reactor's next turn.
        """
        connection = self.connection
        if connection is None or not connection.after_answers(call):
            self.clock.callLater(0, call)

    def buildProtocol(self, addr: Any) -> PiClusterProtocol:
        # Typed as a protocol or None: a plain Factory's is never None.
        self.connection = cast(PiClusterProtocol, super().buildProtocol(addr))
        return self.connection

    def startedConnecting(self, connector: Any) -> None:
        super().startedConnecting(connector)
        self.log.info("Connecting to master {master}", master=self.master)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        lost = DisconnectionException(f"master {self.master}", describe_reason(reason), reason)
        self.log.info(
            "Got disconnection exception with message: {disconnection}", disconnection=str(lost)
        )
        super().clientConnectionFailed(connector, reason)
        self._log_retry()

    def clientConnectionLost(self, connector: Any, reason: Failure) -> None:
        self.connection = None
        super().clientConnectionLost(connector, reason)
        self._log_retry()

    def _log_retry(self) -> None:
        if self.continueTrying and self._callID is not None:
            delay = self._callID.getTime() - self.clock.seconds()
            self.log.info("Reconnecting to master {master} in {delay:.1f} s",
                          master=self.master, delay=delay)


class SlaveService(service.Service):
    """A picluster slave: keeps one connection to the master, come what may."""

    def __init__(self, factory: SlaveFactory, *, reactor: Any = None,
                 clock_watch: service.IService | None = None):
        if reactor is None:
            from twisted.internet import reactor
        self.factory = factory
        self.reactor = reactor
        self.connector: Any = None
        #: Says in the log when the system clock is stepped (L{picluster.clockwatch}).
        self.clock_watch = clock_watch

    def startService(self) -> None:
        super().startService()
        if self.clock_watch is not None:
            self.clock_watch.startService()
        self.factory.continueTrying = True
        self.connector = dial(self.reactor, self.factory.master, self.factory, self.factory.token)

    def stopService(self) -> defer.Deferred[Any] | None:
        """Stop reconnecting, close the connection, and stop the running tasks."""
        super().stopService()
        if self.clock_watch is not None:
            self.clock_watch.stopService()
        self.factory.stopTrying()
        waits = []
        if self.factory.runner is not None:
            waits.append(self.factory.runner.stop())
        if self.factory.identity is not None:
            self.factory.identity.close()
        self.factory.master_log.flush()
        connection = self.factory.connection
        if connection is not None and connection.lost is None:
            waits.append(connection.when_lost())
            connection.close("slave shutting down")
        elif self.connector is not None:
            self.connector.disconnect()
        if not waits:
            return None
        return defer.gatherResults(waits).addCallback(lambda _: None)
