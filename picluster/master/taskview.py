"""
Tasks as the master shows them: to clients, the web API and the dashboard.

The scheduler decides; this module only reads, and tells the clients that
watch a task when it ends.  A task's record is on disk
and, while it is open or being saved, newer in the scheduler's memory; what
is shown is always the newest, with a line saying why a queued task is not
running yet.  A reply must fit in one frame, so a listing is cut where the
next record would not fit, and says so.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NoReturn, Protocol

from twisted.internet import defer
from twisted.python.failure import Failure

from picluster import wire
from picluster.master.store import FINAL_STATES, STATES, StoreError, TaskStore
from picluster.master.watchers import Watchers
from picluster.master.workers import OpenTask, Worker
from picluster.wire import messages
from picluster.wire.errors import ServiceError
from picluster.wire.messages import MAX_WATCHED

#: Bytes of a watch's answer per task named: C{{"id":..,"state":"..."}}, at most.
_WATCHED_ENTRY = 48


class TaskBook(Protocol):
    """What the view reads of the scheduler: its tasks, slaves and store."""

    open: dict[int, OpenTask]
    held: dict[int, OpenTask]
    workers: dict[Any, Worker]
    finished_counts: dict[str, int]

    def in_memory(self, task_id: int) -> dict[str, Any] | None: ...

    def usable_store(self) -> TaskStore: ...


class TaskView:
    """
    The read side of the task queue.

    @ivar book: The scheduler whose tasks are shown.
    @ivar watchers: The connections told when the tasks they watch end.
    @ivar max_reply: Bytes of records one reply may carry: a frame, less the envelope.
    """

    def __init__(self, book: TaskBook, max_reply: int):
        self.book = book
        self.max_reply = max_reply
        self.watchers = Watchers()

    def waiting_reason(self, task: OpenTask) -> str | None:
        """Why a queued task is not running yet, in words for C{picluster task}."""
        book = self.book
        if task.id in book.held:
            return ("was running when the master restarted; waiting for its slave to rejoin"
                    " and claim it")
        worker = task.worker
        if worker is not None and task.id in worker.ready:
            return (f"handed to slave {worker.hostname or worker.uuid} ahead of a free slot; it"
                    f" starts there as one of its {worker.slots} slots frees")
        if not task.queued:
            return None
        offering = [w for w in book.workers.values() if task.name in w.offers]
        if not offering:
            return f"no connected slave offers {task.name!r}"
        meeting = [w for w in offering if task.requirements.unmet(w.computer_details, w.tags) is None]
        if not meeting:
            unmet = offering[0].describe_unmet(task)
            return f"no connected slave that offers {task.name!r} meets the requirements ({unmet})"
        busy = sum(w.slots for w in meeting)
        return (f"waiting for a free slot: all {busy} slots of the {len(meeting)} slaves"
                " that can run it are busy")

    def current(self, record: dict[str, Any]) -> dict[str, Any]:
        """The newest version of a task's record: memory beats the disk."""
        return self.book.in_memory(record["id"]) or record

    def show_one(self, record: dict[str, Any]) -> dict[str, Any]:
        """A task's record as shown: the newest, and why it waits if it does."""
        shown = dict(self.current(record))
        task = self.book.open.get(shown["id"])
        shown["waiting"] = self.waiting_reason(task) if task is not None else None
        return shown

    def show(self, records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        return [self.show_one(record) for record in records]

    def listed(self, records: list[dict[str, Any]]) -> tuple[str, Any]:
        """
        The C{tasks} reply for C{records}: those that fit in one reply frame
        (results and arguments can be large), cut short where the next would
        not, with C{more} saying so.
        """
        shown: list[dict[str, Any]] = []
        room = self.max_reply
        for record in self.show(records):
            room -= len(wire.encode(record))
            if shown and room < 0:
                return ("tasks", {"tasks": shown, "more": True})
            shown.append(record)
        return ("tasks", {"tasks": shown, "more": False})

    # -- clients -------------------------------------------------------------

    def tasks(self, query: messages.TasksQuery) -> defer.Deferred[tuple[str, Any]]:
        """The C{tasks} reply: the stored tasks C{query} asks for, as shown."""
        state = query.state
        if state is not None and state not in STATES:
            raise wire.BadMessage(f"unknown state {state!r}", known=list(STATES))
        found = self.book.usable_store().query(
            ids=query.ids, states=None if state is None else (state,), after=query.after,
            limit=query.limit, newest_first=query.order == "newest", max_bytes=self.max_reply,
        )
        return found.addCallbacks(self.listed, store_failed)

    def watch(
        self, watcher: Any, ids: list[int]
    ) -> defer.Deferred[tuple[str, Any]] | tuple[str, Any]:
        """Tell C{watcher} (a connection) when each of C{ids} ends, in a C{task_update}."""
        if self.watchers.count(watcher) + len(ids) > MAX_WATCHED:
            raise wire.BadMessage(f"at most {MAX_WATCHED} watched tasks per connection")
        if len(ids) * _WATCHED_ENTRY > self.max_reply:
            # Refused before anything is registered: the answer lists every
            # task still open, and must fit a frame (a small --max-frame).
            raise wire.BadMessage(
                f"at most {self.max_reply // _WATCHED_ENTRY} tasks in one watch with this --max-frame"
            )
        # The tasks in memory (open, or ended and being saved) are watched
        # and looked at now; only the others, ended long ago or unknown, are
        # looked up on disk.  A client waits on tasks it has just submitted,
        # so usually nothing is.
        in_memory: list[dict[str, Any]] = []
        on_disk: list[int] = []
        for task_id in dict.fromkeys(ids):
            record = self.book.in_memory(task_id)
            if record is None:
                on_disk.append(task_id)
            else:
                in_memory.append(record)
        self.watchers.add(watcher, [record["id"] for record in in_memory])
        still_open: list[dict[str, Any]] = []
        if not on_disk:
            return self._watched([], watcher, in_memory, still_open)
        return self._watch_on_disk(sorted(on_disk), watcher, in_memory, still_open)

    def _watch_on_disk(self, ids: list[int], watcher: Any, in_memory: list[dict[str, Any]],
                       still_open: list[dict[str, Any]]) -> defer.Deferred[tuple[str, Any]]:
        """
        Look the tasks C{ids} up a reply's worth of bytes at a time, pushing
        the ended ones before the next look: a watch of ten thousand tasks
        with megabyte results holds one page of them, and stops when its
        connection goes (a peer that does not read is dropped).
        """
        found = self.book.usable_store().query(ids=ids, max_bytes=self.max_reply)

        def page(records: list[dict[str, Any]]) -> Any:
            if not records or watcher.closing:
                return self._watched([], watcher, in_memory, still_open)
            self._watched(records, watcher, [], still_open)
            last = records[-1]["id"]
            rest = [task_id for task_id in ids if task_id > last]
            if not rest:
                return self._watched([], watcher, in_memory, still_open)
            return self._watch_on_disk(rest, watcher, in_memory, still_open)

        return found.addCallbacks(page, store_failed)

    def _watched(self, found: list[dict[str, Any]], watcher: Any,
                 in_memory: list[dict[str, Any]],
                 still_open: list[dict[str, Any]]) -> tuple[str, Any]:
        """
        Push each ended task's record on its own (one record always fits a
        frame; a hundred with their results may not), and answer with the
        id and state of the rest, by id.
        """
        records = sorted(in_memory + found, key=lambda record: record["id"])
        for record in records:
            if record["state"] in FINAL_STATES:
                self.watchers.tell(watcher, self.show_one(record))
            else:
                current = self.current(record)
                still_open.append({"id": current["id"], "state": current["state"]})
        still_open.sort(key=lambda entry: entry["id"])
        return ("tasks", {"tasks": still_open})

    def ended(self, task_id: int, record: dict[str, Any]) -> None:
        """A task's final record is on disk: tell whoever watches it."""
        if self.watchers.watched(task_id):
            self.watchers.ended(task_id, self.show_one(record))

    # -- the dashboard and the web API ---------------------------------------

    def state_counts(self) -> dict[str, int]:
        """Tasks in each state, from memory: cheap enough for every refresh."""
        book = self.book
        # Held tasks show as queued until their slave claims them.
        running = sum(len(worker.running) for worker in book.workers.values())
        finished = book.finished_counts
        return {"queued": len(book.open) - running, "running": running, "done": finished["done"],
                "failed": finished["failed"], "cancelled": finished["cancelled"]}

    def task(self, task_id: int) -> defer.Deferred[dict[str, Any] | None]:
        """One task as shown, or C{None} when there is no such task."""
        found = self.book.usable_store().query(ids=[task_id], limit=1)
        return found.addCallbacks(
            lambda records: self.show_one(records[0]) if records else None, store_failed
        )

    def latest(self, limit: int, state: str | None = None) -> defer.Deferred[list[dict[str, Any]]]:
        """The newest C{limit} tasks (in C{state}, if given), newest first, as shown."""
        found = self.book.usable_store().query(
            states=None if state is None else (state,), limit=limit, newest_first=True
        )
        return found.addCallbacks(self.show, store_failed)


def store_failed(failure: Failure) -> NoReturn:
    """A store failure, as the L{ServiceError} a peer is told."""
    failure.trap(StoreError)
    raise ServiceError(failure.getErrorMessage())
