"""
The Python client of a picluster master: submit tasks, look at them, wait.

L{Client} is the public surface; every method returns a Deferred.  Under it,
a L{ClientFactory} (a L{ReconnectingClientFactory}) keeps one connection to
the master, on which L{ClientConnection} says hello as a C{"client"} and
hands the master's pushed C{task_update}s to the client.

A wrong address fails L{Client.connect} at once; after a first welcome,
losing the master is ridden out: requests wait for the next connection and
are sent again (submissions carry idempotency keys, so a resent one is never
stored twice), and open waits watch their tasks again.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from picluster.address import MasterAddress, dial
from picluster.client.connection import (
    MAX_WATCH_IDS,
    ClientConnection,
    ClientFactory,
    UnexpectedReply,
    checked_payload,
    submit_batches,
)
from picluster.trust.token import TOKEN_ENV, JoinToken, parse_token
from picluster.wire.errors import (
    BadReply,
    DisconnectionException,
    HandshakeError,
    RemoteError,
    describe_reason,
)
from picluster.wire.messages import MAX_SLAVES_LIMIT
from picluster.wire.protocol import PiClusterProtocol

__all__ = [
    "Client", "ClientConnection", "ClientFactory", "HandshakeError", "MasterUnreachable",
    "UnexpectedReply", "UnknownTask",
]

#: States a task never leaves.
FINISHED_STATES = frozenset({"done", "failed", "cancelled"})

Record = dict[str, Any]

log = Logger()


#: Pages of slaves L{Client.all_slaves} reads at most: a million slaves.
MAX_PAGES = 1000


def _asked(message_type: str, payload: Any) -> str:
    """A request as a complaint names it: "info status" says more than "info"."""
    if isinstance(payload, dict) and isinstance(payload.get("question"), str):
        payload = payload["question"]
    return f"{message_type} {payload}" if isinstance(payload, str) else message_type


class UnknownTask(LookupError):
    """The master has no task with this id (or these ids)."""

    def __init__(self, task_ids: Iterable[int]):
        self.task_ids = sorted(task_ids)
        noun = "task" if len(self.task_ids) == 1 else "tasks"
        super().__init__(f"no {noun} {', '.join(map(str, self.task_ids))}")


class MasterUnreachable(DisconnectionException):
    """The first connection to the master could not be made."""

    def __init__(self, peer: str, cause: str, reason: Failure | None = None):
        super().__init__(peer, cause, reason)
        self.args = (f"cannot reach {peer}: {cause}",)


class _Wait:
    """One L{Client.wait}: the tasks still open and the records of the rest."""

    def __init__(self, client: Client, ids: list[int], on_update: Callable[[Record], Any] | None):
        self.client = client
        self.ids = ids
        self.open = set(ids)
        self.records: dict[int, Record] = {}
        self.on_update = on_update
        self.done: defer.Deferred[dict[int, Record]] = defer.Deferred(lambda _: self._end())

    def _end(self) -> None:
        if self in self.client._waits:
            self.client._waits.remove(self)

    def take(self, record: Record) -> None:
        """Note a record; a finished one closes its task."""
        task_id = record["id"]
        if self.done.called or task_id not in self.open or record["state"] not in FINISHED_STATES:
            return
        self.open.discard(task_id)
        self.records[task_id] = record
        if self.on_update is not None:
            try:
                self.on_update(record)
            except Exception:
                self.fail(Failure())
                return
        if not self.open:
            self._end()
            self.done.callback({task_id: self.records[task_id] for task_id in self.ids})

    def take_reply(self, payload: dict[str, Any], asked: list[int]) -> None:
        seen = set()
        for record in payload["tasks"]:
            seen.add(record["id"])
            self.take(record)
        missing = (set(asked) - seen) & self.open
        if missing:
            self.fail(Failure(UnknownTask(missing)))

    def fail(self, failure: Failure) -> None:
        if not self.done.called:
            self._end()
            self.done.errback(failure)


class Client:
    """
    Talks to one master on behalf of a program: submits tasks, lists,
    cancels and waits for them.

    With C{reconnect} (the default) a lost master is waited for, as long as
    it takes; without it, the loss fails whatever was waiting.  Further
    C{settings} (C{keepalive}, C{request_timeout}, C{max_frame}) go to the
    L{ClientFactory}.

    @ivar on_lost: Called with the L{DisconnectionException} each time an
        established connection goes while the client keeps reconnecting,
        so that a program can tell its user.
    """

    def __init__(
        self,
        master: MasterAddress,
        *,
        reactor: Any = None,
        token: JoinToken | str | None = None,
        insecure: bool = False,
        reconnect: bool = True,
        initial_delay: float = 1.0,
        max_delay: float = 60.0,
        **settings: Any,
    ):
        if token is None and not insecure:
            token = os.environ.get(TOKEN_ENV) or None
        if isinstance(token, str):
            token = parse_token(token)
        if token is None and not insecure:
            raise ValueError(
                f"a master is reached with a client token (picluster token --client on the"
                f" master; token=..., or ${TOKEN_ENV}), or insecure=True for a master run"
                " with --insecure"
            )
        if token is not None and token.role != "client":
            raise ValueError(f"a {token.credential} token cannot be a client's")
        if reactor is None:
            from twisted.internet import reactor
        self.master = master
        self.reactor = reactor
        self.reconnect = reconnect
        self.factory = ClientFactory(
            master, self, initial_delay=initial_delay, max_delay=max_delay, token=token,
            clock=reactor, **settings,
        )
        self.connection: PiClusterProtocol | None = None
        self.on_lost: Callable[[DisconnectionException], Any] | None = None
        self._connector: Any = None
        # Whether this series of attempts has had a welcome: until it has,
        # a failure is the user's wrong address and ends the series.
        self._was_welcomed = False
        self._lost: DisconnectionException | None = None
        self._closed = False
        self._ready_waiters: list[defer.Deferred[PiClusterProtocol]] = []
        self._waits: list[_Wait] = []

    # -- connection ------------------------------------------------------

    def connect(self) -> defer.Deferred[None]:
        """
        Connect, firing once the master has welcomed us.

        @return: A Deferred failing with L{MasterUnreachable} (a
            L{DisconnectionException}) if the first attempt fails.
        """
        self._lost = None
        return self._ready().addCallback(lambda _: None)

    def close(self) -> defer.Deferred[None]:
        """Stop trying, drop the connection, fail whatever still waits on it."""
        self._closed = True
        connector = self._connector
        self._give_up(Failure(self._disconnection("client closed")))
        connection = self.factory.connection
        if connection is not None and connection.lost is None:
            gone = connection.when_lost()
            connection.close("client closed")
            return gone.addCallback(lambda _: None)
        if connector is not None:
            connector.disconnect()
        return defer.succeed(None)

    def _disconnection(self, cause: str, reason: Failure | None = None) -> DisconnectionException:
        return DisconnectionException(f"master {self.master}", cause, reason)

    def _live_connection(self) -> PiClusterProtocol | None:
        if self.connection is not None and self.connection.lost is None:
            return self.connection
        return None

    def _ready(self) -> defer.Deferred[PiClusterProtocol]:
        """A welcomed connection: the one we have, or the next one."""
        if self._closed:
            return defer.fail(self._disconnection("client closed"))
        connection = self._live_connection()
        if connection is not None:
            return defer.succeed(connection)
        if self._lost is not None:
            lost = self._lost
            return defer.fail(DisconnectionException(lost.peer, lost.cause, lost.reason))

        def forget(waiter: defer.Deferred[PiClusterProtocol]) -> None:
            self._ready_waiters.remove(waiter)

        waiter: defer.Deferred[PiClusterProtocol] = defer.Deferred(forget)
        self._ready_waiters.append(waiter)
        if self._connector is None:
            self._was_welcomed = False
            self.factory.resetDelay()
            self.factory.continueTrying = True
            self._connector = dial(self.reactor, self.master, self.factory, self.factory.token)
        return waiter

    def _connected(self, connection: PiClusterProtocol) -> None:
        if self._was_welcomed:
            log.info("Reconnected to master {master}", master=self.master)
        self._was_welcomed = True
        self.connection = connection
        waiters, self._ready_waiters = self._ready_waiters, []
        for waiter in waiters:
            waiter.callback(connection)
        for waiting in list(self._waits):
            self._send_watch(waiting, connection)

    def _connect_failed(self, reason: Failure) -> None:
        if not self._was_welcomed and not self._closed:
            self._give_up(Failure(MasterUnreachable(
                f"master {self.master}", describe_reason(reason), reason)))

    def _handshake_failed(self, failure: Failure) -> None:
        if not self._was_welcomed:
            self._give_up(failure)
        else:
            log.failure("Master {master} did not welcome us", failure, master=self.master)

    def _disconnected(self, connection: PiClusterProtocol, lost: DisconnectionException) -> None:
        if connection is not self.connection:
            # Lost before its welcome: only a first attempt's loss matters.
            if not self._was_welcomed and self._connector is not None:
                self._give_up(Failure(MasterUnreachable(lost.peer, lost.cause, lost.reason)))
            return
        self.connection = None
        if self._closed:
            return
        if self.reconnect:
            log.info("Lost master {master}: {cause}; reconnecting",
                     master=self.master, cause=lost.cause)
            if self.on_lost is not None:
                self.on_lost(lost)
            return
        self._lost = lost
        self._give_up(Failure(DisconnectionException(lost.peer, lost.cause, lost.reason)))

    def _give_up(self, failure: Failure) -> None:
        """Stop connecting; fail everything waiting for a connection."""
        self.factory.stopTrying()
        self._connector = None
        waiters, self._ready_waiters = self._ready_waiters, []
        for waiter in waiters:
            waiter.errback(failure)
        for waiting in list(self._waits):
            waiting.fail(failure)

    # -- requests -----------------------------------------------------------

    def _request(
        self,
        message_type: str,
        payload: Any,
        reply_type: str,
        after_resent_refusal: Callable[[RemoteError], Any] | None = None,
    ) -> defer.Deferred[dict[str, Any]]:
        """
        Send a request until it is answered, riding out lost connections
        when reconnecting; fire with the reply's payload.
        """
        return defer.Deferred.fromCoroutine(
            self._request_until_answered(message_type, payload, reply_type, after_resent_refusal)
        )

    async def _request_until_answered(
        self,
        message_type: str,
        payload: Any,
        reply_type: str,
        after_resent_refusal: Callable[[RemoteError], Any] | None,
    ) -> dict[str, Any]:
        resent = False
        while True:
            connection = await self._ready()
            try:
                reply = await connection.request(message_type, payload)
            except DisconnectionException:
                if not self.reconnect or self._closed:
                    raise
                resent = True
                continue
            except RemoteError as refusal:
                if resent and after_resent_refusal is not None:
                    return await after_resent_refusal(refusal)
                raise
            except BadReply as bad:
                raise UnexpectedReply(
                    f"master answered {_asked(message_type, payload)} with a {bad.reply_type}"
                    " we cannot read"
                ) from None
            return checked_payload(_asked(message_type, payload), reply, reply_type)

    def submit(self, specs: list[dict[str, Any]]) -> defer.Deferred[dict[str, Any]]:
        """
        Submit task specs; fire with the merged C{submitted} payload, its
        C{tasks} in the order of C{specs}.

        Specs without a C{key} get a fresh one first, so that a batch resent
        after a reconnection is answered as a duplicate, not stored again.
        A large submission goes in several messages: each is all-or-nothing,
        and a refusal's C{index} is made to count from the first spec.
        """
        try:
            batches = submit_batches(specs)
        except (TypeError, ValueError):
            return defer.fail()
        return defer.Deferred.fromCoroutine(self._submit(batches))

    async def _submit(self, batches: list[list[dict[str, Any]]]) -> dict[str, Any]:
        submitted: dict[str, Any] = {"tasks": [], "warnings": []}
        offset = 0
        for batch in batches:
            try:
                payload = await self._request("submit", {"tasks": batch}, "submitted")
            except RemoteError as refusal:
                details = refusal.reply.get("payload")
                if isinstance(details, dict) and type(details.get("index")) is int:
                    details["index"] += offset
                raise
            submitted["tasks"].extend(payload["tasks"])
            submitted["warnings"].extend(payload.get("warnings") or [])
            offset += len(batch)
        return submitted

    def tasks(
        self,
        ids: Iterable[int] | None = None,
        state: str | None = None,
        limit: int | None = None,
        after: int | None = None,
        order: str | None = None,
    ) -> defer.Deferred[list[Record]]:
        """
        The records matching a query, by id: the oldest first, or with
        C{order="newest"} the newest first (C{after} then asks for smaller
        ids).  The master's limit is 100 by default.
        """
        query: dict[str, Any] = {}
        if ids is not None:
            query["ids"] = list(ids)
        for name, value in (("state", state), ("limit", limit), ("after", after), ("order", order)):
            if value is not None:
                query[name] = value
        return self._request("tasks", query, "tasks").addCallback(lambda payload: payload["tasks"])

    def task(self, task_id: int) -> defer.Deferred[Record]:
        """One task's record; fails with L{UnknownTask} when the master has none."""

        def pick(records: list[Record]) -> Record:
            for record in records:
                if record["id"] == task_id:
                    return record
            raise UnknownTask([task_id])

        return self.tasks(ids=[task_id], limit=1).addCallback(pick)

    def cancel(self, task_id: int) -> defer.Deferred[Record]:
        """
        Cancel a task; fire with its record.

        A cancel resent after a lost connection may have got through the
        first time: if the master then refuses it, the task is looked at,
        and if it is cancelled that counts as success.
        """

        async def perhaps_already(refusal: RemoteError) -> dict[str, Any]:
            record = await self.task(task_id)
            if record["state"] != "cancelled":
                raise refusal
            return {"tasks": [record]}

        def first(payload: dict[str, Any]) -> Record:
            if not payload["tasks"]:
                raise UnexpectedReply("master answered cancel with no task")
            return payload["tasks"][0]

        return self._request("cancel", {"id": task_id}, "tasks", perhaps_already).addCallback(first)

    def status(self, **page: Any) -> defer.Deferred[dict[str, Any]]:
        """
        The cluster at a glance, as C{picluster status} shows it: the
        master's C{info status} payload, C{{"master": {...}, "tasks":
        {state: count}, "summary": {...}, "slaves": [...], "total",
        "more", "next"}}, with the first page of slaves.

        @param page: Which page of slaves: C{limit}, C{after}, C{order},
            C{state}, C{search}, as in an InfoQuery (docs: protocol).
        """
        return self._request("info", {"question": "status", **page} if page else "status", "status")

    def slaves(self, **page: Any) -> defer.Deferred[dict[str, Any]]:
        """
        One page of slaves, as C{/api/slaves} lists them: C{{"slaves":
        [...], "total", "more", "next"}}; ask again with C{after=next}
        while C{more}.  C{page} as for L{status}.
        """
        return self._request("info", {"question": "slaves", **page}, "slaves")

    async def all_slaves(self, **page: Any) -> list[dict[str, Any]]:
        """
        Every slave the query matches, a page at a time (at most 1,000 to a
        request).  A master whose pages do not move on is not followed
        round in circles: that is an L{UnexpectedReply}.
        """
        page.setdefault("limit", MAX_SLAVES_LIMIT)
        found: list[dict[str, Any]] = []
        for _ in range(MAX_PAGES):
            listed = await self.slaves(**page)
            found.extend(listed["slaves"])
            if not listed["more"] or not listed["next"]:
                return found
            if listed["next"] == page.get("after") or not listed["slaves"]:
                break
            page["after"] = listed["next"]
        raise UnexpectedReply("master's pages of slaves do not end")

    def wait(
        self, ids: Iterable[int], on_update: Callable[[Record], Any] | None = None
    ) -> defer.Deferred[dict[int, Record]]:
        """
        Wait until every task in C{ids} is done, failed or cancelled.

        @param on_update: Called with each record as its task finishes.
        @return: A Deferred firing with id to final record, in the order of
            C{ids}; failing with L{UnknownTask} for ids the master does not
            know, and with L{DisconnectionException} only when not
            reconnecting.
        """
        waiting = _Wait(self, list(dict.fromkeys(ids)), on_update)
        if not waiting.ids:
            waiting.done.callback({})
            return waiting.done
        self._waits.append(waiting)
        connection = self._live_connection()
        if connection is not None:
            self._send_watch(waiting, connection)
        else:
            # The next welcome sends the watch; this only makes sure a
            # connection is on its way, and fails the wait if none can be.
            self._ready().addErrback(waiting.fail)
        return waiting.done

    def _send_watch(self, waiting: _Wait, connection: PiClusterProtocol) -> None:
        still_open = sorted(waiting.open)
        for start in range(0, len(still_open), MAX_WATCH_IDS):
            asked = still_open[start : start + MAX_WATCH_IDS]
            watched = connection.request("watch", {"ids": asked}).addCallback(
                lambda reply: checked_payload("watch", reply, "tasks"))
            watched.addCallback(waiting.take_reply, asked)
            watched.addErrback(self._watch_failed, waiting)

    def _watch_failed(self, failure: Failure, waiting: _Wait) -> None:
        if failure.check(DisconnectionException) and self.reconnect and not self._closed:
            return  # watched again on the next welcome
        waiting.fail(failure)

    def _task_updated(self, record: Record) -> None:
        for waiting in list(self._waits):
            waiting.take(record)
