"""
Fixtures for the task tests: a master whose scheduler keeps its queue in a
real SQLite database run synchronously (so a L{Clock} drives everything),
and slaves and clients played over L{StringTransport}s.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from picluster.master.connection import MasterFactory
from picluster.master.registry import SlaveRegistry
from picluster.master.scheduler import Scheduler
from picluster.master.store import TaskStore, _prepare
from picluster.wire.protocol import PiClusterProtocol
from tests.helpers import MASTER_FACTS, connect, frame, sent


class SynchronousPool:
    """
    An L{adbapi.ConnectionPool} stand-in that runs each interaction at once
    on one real SQLite connection, committing or rolling back as adbapi does.
    """

    def __init__(self, path: str = ":memory:"):
        self.path = path
        self.connection = sqlite3.connect(path)
        _prepare(self.connection)
        self.closed = False
        self.interactions = 0

    def runInteraction(self, interaction: Any, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        self.interactions += 1
        cursor = self.connection.cursor()
        try:
            result = interaction(cursor, *args, **kwargs)
            self.connection.commit()
        except BaseException:
            self.connection.rollback()
            return defer.fail()
        return defer.succeed(result)

    def fill_disk(self) -> None:
        """Let the database grow no more: writes now fail with SQLITE_FULL."""
        (pages,) = self.connection.execute("PRAGMA page_count").fetchone()
        self.connection.execute(f"PRAGMA max_page_count = {pages}")

    def free_disk(self) -> None:
        self.connection.execute("PRAGMA max_page_count = 1073741823")

    def close(self) -> None:
        self.closed = True


def started_scheduler(clock: Clock, pool: SynchronousPool | None = None, **settings: Any) -> Scheduler:
    """A scheduler whose store is loaded, on C{pool} (a fresh one by default)."""
    scheduler = Scheduler(clock, **settings)
    pool = pool or SynchronousPool()
    store = TaskStore.open(pool.path, clock, pool=pool)
    store.addCallback(scheduler.start)
    clock.advance(0)
    return scheduler


def task_master(clock: Clock, pool: SynchronousPool | None = None, **settings: Any) -> MasterFactory:
    """
    A master factory with a started scheduler.  Its peers may stay silent for
    minutes of the Clock's time unless told otherwise: these tests are about
    task timers, not dead peers.
    """
    settings.setdefault("keepalive", 100.0)
    settings.setdefault("dead_after", 300.0)
    scheduler_settings = {k: settings.pop(k) for k in list(settings)
                          if k in ("rejoin_grace", "max_args", "max_open_tasks", "overdue_grace", "max_reply", "max_db")}
    scheduler = started_scheduler(clock, pool, **scheduler_settings)
    return MasterFactory(SlaveRegistry(), scheduler=scheduler, computer_details=dict(MASTER_FACTS),
                         clock=clock, **settings)


class Peer:
    """One side of a connection to the master, played by hand."""

    def __init__(self, master: MasterFactory, clock: Clock, host: str, port: int = 4321):
        self.clock = clock
        self.protocol: PiClusterProtocol
        self.protocol, self.transport = connect(master, host, port)
        self.next_id = 1000
        self.inbox: list[dict[str, Any]] = []

    def send(self, message_type: str, payload: Any = None, **envelope: Any) -> None:
        self.protocol.dataReceived(frame({"type": message_type, "payload": payload, **envelope}))
        self.clock.advance(0)

    def request(self, message_type: str, payload: Any = None) -> dict[str, Any]:
        """Send a request and return its reply; other messages go to C{inbox}."""
        self.next_id += 1
        self.send(message_type, payload, id=self.next_id)
        self.clock.advance(0)
        reply = None
        for envelope in sent(self.transport):
            if envelope.get("reply_to") == self.next_id:
                reply = envelope
            else:
                self.inbox.append(envelope)
        assert reply is not None, f"no reply to {message_type}"
        return reply

    def take(self, message_type: str) -> list[dict[str, Any]]:
        """Messages of one type the master sent unasked, oldest first."""
        self.clock.advance(0)
        self.inbox.extend(sent(self.transport))
        taken = [m for m in self.inbox if m["type"] == message_type]
        self.inbox = [m for m in self.inbox if m["type"] != message_type]
        return taken

    def lose(self) -> None:
        from twisted.internet.error import ConnectionLost
        from twisted.python.failure import Failure

        self.protocol.connectionLost(Failure(ConnectionLost("gone")))
        self.clock.advance(0)


class FakeSlave(Peer):
    """A slave: hello, facts, then C{worker}; runs nothing by itself."""

    def __init__(self, master: MasterFactory, clock: Clock, host: str = "10.0.0.2", *,
                 hostname: str = "pi-one", tasks: tuple[str, ...] = ("primes", "sleep"),
                 slots: int = 2, ram: int = 1024, cores: int = 4, tags: tuple[str, ...] = (),
                 refused: dict[str, str] | None = None, uuid: str | None = None,
                 holding: list[dict[str, int]] | None = None, prefetch: int = 0):
        super().__init__(master, clock, host)
        welcome = self.request("hello", {"version": 1, "uuid": uuid})
        self.uuid = welcome["payload"]["uuid"]
        self.request("computer_details", {"hostname": hostname, "ram": ram, "cpu_cores": cores})
        self.accepted = self.request("worker", {
            "tasks": list(tasks), "refused": refused or {}, "slots": slots, "tags": list(tags),
            "holding": holding or [], "prefetch": prefetch,
        })

    def runs(self) -> list[dict[str, Any]]:
        """The run_task payloads received since last asked, acknowledging each."""
        runs = []
        for envelope in self.take("run_task"):
            runs.append(envelope["payload"])
            self.send("ack", None, reply_to=envelope["id"])
        return runs

    def cancels(self) -> list[dict[str, Any]]:
        cancels = []
        for envelope in self.take("cancel_task"):
            cancels.append(envelope["payload"])
            self.send("ack", None, reply_to=envelope["id"])
        return cancels

    def finish(self, run: dict[str, Any], result: Any = None, *, error: dict[str, Any] | None = None,
               retry: bool = False) -> dict[str, Any]:
        payload: dict[str, Any] = {"id": run["id"], "attempt": run["attempt"]}
        if error is None:
            payload.update(outcome="done", result=result)
        else:
            payload.update(outcome="failed", error=error, retry=retry)
        return self.request("task_result", payload)


class FakeClient(Peer):
    def __init__(self, master: MasterFactory, clock: Clock, host: str = "10.0.0.50"):
        super().__init__(master, clock, host)
        self.request("hello", {"version": 1, "uuid": None, "role": "client"})

    def submit(self, *specs: dict[str, Any]) -> dict[str, Any]:
        return self.request("submit", {"tasks": list(specs)})

    def records(self, *ids: int) -> dict[int, dict[str, Any]]:
        reply = self.request("tasks", {"ids": list(ids)})
        return {record["id"]: record for record in reply["payload"]["tasks"]}

    def record(self, task_id: int) -> dict[str, Any]:
        return self.records(task_id)[task_id]


__all__ = ["SynchronousPool", "started_scheduler", "task_master", "FakeSlave", "FakeClient",
           "StringTransport"]
