"""
A whole cluster in one process, for trying picluster out: C{picluster demo}.

L{Demo} runs a master (its tasks in memory, its dashboard on the web port)
and a few slaves connected to it over loopback, each with one task slot and
vitals every two seconds, and unless told otherwise a L{PrimesTrickle} that
keeps them busy.  Nothing here is a stand-in: the slaves are real slaves,
sampling this machine, running real C{primes} tasks in child processes,
and the trickle submits through the same L{Client} the C{picluster} command
uses.  Only their hostnames are made up, C{<hostname>-demo-<n>}, so that the
dashboard can tell them apart.
"""

from __future__ import annotations

import errno
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, cast

from twisted.application import service
from twisted.internet import defer, interfaces
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import CannotListenError
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from picluster import config, sysinfo
from picluster.address import MasterAddress
from picluster.client import Client
from picluster.master.service import MasterService
from picluster.slave.session import SlaveFactory, SlaveService
from picluster.trust.cluster import ClusterTrust
from picluster.trust.token import CLIENT, SLAVE, JoinToken
from picluster.wire.errors import DisconnectionException

__all__ = ["Demo", "DemoAddresses", "ListenFailed", "PrimesTrickle", "demo_hostnames"]

#: Seconds between two reports of a demo slave, and between its pings:
#: a lively dashboard rather than a light network.
VITALS_INTERVAL = 2.0
KEEPALIVE = 2.0

#: Seconds between two batches of the demo's tasks.
TRICKLE_INTERVAL = 3.0

#: How wide a range of numbers one C{primes} task counts in: about half a
#: second of a core on a laptop, a few seconds on a Pi.
PRIMES_WIDTH = 5 * 10**7

#: Where the ranges start again from zero: larger numbers need longer sieves.
WRAP_AT = 10**10

log = Logger()


class ListenFailed(Exception):
    """
    The demo could not listen on one of its endpoints.

    @ivar option: Which one: C{"web"} (the dashboard) or C{"port"} (slaves).
    @ivar endpoint: Its description, as given.
    @ivar cause: Why, in a few words (C{"address in use"}).
    """

    def __init__(self, option: str, endpoint: str, cause: str):
        super().__init__(f"cannot listen on {endpoint}: {cause}")
        self.option = option
        self.endpoint = endpoint
        self.cause = cause

    @property
    def any_port(self) -> str:
        """The same endpoint on a port the system picks: C{tcp:0:interface=127.0.0.1}."""
        positional = re.sub(r"^(\s*tcp6?:)\d+(?=:|$)", r"\g<1>0", self.endpoint)
        return re.sub(r"(^|:)port=\d+", r"\g<1>port=0", positional)


@dataclass(frozen=True)
class DemoAddresses:
    """Where a started demo can be reached."""

    #: The dashboard's URL, C{http://127.0.0.1:8080/}.
    dashboard: str
    #: Where slaves and clients connect (C{picluster status --master ...}).
    master: MasterAddress
    #: The demo cluster's state directory: its CA and tokens
    #: (C{picluster status --state-dir ...} takes the client token from it).
    state_dir: str


def demo_hostnames(hostname: str | None, count: int) -> list[str]:
    """The names of C{count} demo slaves on the machine called C{hostname}."""
    base = hostname or "localhost"
    return [f"{base}-demo-{number}" for number in range(1, count + 1)]


class _SharedSampler:
    """
    One machine's vitals for all of the demo's slaves.

    psutil's C{cpu_percent(interval=None)} measures since its previous call
    in the process: slaves sampling one after the other, a few microseconds
    apart, would each report the usage of a sliver of time (0% or 100%).
    So one sample is taken and handed to every slave asking within
    C{fresh_for} seconds of it.
    """

    def __init__(self, sampler: Any, clock: Any, fresh_for: float):
        self._sampler = sampler
        self._clock = clock
        self._fresh_for = fresh_for
        self._taken_at: float | None = None
        self._taken: defer.Deferred[dict[str, Any]] | None = None

    def sample(self) -> defer.Deferred[dict[str, Any]]:
        now = self._clock.seconds()
        if self._taken is None or self._taken_at is None or now - self._taken_at >= self._fresh_for:
            self._taken_at = now
            self._taken = self._sampler.sample()
        shared: defer.Deferred[dict[str, Any]] = defer.Deferred()

        def share(vitals: dict[str, Any]) -> dict[str, Any]:
            shared.callback(dict(vitals))
            return vitals

        self._taken.addCallback(share)
        return shared


class PrimesTrickle(service.Service):
    """
    Keeps a cluster busy with C{primes} tasks: every C{interval} seconds a
    batch of C{batch} tasks, counting the primes of successive ranges of
    C{width} numbers; a batch goes only once the one before is done, so a
    slow cluster is never buried.

    @ivar finished: How many of its tasks have ended so far.
    """

    def __init__(self, master: MasterAddress, *, batch: int, interval: float,
                 token: JoinToken, width: int = PRIMES_WIDTH, reactor: Any = None):
        if reactor is None:
            from twisted.internet import reactor
        self.master = master
        self.token = token
        self.batch = batch
        self.interval = interval
        self.width = width
        self.reactor = reactor
        self.finished = 0
        self.client: Client | None = None
        self._next_start = 0
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        self.client = Client(self.master, reactor=self.reactor, token=self.token,
                             initial_delay=0.2, max_delay=2.0)
        self._loop = LoopingCall(self._submit_batch)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=True).addErrback(
            lambda failure: log.failure("The demo's trickle of tasks stopped", failure))

    def stopService(self) -> defer.Deferred[None]:
        """Submit no more, and hang up (tasks already submitted run on)."""
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self.client is None:
            return defer.succeed(None)
        return self.client.close()

    def _submit_batch(self) -> defer.Deferred[None]:
        # The loop waits for this Deferred before it counts the next interval.
        return defer.Deferred.fromCoroutine(self._run_batch()).addErrback(self._batch_failed)

    async def _run_batch(self) -> None:
        assert self.client is not None
        specs = []
        for _ in range(self.batch):
            if self._next_start >= WRAP_AT:
                self._next_start = 0  # A demo left running for days stays as fast.
            start, self._next_start = self._next_start, self._next_start + self.width
            specs.append({"name": "primes", "args": {"start": start, "stop": start + self.width}})
        submitted = await self.client.submit(specs)
        records = await self.client.wait([entry["id"] for entry in submitted["tasks"]])
        self.finished += len(records)

    def _batch_failed(self, failure: Failure) -> None:
        if not self.running and failure.check(DisconnectionException):
            return  # stopped: close() failed what was waiting
        log.failure("A batch of demo tasks failed", failure)


class Demo(service.MultiService):
    """
    A master and C{slaves} slaves in this process, on loopback.

    The slaves join once the master listens (the slave port may be
    C{tcp:0}); L{when_ready} says where everything is.  Stopping stops the
    trickle, then the slaves, then the master, each waited for.

    @param trickle_interval: Seconds between batches of tasks; C{None}
        submits none.
    """

    def __init__(
        self,
        slaves: int = 3,
        *,
        port: str = config.LOOPBACK_ANY_PORT,
        web: str = config.DEFAULT_WEB,
        trickle_interval: float | None = TRICKLE_INTERVAL,
        primes_width: int = PRIMES_WIDTH,
        reactor: Any = None,
    ):
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor
        if slaves < 1:
            raise ValueError("a demo needs at least one slave")
        self.reactor = reactor
        self.slave_count = slaves
        self.trickle_interval = trickle_interval
        self.primes_width = primes_width
        # Secure like any cluster, with nothing for the user to do: its own
        # CA and tokens, in a directory of its own that goes with it.
        self.state_dir = tempfile.mkdtemp(prefix="picluster-demo-")
        self.trust = ClusterTrust.open(self.state_dir)
        self.master = MasterService(port, reactor=reactor, db=":memory:", web=web,
                                    keepalive=KEEPALIVE, trust=self.trust)
        self.master.setServiceParent(self)
        self.slaves: list[SlaveService] = []
        self.trickle: PrimesTrickle | None = None
        #: How starting ended (where the demo is, or why it is not), and
        #: who waits to know.
        self._outcome: DemoAddresses | Failure | None = None
        self._waiting: list[defer.Deferred[DemoAddresses]] = []

    def startService(self) -> None:
        """Listen; once listening, start the slaves and the trickle."""
        self._outcome = None
        try:
            super().startService()
        except CannotListenError as e:
            # strports services listen at once and raise on failure.
            self._started(Failure(self._listen_failed(e)))
            return
        joined = defer.Deferred.fromCoroutine(self._join())
        joined.addBoth(self._started)

    def when_ready(self) -> defer.Deferred[DemoAddresses]:
        """
        Where the demo is, once its master listens and its slaves are on
        their way; fails with L{ListenFailed} if it cannot listen.
        """
        waiting: defer.Deferred[DemoAddresses] = defer.Deferred()
        if self._outcome is None:
            self._waiting.append(waiting)
        else:
            _fire(waiting, self._outcome)
        return waiting

    def _started(self, outcome: DemoAddresses | Failure) -> None:
        self._outcome = outcome
        waiting, self._waiting = self._waiting, []
        for each in waiting:
            _fire(each, outcome)

    def _listen_failed(self, failure: CannotListenError) -> ListenFailed:
        socket_error = failure.socketError
        if getattr(socket_error, "errno", None) == errno.EADDRINUSE:
            cause = "address in use"
        elif getattr(socket_error, "errno", None) == errno.EACCES:
            cause = "permission denied"
        else:
            cause = str(getattr(socket_error, "strerror", None) or socket_error)
        # The master listens for slaves first, then for the web: if the
        # slave port is open, it was the web's that failed.
        slave_port: list[Any] = []
        self.master.when_listening().addCallbacks(slave_port.append, lambda _: None)
        if slave_port and self.master.web is not None:
            return ListenFailed("web", self.master.web, cause)
        return ListenFailed("port", self.master.port, cause)

    async def _join(self) -> DemoAddresses:
        listening: interfaces.IListeningPort = await self.master.when_listening()
        web: interfaces.IListeningPort = await self.master.when_web_listening()
        # Both are TCP ports (DemoOptions takes tcp: and tcp6: endpoints only): IP addresses.
        slave_address = cast(IPv4Address | IPv6Address, listening.getHost())
        web_address = cast(IPv4Address | IPv6Address, web.getHost())
        master = MasterAddress(_reachable(slave_address.host), slave_address.port)
        web_host = _reachable(web_address.host)
        url = f"http://{f'[{web_host}]' if ':' in web_host else web_host}:{web_address.port}/"
        if not self.running:
            return DemoAddresses(url, master, self.state_dir)
        from picluster.tasks.installed import installed_tasks

        tasks = installed_tasks()
        facts = sysinfo.computer_details()
        sampler = _SharedSampler(sysinfo.VitalsSampler(reactor=self.reactor), self.reactor,
                                 fresh_for=VITALS_INTERVAL / 2)
        for hostname in demo_hostnames(facts.get("hostname"), self.slave_count):
            slave = SlaveService(self._slave_factory(master, tasks, facts, hostname, sampler),
                                 reactor=self.reactor)
            self.slaves.append(slave)
            slave.setServiceParent(self)
        if self.trickle_interval is not None:
            self.trickle = PrimesTrickle(master, batch=self.slave_count,
                                         interval=self.trickle_interval,
                                         width=self.primes_width, reactor=self.reactor,
                                         token=self.trust.token(CLIENT))
            self.trickle.setServiceParent(self)
        return DemoAddresses(url, master, self.state_dir)

    def _slave_factory(self, master: MasterAddress, tasks: Any, facts: dict[str, Any],
                       hostname: str, sampler: _SharedSampler) -> SlaveFactory:
        """One slave as C{twistd picluster-slave --slots 1 --vitals 2} would make it (one run ready)."""
        from picluster.slave.runner import TaskRunner

        runner = TaskRunner(tasks, slots=1, prefetch=1, clock=self.reactor, reactor=self.reactor)
        return SlaveFactory(
            master, vitals_interval=VITALS_INTERVAL, keepalive=KEEPALIVE,
            initial_delay=0.2, max_delay=2.0, computer_details={**facts, "hostname": hostname},
            sampler=sampler, runner=runner, clock=self.reactor, token=self.trust.token(SLAVE),
        )

    def stopService(self) -> defer.Deferred[None]:
        """Stop the trickle, then the slaves, then the master."""
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        # Not MultiService's, which stops every child at once: the slaves
        # would watch their master go and try to reconnect to it.
        service.Service.stopService(self)
        trickle = [self.trickle] if self.trickle is not None else []
        for group in (trickle, self.slaves, [self.master]):
            await defer.gatherResults(
                [defer.maybeDeferred(child.stopService) for child in group if child.running],
                consumeErrors=True,
            )
        # A demo started again gets new slaves, as it gets a new slave port.
        for child in [*trickle, *self.slaves]:
            child.disownServiceParent()
        self.slaves, self.trickle = [], None

    def remove_state(self) -> None:
        """Remove the demo's CA and tokens: call once it has stopped for good."""
        shutil.rmtree(self.state_dir, ignore_errors=True)


def _fire(waiting: defer.Deferred[Any], outcome: Any) -> None:
    if isinstance(outcome, Failure):
        waiting.errback(outcome)
    else:
        waiting.callback(outcome)


def _reachable(host: str) -> str:
    """Where to connect to reach a port listening on C{host}."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host
