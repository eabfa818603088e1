"""
A small master that speaks the client half of the tasks contract.

It keeps tasks in a dict and runs none of them on its own: a test finishes,
fails or cancels them (L{FakeMaster.finish}, L{FakeMaster.fail}), or hands in
a C{runner} that finishes every submitted task at once.  That is all the
client and the CLI need to be tested without the real master, which is
written separately.
"""

from __future__ import annotations

import itertools
import uuid as uuid_module
from collections.abc import Callable
from typing import Any

import msgspec
from twisted.internet import defer
from twisted.python.failure import Failure

from picluster.wire import BadMessage
from picluster.wire.protocol import PeerHandler, PiClusterFactory, PiClusterProtocol

FINISHED = frozenset({"done", "failed", "cancelled"})


class FakeMasterConnection(PeerHandler):
    """One client's connection to the fake master."""

    def __init__(self, protocol: PiClusterProtocol, master: FakeMaster):
        super().__init__(protocol)
        self.master = master
        self.hello: dict[str, Any] | None = None

    def connection_made(self) -> None:
        self.master.connections.append(self)

    def connection_lost(self, failure: Failure) -> None:
        self.master.connections.remove(self)
        for watchers in self.master.watchers.values():
            watchers.discard(self)

    def _answer(self, message_type: str, reply: tuple[str, Any]) -> Any:
        """The reply, unless the master is to hang up before sending it."""
        if message_type in self.master.hang_up_on:
            self.master.hang_up_on.discard(message_type)
            self.protocol.close(f"hanging up after {message_type}")
            return defer.Deferred()
        return reply

    def _require_hello(self) -> None:
        if self.hello is None:
            raise BadMessage("say hello first")

    def msg_hello(self, payload: Any) -> tuple[str, Any]:
        payload = msgspec.to_builtins(payload)  # a hello is sent whole
        if not isinstance(payload, dict) or payload.get("version") != 1:
            raise BadMessage("unsupported protocol version", supported=[1], close=True)
        self.hello = payload
        self.master.hellos.append(payload)
        return ("welcome", {"uuid": uuid_module.uuid4().hex,
                            "keepalive": self.master.keepalive,
                            "dead_after": self.master.dead_after})

    def msg_submit(self, payload: Any) -> tuple[str, Any]:
        payload = plain(payload)
        self._require_hello()
        specs = payload.get("tasks") if isinstance(payload, dict) else None
        if not isinstance(specs, list):
            raise BadMessage('submit needs "tasks": a list of task specs')
        for index, spec in enumerate(specs):
            if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
                raise BadMessage("a task spec needs a string name", index=index)
            if self.master.known_names is not None and spec["name"] not in self.master.known_names:
                raise BadMessage(f"unknown task {spec['name']!r}", index=index)
        self.master.submits.append(specs)
        entries, warnings = [], []
        for spec in specs:
            entries.append(self.master.store(spec))
            if spec["name"] in self.master.warn_about:
                warnings.append(f"no slave offers {spec['name']!r} right now")
        self.master.after_submit(entries)
        return self._answer("submit", ("submitted", {"tasks": entries, "warnings": warnings}))

    def msg_tasks(self, payload: Any) -> tuple[str, Any]:
        payload = plain(payload)
        self._require_hello()
        query = payload if isinstance(payload, dict) else {}
        records = sorted(self.master.tasks.values(), key=lambda record: record["id"])
        if query.get("ids") is not None:
            records = [r for r in records if r["id"] in query["ids"]]
        if query.get("state") is not None:
            records = [r for r in records if r["state"] == query["state"]]
        if query.get("after") is not None:
            records = [r for r in records if r["id"] > query["after"]]
        self.master.queries.append(query)
        return ("tasks", {"tasks": records[: query.get("limit") or 100]})

    def msg_cancel(self, payload: Any) -> tuple[str, Any]:
        payload = plain(payload)
        self._require_hello()
        task_id = payload.get("id") if isinstance(payload, dict) else None
        record = self.master.tasks.get(task_id)
        if record is None:
            raise BadMessage(f"no task {task_id}", id=task_id)
        if record["state"] in FINISHED:
            raise BadMessage(f"task {task_id} already finished", id=task_id)
        self.master.settle(task_id, state="cancelled")
        return self._answer("cancel", ("tasks", {"tasks": [record]}))

    def msg_watch(self, payload: Any) -> tuple[str, Any]:
        payload = plain(payload)
        self._require_hello()
        ids = payload.get("ids") if isinstance(payload, dict) else None
        if not isinstance(ids, list):
            raise BadMessage('watch needs "ids": a list of task ids')
        self.master.watches.append(ids)
        known = [self.master.tasks[i] for i in sorted(ids) if i in self.master.tasks]
        for record in known:
            self.master.watchers.setdefault(record["id"], set()).add(self)
        return ("tasks", {"tasks": known})


def plain(payload: Any) -> Any:
    """
    A typed payload as plain JSON values, fields at their defaults left out
    (as a client that sends only what it means would): the fake checks what
    it needs itself, and records what it was asked.
    """
    if isinstance(payload, msgspec.Struct):
        return {
            field.encode_name: plain(getattr(payload, field.name))
            for field in msgspec.structs.fields(payload)
            if getattr(payload, field.name) != field.default
        }
    if isinstance(payload, list):
        return [plain(item) for item in payload]
    if isinstance(payload, dict):
        return {key: plain(value) for key, value in payload.items()}
    return payload


class FakeMaster(PiClusterFactory):
    """
    Tasks in a dict, and the client messages of the contract over them.

    @ivar runner: When set, called with each submitted task's name and args
        as soon as it is stored: its return value is the task's result, an
        exception it raises fails the task.
    @ivar known_names: Task names accepted, or C{None} for any.
    @ivar warn_about: Names whose submission draws a warning.
    @ivar hang_up_on: Message types (C{submit}, C{cancel}) after which the
        master, having done the work, closes the connection instead of
        replying, once each: a reply lost with the connection.
    """

    def __init__(
        self,
        *,
        runner: Callable[[str, dict[str, Any]], Any] | None = None,
        known_names: set[str] | None = None,
        **settings: Any,
    ):
        super().__init__(**settings)
        self.runner = runner
        self.known_names = known_names
        self.warn_about: set[str] = set()
        self.hang_up_on: set[str] = set()
        self.tasks: dict[int, dict[str, Any]] = {}
        self.keys: dict[str, int] = {}
        self.watchers: dict[int, set[FakeMasterConnection]] = {}
        self.connections: list[FakeMasterConnection] = []
        self.hellos: list[dict[str, Any]] = []
        self.submits: list[list[dict[str, Any]]] = []
        self.queries: list[dict[str, Any]] = []
        self.watches: list[list[int]] = []
        self._ids = itertools.count(1)

    def make_handler(self, protocol: PiClusterProtocol) -> FakeMasterConnection:
        return FakeMasterConnection(protocol, self)

    def store(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Store one spec (or find its key), returning its submitted entry."""
        key = spec.get("key")
        if key is not None and key in self.keys:
            record = self.tasks[self.keys[key]]
            return {"id": record["id"], "key": key, "state": record["state"], "duplicate": True}
        task_id = next(self._ids)
        now = self.clock.seconds()
        self.tasks[task_id] = {
            "id": task_id, "key": key, "name": spec["name"], "args": spec.get("args", {}),
            "requirements": spec.get("requirements", {}), "timeout": spec.get("timeout"),
            "retries": spec.get("retries", 3), "state": "queued", "slave": None,
            "slave_hostname": None, "attempts": 0, "submitted_at": now, "started_at": None,
            "finished_at": None, "result": None, "error": None,
            "waiting": "no slave is connected",
        }
        if key is not None:
            self.keys[key] = task_id
        return {"id": task_id, "key": key, "state": "queued", "duplicate": False}

    def after_submit(self, entries: list[dict[str, Any]]) -> None:
        if self.runner is None:
            return
        for entry in entries:
            record = self.tasks[entry["id"]]
            if entry["duplicate"] or record["state"] in FINISHED:
                continue
            try:
                result = self.runner(record["name"], record["args"])
            except Exception as e:
                self.fail(record["id"], type(e).__name__, str(e))
            else:
                self.finish(record["id"], result)

    def start(self, task_id: int, hostname: str = "pi-2") -> None:
        """Hand a task to a (pretend) slave."""
        record = self.tasks[task_id]
        record.update(state="running", slave="ab" * 16, slave_hostname=hostname,
                      started_at=self.clock.seconds(), waiting=None)
        record["attempts"] += 1

    def finish(self, task_id: int, result: Any) -> None:
        self.settle(task_id, state="done", result=result)

    def fail(self, task_id: int, error_type: str, message: str, traceback: str | None = None,
             kind: str = "error") -> None:
        error = {"type": error_type, "message": message, "traceback": traceback, "kind": kind}
        self.settle(task_id, state="failed", error=error)

    def settle(self, task_id: int, **changes: Any) -> None:
        """Finish a task and push its record to every connection watching it."""
        record = self.tasks[task_id]
        if record["state"] == "queued" and changes["state"] != "cancelled":
            self.start(task_id)
        record.update(finished_at=self.clock.seconds(), waiting=None, **changes)
        for watcher in sorted(self.watchers.pop(task_id, ()), key=id):
            watcher.protocol.send("task_update", {"task": record})

    def drop_connections(self) -> None:
        """Close every client connection, as a master going down would."""
        for connection in list(self.connections):
            connection.protocol.close("fake master going away")
