"""
Queued tasks, and which one a free slave takes next.

Tasks wait in FIFO queues, one per kind of task (its name and requirements):
a slave that can run one task of a kind can run them all, so only the head
of each queue needs looking at, however long the queues grow.  The oldest
head that some free slave may run goes next, to the least loaded such slave;
equally loaded slaves take turns.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

from picluster.master.taskspec import Requirements
from picluster.master.workers import OpenTask, Worker

Kind = tuple[str, Requirements]


class TaskQueue:
    """
    The queued tasks among C{open_tasks}, by kind, oldest (lowest id) first.

    Entries go stale when a task leaves the queue some other way (cancelled,
    claimed back by its slave); they are dropped when they reach a head.
    """

    def __init__(self, open_tasks: dict[int, OpenTask]):
        self._open = open_tasks
        self._queues: dict[Kind, list[int]] = {}

    def push(self, task: OpenTask) -> None:
        task.queued = True
        heapq.heappush(self._queues.setdefault(task.kind, []), task.id)

    def __bool__(self) -> bool:
        return bool(self._queues)

    def next_assignment(
        self, free: list[Worker], give_up: Callable[[OpenTask], bool]
    ) -> tuple[OpenTask, Worker] | None:
        """
        Take the next task for one of the C{free} slaves, and say which.

        @param give_up: Called with a head no free slave may run; if it
            returns true (it has ended the task), the head is dropped.
        """
        best: tuple[OpenTask, Worker] | None = None
        for kind in list(self._queues):
            head = self._head(kind)
            if head is None or (best is not None and head.id > best[0].id):
                continue
            worker = _least_loaded(head, free)
            if worker is not None:
                best = (head, worker)
            elif give_up(head):
                heapq.heappop(self._queues[kind])
        if best is not None:
            heapq.heappop(self._queues[best[0].kind])
            best[0].queued = False
        return best

    def _head(self, kind: Kind) -> OpenTask | None:
        queue = self._queues[kind]
        while queue:
            task = self._open.get(queue[0])
            if task is not None and task.queued:
                return task
            heapq.heappop(queue)
        del self._queues[kind]
        return None


def _least_loaded(task: OpenTask, free: list[Worker]) -> Worker | None:
    eligible = [worker for worker in free if worker.may_run(task)]
    if not eligible:
        return None
    return min(eligible, key=lambda worker: (worker.load, worker.last_assigned))
