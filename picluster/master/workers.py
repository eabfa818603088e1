"""
What the scheduler knows of a task and of a slave that runs tasks.

L{OpenTask} wraps the record of a queued or running task; L{Worker} is a
slave connection that said C{worker}: what it offers, its slots, what it
runs now.  Both live only in the master's memory; the record is what goes to
disk.  The parsers here check what slaves send, so a slave that sends
nonsense is refused with a clear C{bad_message} and changes nothing.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from picluster import wire
from picluster.master.taskspec import Requirements

log = Logger()

#: Most slots a slave may claim, and most task names it may offer.
MAX_SLOTS = 1024
MAX_OFFERS = 10_000

OUTCOMES = ("done", "failed")

#: The requirements of most tasks (none), parsed once for all of them.
_NO_REQUIREMENTS = Requirements()


class OpenTask:
    """
    A task that is queued or running.

    @ivar record: The task's row, kept current; what is saved and shown.
    @ivar worker: The L{Worker} running it now, if any.
    @ivar queued: Whether it waits in a queue (stale queue entries skip it).
    @ivar last_run: (slave uuid, attempt) of the run last lost, so that the
        slave may claim it back when it rejoins.
    @ivar deadline: The call that fails it if no result comes in time.
    """

    def __init__(self, record: dict[str, Any]):
        self.record = record
        raw = record["requirements"]
        self.requirements = Requirements.parse(raw) if raw else _NO_REQUIREMENTS
        self.kind = (record["name"], self.requirements)
        self.worker: Worker | None = None
        self.queued = False
        self.last_run: tuple[str | None, int] | None = None
        self.deadline: Any = None

    @property
    def id(self) -> int:
        return self.record["id"]

    @property
    def name(self) -> str:
        return self.record["name"]

    @property
    def attempts(self) -> int:
        return self.record["attempts"]

    @property
    def retries(self) -> int:
        return self.record["retries"]

    @property
    def timeout(self) -> float | None:
        return self.record["timeout"]

    def cancel_deadline(self) -> None:
        if self.deadline is not None and self.deadline.active():
            self.deadline.cancel()
        self.deadline = None


class Worker:
    """
    A slave connection that runs tasks.

    @ivar connection: The master's L{PeerConnection} for it.
    @ivar running: Task id to the L{OpenTask}s it runs now.
    @ivar last_assigned: When it last got a task (a counter), so that equally
        loaded slaves take turns.
    """

    def __init__(self, connection: Any, offers: frozenset[str], refused: dict[str, str],
                 slots: int, tags: frozenset[str]):
        self.connection = connection
        self.offers = offers
        self.refused = refused
        self.slots = slots
        self.tags = tags
        self.running: dict[int, OpenTask] = {}
        self.last_assigned = 0
        #: Set when it refused a run for want of a slot: it gets nothing
        #: more until it reports a result.
        self.full = False

    @property
    def uuid(self) -> str:
        return self.connection.uuid

    @property
    def hostname(self) -> str | None:
        return self.connection.hostname

    @property
    def computer_details(self) -> dict[str, Any] | None:
        return self.connection.computer_details

    @property
    def free_slots(self) -> int:
        return 0 if self.full else self.slots - len(self.running)

    @property
    def closing(self) -> bool:
        return self.connection.protocol.closing

    def may_run(self, task: OpenTask) -> bool:
        return (task.name in self.offers and task.name not in self.refused
                and task.requirements.unmet(self.computer_details, self.tags) is None)

    def describe_unmet(self, task: OpenTask) -> str | None:
        return task.requirements.unmet(self.computer_details, self.tags)

    def cancel(self, task_id: int, attempt: int) -> None:
        """Tell the slave to stop a run whose result nobody needs any more."""
        if self.closing:
            return
        stopping = self.connection.protocol.request("cancel_task", {"id": task_id, "attempt": attempt})
        stopping.addErrback(
            lambda failure: log.info("Could not cancel task {id} on {uuid}: {problem}",
                                     id=task_id, uuid=self.uuid, problem=failure.getErrorMessage())
        )


def _names(raw: Any, what: str) -> frozenset[str]:
    if not isinstance(raw, list) or not all(isinstance(n, str) and n for n in raw):
        raise wire.BadMessage(f"worker {what} must be a list of non-empty strings")
    if len(raw) > MAX_OFFERS:
        raise wire.BadMessage(f"worker {what}: at most {MAX_OFFERS}")
    return frozenset(raw)


def parse_worker(
    payload: Any,
) -> tuple[frozenset[str], dict[str, str], int, frozenset[str], list[tuple[int, int]]]:
    """The offers, refusals, slots, tags and held runs of a C{worker} message."""
    if not isinstance(payload, dict):
        raise wire.BadMessage("worker payload must be a JSON object")
    offers = _names(payload.get("tasks"), "tasks")
    refused = payload.get("refused", {})
    if not isinstance(refused, dict) or not all(isinstance(v, str) for v in refused.values()):
        raise wire.BadMessage("worker refused must map task names to reasons")
    slots = payload.get("slots")
    if type(slots) is not int or not 1 <= slots <= MAX_SLOTS:
        raise wire.BadMessage(f"worker slots must be a whole number from 1 to {MAX_SLOTS}")
    tags = _names(payload.get("tags", []), "tags")
    holding = payload.get("holding", [])
    if not isinstance(holding, list):
        raise wire.BadMessage("worker holding must be a list")
    held = []
    for run in holding:
        if (not isinstance(run, dict) or type(run.get("id")) is not int
                or type(run.get("attempt")) is not int):
            raise wire.BadMessage('worker holding entries must be {"id": int, "attempt": int}')
        held.append((run["id"], run["attempt"]))
    return offers, dict(refused), slots, tags, held


def parse_result(payload: Any) -> tuple[int, int, str, Any, dict[str, Any] | None, bool]:
    """The id, attempt, outcome, result, error and retry hint of a C{task_result}."""
    if not isinstance(payload, dict):
        raise wire.BadMessage("task_result payload must be a JSON object")
    task_id, attempt = payload.get("id"), payload.get("attempt")
    if type(task_id) is not int or type(attempt) is not int:
        raise wire.BadMessage("task_result needs an integer id and attempt")
    outcome = payload.get("outcome")
    if outcome not in OUTCOMES:
        raise wire.BadMessage(f"task_result outcome must be one of {', '.join(OUTCOMES)}")
    error = None
    if outcome == "failed":
        raw = payload.get("error")
        if not isinstance(raw, dict) or not isinstance(raw.get("message"), str):
            raise wire.BadMessage("a failed task_result needs an error with a message")
        error = {
            "type": str(raw.get("type") or "Error"),
            "message": raw["message"],
            "traceback": raw.get("traceback") if isinstance(raw.get("traceback"), str) else None,
            "kind": str(raw.get("kind") or "error"),
        }
    return task_id, attempt, outcome, payload.get("result"), error, payload.get("retry") is True
