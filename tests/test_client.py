"""
Tests for L{picluster.client}: the client's half of the tasks contract,
its first connection, and riding out a master that goes and comes back.

Everything runs in memory: a L{Network} reactor whose connection attempts
the test answers (refused, or joined to a L{FakeMaster} through iosim), and
its clock.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial import unittest

from picluster.address import MasterAddress
from picluster.client import Client, MasterUnreachable, UnexpectedReply, UnknownTask
from picluster.client.connection import MAX_BATCH_TASKS
from picluster.trust.token import TOKEN_ENV, JoinToken, new_secret
from picluster.wire.errors import DisconnectionException, RemoteError

from .fakemaster import FakeMaster, FakeMasterConnection

MASTER = MasterAddress("10.0.0.1", 12345)


class FakeConnector:
    """One connection attempt of a client, for the test to answer."""

    def __init__(self, network: Network, factory: Any):
        self.network = network
        self.factory = factory
        self.client_protocol: Any = None
        self.stopped = False

    def connect(self) -> None:
        self.network.attempts.append(self)

    def stopConnecting(self) -> None:
        self.stopped = True

    def disconnect(self) -> None:
        self.stopped = True
        if self in self.network.attempts:
            self.network.attempts.remove(self)

    def getDestination(self) -> IPv4Address:
        return IPv4Address("TCP", MASTER.host, MASTER.port)


class Network(MemoryReactorClock):
    """A reactor and clock whose TCP connection attempts the test answers."""

    def __init__(self) -> None:
        super().__init__()
        self.attempts: list[FakeConnector] = []

    def connectTCP(self, host: str, port: int, factory: Any, timeout: float = 30,
                   bindAddress: Any = None) -> FakeConnector:
        self.tcpClients.append((host, port, factory, timeout, bindAddress))
        connector = FakeConnector(self, factory)
        connector.connect()
        return connector

    def refuse(self) -> None:
        """Refuse the pending connection attempt."""
        connector = self.attempts.pop(0)
        connector.factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))

    def accept(self, server: protocol.Protocol) -> iosim.IOPump:
        """Join the pending attempt to C{server}; returns the pump, already flushed."""
        connector = self.attempts.pop(0)
        client = connector.factory.buildProtocol(connector.getDestination())
        connector.client_protocol = client
        lose = client.connectionLost

        def lost(reason: Failure) -> None:
            # What a real connector does after the protocol has gone.
            lose(reason)
            connector.factory.clientConnectionLost(connector, reason)

        client.connectionLost = lost
        return iosim.connect(
            server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client),
            clock=self,
        )


class ClientTestCase(unittest.TestCase):
    """A client on a L{Network}, and a fake master to accept it."""

    def setUp(self) -> None:
        self.network = Network()
        self.master = FakeMaster(clock=self.network, keepalive=5)

    def make_client(self, **settings: Any) -> Client:
        settings.setdefault("insecure", True)
        client = Client(MASTER, reactor=self.network, **settings)
        client.factory.jitter = 0
        return client

    def join(self) -> iosim.IOPump:
        """Accept the pending attempt on the fake master."""
        return self.network.accept(self.master.buildProtocol(IPv4Address("TCP", "10.0.0.9", 5000)))

    def connected(self, **settings: Any) -> tuple[Client, iosim.IOPump]:
        client = self.make_client(**settings)
        ready = client.connect()
        pump = self.join()
        self.successResultOf(ready)
        return client, pump

    def lose(self, pump: iosim.IOPump) -> None:
        """The master drops every connection."""
        self.master.drop_connections()
        pump.flush()


class TokenTests(unittest.TestCase):
    """A client needs a client token (given, or in $PICLUSTER_TOKEN), or to say it is plain."""

    def setUp(self) -> None:
        saved = os.environ.pop(TOKEN_ENV, None)
        if saved is not None:
            self.addCleanup(os.environ.__setitem__, TOKEN_ENV, saved)
        self.addCleanup(os.environ.pop, TOKEN_ENV, None)

    def token(self, credential: str) -> JoinToken:
        return JoinToken("ab" * 32, credential, new_secret())

    def test_fromTheEnvironment(self) -> None:
        """Given no token, the client takes $PICLUSTER_TOKEN's."""
        token = self.token("client")
        os.environ[TOKEN_ENV] = str(token)
        client = Client(MASTER, reactor=MemoryReactorClock())
        self.assertEqual(client.factory.token, token)
        self.assertTrue(client.factory.tls)

    def test_noneRefused(self) -> None:
        """No token and no insecure=True: refused at once, saying where a token comes from."""
        error = self.assertRaises(ValueError, Client, MASTER, reactor=MemoryReactorClock())
        self.assertIn("$PICLUSTER_TOKEN", str(error))

    def test_slaveTokenRefused(self) -> None:
        """A slave's token is not a client's."""
        error = self.assertRaises(ValueError, Client, MASTER, reactor=MemoryReactorClock(),
                                  token=str(self.token("slave")))
        self.assertIn("a slave token cannot be a client's", str(error))

    def test_insecureIgnoresTheEnvironment(self) -> None:
        """insecure=True means plain, whatever the environment holds."""
        os.environ[TOKEN_ENV] = str(self.token("client"))
        client = Client(MASTER, reactor=MemoryReactorClock(), insecure=True)
        self.assertIsNone(client.factory.token)


class ConnectTests(ClientTestCase):
    """
    The first connection: hello as a client, or a clear error at once.
    """

    def test_helloAsClient(self) -> None:
        """On connecting the client says hello as a client, and connect() fires on welcome."""
        client, pump = self.connected()
        # As the master reads it: the version 2 fields are unset in plain mode.
        self.assertEqual(self.master.hellos, [{"version": 1, "uuid": None, "role": "client",
                                              "credential": None, "proof": None, "node_proof": None}])
        self.assertEqual(self.network.tcpClients[0][:2], ("10.0.0.1", 12345))
        self.assertIsNotNone(client.connection)

    def test_firstAttemptRefused(self) -> None:
        """A refused first attempt fails connect() at once, saying where and why."""
        client = self.make_client()
        ready = client.connect()
        self.network.refuse()
        failure = self.failureResultOf(ready, MasterUnreachable)
        self.assertIsInstance(failure.value, DisconnectionException)
        self.assertEqual(str(failure.value), "cannot reach master 10.0.0.1:12345: connection refused")
        self.assertEqual(self.network.getDelayedCalls(), [])

    def test_lostBeforeWelcome(self) -> None:
        """A first connection that closes before its welcome fails connect()."""
        client = self.make_client()
        ready = client.connect()

        class Slammer(protocol.Protocol):
            def connectionMade(self) -> None:
                self.transport.loseConnection()

        self.network.accept(Slammer()).flush()
        failure = self.failureResultOf(ready, MasterUnreachable)
        self.assertIn("cannot reach master 10.0.0.1:12345", str(failure.value))
        self.assertEqual(self.network.attempts, [])

    def test_helloRefused(self) -> None:
        """A master refusing the hello fails connect() with its readable RemoteError."""
        self.patch(FakeMasterConnection, "msg_hello", lambda self, payload: (
            "bad_message", {"error": "clients are not welcome here"}))
        client = self.make_client()
        ready = client.connect()
        self.join()
        failure = self.failureResultOf(ready, RemoteError)
        self.assertIn("clients are not welcome here", str(failure.value))

    def test_requestConnects(self) -> None:
        """A request made before connect() starts the connection and waits for it."""
        client = self.make_client()
        listed = client.tasks()
        self.assertNoResult(listed)
        self.join()
        self.assertEqual(self.successResultOf(listed), [])

    def test_staysConnectedWhileWaiting(self) -> None:
        """A client waiting quietly pings often enough that the master keeps it."""
        client, pump = self.connected()
        for _ in range(60):
            self.network.advance(1)
            pump.flush()
        self.assertEqual(len(self.master.connections), 1)
        self.assertIsNotNone(client.connection)

    def test_close(self) -> None:
        """close() drops the connection, fails what waits, and leaves no timer behind."""
        client, pump = self.connected()
        self.master.store({"name": "primes"})
        waiting = client.wait([1])
        pump.flush()
        closed = client.close()
        pump.flush()
        self.successResultOf(closed)
        self.failureResultOf(waiting, DisconnectionException)
        self.assertEqual(self.master.connections, [])
        self.assertEqual(self.network.getDelayedCalls(), [])

    def test_closeWhileConnecting(self) -> None:
        """close() during the first attempt stops it."""
        client = self.make_client()
        ready = client.connect()
        connector = self.network.attempts[0]
        self.successResultOf(client.close())
        self.assertTrue(connector.stopped)
        self.failureResultOf(ready, DisconnectionException)


class ReconnectTests(ClientTestCase):
    """
    After a first welcome, losing the master is ridden out.
    """

    def test_backoff(self) -> None:
        """Retries come after 1, 2, 4 s, and the next welcome resets the delay."""
        client, pump = self.connected(initial_delay=1.0, max_delay=60.0)
        losses: list[DisconnectionException] = []
        client.on_lost = losses.append
        self.lose(pump)
        self.assertEqual([lost.cause for lost in losses], ["connection closed by peer"])
        self.network.advance(0.9)
        self.assertEqual(self.network.attempts, [])
        self.network.advance(0.1)
        self.network.refuse()
        self.network.advance(1.9)
        self.assertEqual(self.network.attempts, [])
        self.network.advance(0.1)
        self.network.refuse()
        self.network.advance(4)
        self.join()
        self.assertIsNotNone(client.connection)
        self.assertEqual(client.factory.delay, 1.0)
        self.assertEqual(len(losses), 1)
        self.assertEqual(len(self.master.hellos), 2)

    def test_requestWaitsForReconnection(self) -> None:
        """A request made while disconnected is sent on the next connection."""
        client, pump = self.connected()
        self.lose(pump)
        listed = client.tasks(state="queued")
        self.assertNoResult(listed)
        self.network.advance(1)
        self.join()
        self.assertEqual(self.successResultOf(listed), [])
        self.assertEqual(self.master.queries, [{"state": "queued"}])

    def test_submitResentOnce(self) -> None:
        """A submission whose reply was lost is resent with its keys and stored once."""
        client, pump = self.connected()
        self.master.hang_up_on.add("submit")
        submitted = client.submit([{"name": "primes"}, {"name": "primes"}])
        pump.flush()
        self.assertNoResult(submitted)
        self.network.advance(1)
        self.join()
        result = self.successResultOf(submitted)
        self.assertEqual([(t["id"], t["duplicate"]) for t in result["tasks"]],
                         [(1, True), (2, True)])
        self.assertEqual(len(self.master.tasks), 2)
        first, second = self.master.submits
        self.assertEqual(first, second)

    def test_cancelResent(self) -> None:
        """A cancel resent after its reply was lost counts once the task is cancelled."""
        client, pump = self.connected()
        self.master.store({"name": "primes"})
        self.master.hang_up_on.add("cancel")
        cancelled = client.cancel(1)
        pump.flush()
        self.network.advance(1)
        self.join()
        self.assertEqual(self.successResultOf(cancelled)["state"], "cancelled")

    def test_waitWatchesAgain(self) -> None:
        """After a reconnection a wait watches again only the tasks still open."""
        client, pump = self.connected()
        for _ in range(3):
            self.master.store({"name": "primes"})
        waiting = client.wait([1, 2, 3])
        pump.flush()
        self.master.finish(1, "one")
        pump.flush()
        self.lose(pump)
        self.master.finish(2, "two")
        self.assertNoResult(waiting)
        self.network.advance(1)
        pump = self.join()
        self.assertEqual(self.master.watches, [[1, 2, 3], [2, 3]])
        self.master.finish(3, "three")
        pump.flush()
        records = self.successResultOf(waiting)
        self.assertEqual([r["result"] for r in records.values()], ["one", "two", "three"])

    def test_noReconnect(self) -> None:
        """With reconnect off a loss fails the wait, later requests, and retries nothing."""
        client, pump = self.connected(reconnect=False)
        self.master.store({"name": "primes"})
        waiting = client.wait([1])
        pump.flush()
        self.lose(pump)
        self.failureResultOf(waiting, DisconnectionException)
        self.failureResultOf(client.tasks(), DisconnectionException)
        self.assertEqual(self.network.getDelayedCalls(), [])
        self.assertEqual(self.network.attempts, [])


class SubmitTests(ClientTestCase):
    """
    Submissions get keys, go in batches, and come back merged in order.
    """

    def test_keysBeforeSending(self) -> None:
        """Specs without a key get a distinct fresh one; a given key is kept."""
        client, pump = self.connected()
        specs = [{"name": "a"}, {"name": "b", "key": "mine"}, {"name": "c", "key": None}]
        submitted = client.submit(specs)
        pump.flush()
        self.successResultOf(submitted)
        [sent] = self.master.submits
        keys = [spec["key"] for spec in sent]
        self.assertEqual(keys[1], "mine")
        self.assertRegex(keys[0], "^[0-9a-f]{32}$")
        self.assertRegex(keys[2], "^[0-9a-f]{32}$")
        self.assertNotEqual(keys[0], keys[2])
        self.assertEqual(specs[0], {"name": "a"}, "the caller's spec was changed")

    def test_batchesByCount(self) -> None:
        """A large submission goes in messages of at most 500 specs, merged in order."""
        client, pump = self.connected()
        submitted = client.submit([{"name": "n", "args": {"i": i}} for i in range(1200)])
        pump.flush()
        result = self.successResultOf(submitted)
        self.assertEqual([len(batch) for batch in self.master.submits], [MAX_BATCH_TASKS, 500, 200])
        self.assertEqual([t["id"] for t in result["tasks"]], list(range(1, 1201)))
        self.assertEqual([self.master.tasks[i]["args"]["i"] for i in (1, 600, 1200)], [0, 599, 1199])

    def test_batchesBySize(self) -> None:
        """Large specs go in messages of at most about 512 KiB."""
        client, pump = self.connected()
        submitted = client.submit([{"name": "n", "args": {"blob": "x" * 100_000}}] * 12)
        pump.flush()
        self.successResultOf(submitted)
        self.assertEqual([len(batch) for batch in self.master.submits], [5, 5, 2])

    def test_refusalIndexCountsFromFirstSpec(self) -> None:
        """A refused spec in a later batch is named by its index in the whole list."""
        self.master.known_names = {"ok"}
        client, pump = self.connected()
        specs = [{"name": "ok"}] * 600
        specs[549] = {"name": "nope"}
        submitted = client.submit(specs)
        pump.flush()
        failure = self.failureResultOf(submitted, RemoteError)
        self.assertEqual(failure.value.reply["payload"]["index"], 549)
        self.assertIn("unknown task 'nope'", str(failure.value))

    def test_warnings(self) -> None:
        """The master's warnings come back with the submitted tasks."""
        self.master.warn_about.add("lonely")
        client, pump = self.connected()
        submitted = client.submit([{"name": "lonely"}])
        pump.flush()
        self.assertEqual(self.successResultOf(submitted)["warnings"],
                         ["no slave offers 'lonely' right now"])

    def test_notASpec(self) -> None:
        """Something that is not a spec fails the submission before anything is sent."""
        client, pump = self.connected()
        self.failureResultOf(client.submit(["primes"]), TypeError)
        self.failureResultOf(client.submit([{"name": "x", "args": {"n": float("nan")}}]), ValueError)
        self.assertEqual(self.master.submits, [])

    def test_nothingToSubmit(self) -> None:
        """An empty submission answers at once without a message."""
        client = self.make_client()
        self.assertEqual(self.successResultOf(client.submit([])), {"tasks": [], "warnings": []})
        self.assertEqual(self.network.attempts, [])


class QueryTests(ClientTestCase):
    """
    tasks, task and cancel.
    """

    def test_tasksQuery(self) -> None:
        """tasks() sends only the filters given and returns the records."""
        client, pump = self.connected()
        self.master.store({"name": "primes"})
        listed = client.tasks(state="queued", limit=5, after=0)
        pump.flush()
        self.assertEqual([r["id"] for r in self.successResultOf(listed)], [1])
        self.assertEqual(self.master.queries, [{"state": "queued", "limit": 5, "after": 0}])

    def test_taskAbsent(self) -> None:
        """task() of an id the master does not know fails with 'no task N'."""
        client, pump = self.connected()
        looked = client.task(42)
        pump.flush()
        failure = self.failureResultOf(looked, UnknownTask)
        self.assertIsInstance(failure.value, LookupError)
        self.assertEqual(str(failure.value), "no task 42")

    def test_cancel(self) -> None:
        """cancel() fires with the cancelled record."""
        client, pump = self.connected()
        self.master.store({"name": "primes"})
        cancelled = client.cancel(1)
        pump.flush()
        self.assertEqual(self.successResultOf(cancelled)["state"], "cancelled")

    def test_cancelRefused(self) -> None:
        """The master's refusal of a cancel reaches the caller as it is."""
        client, pump = self.connected()
        cancelled = client.cancel(7)
        pump.flush()
        failure = self.failureResultOf(cancelled, RemoteError)
        self.assertIn("no task 7", str(failure.value))


class SlavePagesTests(ClientTestCase):
    """all_slaves() reads every page, and does not follow a master round in circles."""

    def pages(self, answer: Any) -> Any:
        FakeMasterConnection.msg_info = answer  # type: ignore[attr-defined]
        self.addCleanup(delattr, FakeMasterConnection, "msg_info")
        client, pump = self.connected()
        found = defer.Deferred.fromCoroutine(client.all_slaves(state="trouble"))
        pump.flush()
        return found

    def test_everyPage(self) -> None:
        """Pages are asked for with the previous page's cursor until there are no more."""
        asked = []

        def answer(handler: Any, query: Any) -> tuple[str, Any]:
            asked.append((query.after, query.state, query.limit))
            number = 0 if query.after is None else int(query.after) + 1
            return ("slaves", {"slaves": [{"uuid": str(number)}], "total": 3, "more": number < 2,
                               "next": str(number) if number < 2 else None})

        found = self.successResultOf(self.pages(answer))
        self.assertEqual([slave["uuid"] for slave in found], ["0", "1", "2"])
        self.assertEqual(asked, [(None, "trouble", 1000), ("0", "trouble", 1000), ("1", "trouble", 1000)])

    def test_pagesThatDoNotMoveOn(self) -> None:
        """A master handing out the same cursor again is an UnexpectedReply, not a loop."""

        def answer(handler: Any, query: Any) -> tuple[str, Any]:
            return ("slaves", {"slaves": [{"uuid": "x"}], "total": 9, "more": True, "next": "same"})

        failure = self.failureResultOf(self.pages(answer), UnexpectedReply)
        self.assertEqual(str(failure.value), "master's pages of slaves do not end")


class WaitTests(ClientTestCase):
    """
    wait() collects finished records, from the watch reply and pushed updates.
    """

    def setUp(self) -> None:
        super().setUp()
        for _ in range(3):
            self.master.store({"name": "primes"})

    def test_waitsForAll(self) -> None:
        """The wait fires once all tasks are finished, in the order asked, updates on the way."""
        client, pump = self.connected()
        updates: list[int] = []
        waiting = client.wait([3, 1, 2], on_update=lambda record: updates.append(record["id"]))
        pump.flush()
        self.master.finish(2, "two")
        self.master.fail(1, "ValueError", "bad")
        pump.flush()
        self.assertNoResult(waiting)
        self.master.settle(3, state="cancelled")
        pump.flush()
        records = self.successResultOf(waiting)
        self.assertEqual(list(records), [3, 1, 2])
        self.assertEqual([r["state"] for r in records.values()], ["cancelled", "failed", "done"])
        self.assertEqual(updates, [2, 1, 3])
        self.assertEqual(client._waits, [])

    def test_alreadyFinished(self) -> None:
        """Tasks finished before the wait are taken from the watch reply."""
        client, pump = self.connected()
        for task_id in (1, 2, 3):
            self.master.finish(task_id, task_id)
        waiting = client.wait([1, 2, 3])
        pump.flush()
        self.assertEqual(len(self.successResultOf(waiting)), 3)

    def test_unknownIds(self) -> None:
        """Ids the master does not know fail the wait, naming them."""
        client, pump = self.connected()
        waiting = client.wait([1, 8, 9])
        pump.flush()
        failure = self.failureResultOf(waiting, UnknownTask)
        self.assertEqual(str(failure.value), "no tasks 8, 9")

    def test_watchInBatches(self) -> None:
        """Many ids are watched a hundred at a time, so each reply fits a frame."""
        for _ in range(247):
            self.master.store({"name": "primes"})
        client, pump = self.connected()
        waiting = client.wait(range(1, 251))
        pump.flush()
        self.assertEqual([len(ids) for ids in self.master.watches], [100, 100, 50])
        for task_id in range(1, 251):
            self.master.finish(task_id, None)
        pump.flush()
        self.assertEqual(len(self.successResultOf(waiting)), 250)

    def test_cancelWait(self) -> None:
        """A cancelled wait is forgotten; later updates do not touch it."""
        client, pump = self.connected()
        waiting = client.wait([1])
        pump.flush()
        waiting.cancel()
        self.failureResultOf(waiting, defer.CancelledError)
        self.master.finish(1, None)
        pump.flush()
        self.assertEqual(client._waits, [])

    def test_onUpdateFails(self) -> None:
        """An on_update that raises fails the wait with its exception."""
        client, pump = self.connected()

        def broken(record: dict[str, Any]) -> None:
            raise ZeroDivisionError("progress bar broke")

        waiting = client.wait([1], on_update=broken)
        pump.flush()
        self.master.finish(1, None)
        pump.flush()
        self.failureResultOf(waiting, ZeroDivisionError)

    def test_badUpdateRefused(self) -> None:
        """A malformed task_update is refused and changes nothing."""
        client, pump = self.connected()
        waiting = client.wait([1])
        pump.flush()
        [server] = self.master.connections
        server.protocol.send("task_update", {"task": {"id": "one"}})
        refused: list[Any] = []
        server.msg_bad_message = refused.append
        pump.flush()
        self.assertEqual((refused[0].error, refused[0].field),
                         ('bad task_update payload at task.id: Expected `int`, got `str`', 'task.id'))
        self.assertNoResult(waiting)

    def test_nothingToWaitFor(self) -> None:
        """Waiting for no tasks fires at once."""
        client = self.make_client()
        self.assertEqual(self.successResultOf(client.wait([])), {})

