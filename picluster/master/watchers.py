"""
Who waits for which task to end.

A client's C{watch} registers its connection for some task ids; when one of
them ends, the connection is sent a C{task_update} once, and forgotten for
it.  A connection that goes is forgotten for all of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.logger import Logger

log = Logger()


class Watchers:
    """Task id to the connections watching it, and the other way round."""

    def __init__(self) -> None:
        self._by_task: dict[int, set[Any]] = {}
        self._by_connection: dict[Any, set[int]] = {}

    def count(self, connection: Any) -> int:
        return len(self._by_connection.get(connection, ()))

    def add(self, connection: Any, task_ids: Iterable[int]) -> None:
        watching = self._by_connection.setdefault(connection, set())
        for task_id in task_ids:
            self._by_task.setdefault(task_id, set()).add(connection)
            watching.add(task_id)

    def forget(self, connection: Any) -> None:
        for task_id in self._by_connection.pop(connection, ()):
            connections = self._by_task.get(task_id)
            if connections is not None:
                connections.discard(connection)
                if not connections:
                    del self._by_task[task_id]

    def watched(self, task_id: int) -> bool:
        return task_id in self._by_task

    def ended(self, task_id: int, record: dict[str, Any]) -> None:
        """Tell every watcher of C{task_id} that it ended, as C{record} says."""
        for connection in self._by_task.pop(task_id, ()):
            self._by_connection.get(connection, set()).discard(task_id)
            self.tell(connection, record)

    @staticmethod
    def tell(connection: Any, record: dict[str, Any]) -> None:
        """Send one connection a task's record in a C{task_update}."""
        if connection.closing:
            # Gone, or going (dropped for not reading): nothing to tell, or log.
            return
        try:
            connection.send("task_update", {"task": record})
        except Exception as e:
            log.info("Could not tell {peer} that task {id} ended: {problem}",
                     peer=connection.describe_peer(), id=record["id"], problem=e)
