"""
The tasks a slave offers: the built-in ones and those of every installed
package's C{picluster.tasks} entry point.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
from collections.abc import Iterable
from typing import Any, Protocol

from twisted.logger import Logger

from picluster.tasks.builtin import BUILTIN_TASKS
from picluster.tasks.catalog import Task, TaskCatalog

log = Logger()

#: The entry-point group packages register their tasks under.
ENTRY_POINT_GROUP = "picluster.tasks"


class EntryPointLike(Protocol):
    name: str
    value: str

    # A property: it is only read, and importlib.metadata's entry points
    # declare it a class attribute.
    @property
    def dist(self) -> Any: ...

    def load(self) -> Any: ...


def installed_tasks(entry_points: Iterable[EntryPointLike] | None = None) -> TaskCatalog:
    """
    The built-in tasks plus those of every installed C{picluster.tasks} entry point.

    An entry point's name is the task's name; its object is a L{Task} (renamed
    to the entry point's name) or a plain callable (run in a thread).  One
    that fails to load, is neither, or whose name is taken (by a built-in or
    an earlier entry point) is logged and skipped: one broken package must
    never stop the slave.

    @param entry_points: For tests: entry-point-like objects (C{.name},
        C{.value}, C{.dist}, C{.load()}) instead of the installed ones.
    """
    catalog = TaskCatalog(BUILTIN_TASKS)
    if entry_points is None:
        entry_points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    for entry_point in entry_points:
        loaded = _from_entry_point(catalog, entry_point)
        if loaded is not None:
            catalog.add(loaded)
    return catalog


def _from_entry_point(catalog: TaskCatalog, entry_point: EntryPointLike) -> Task | None:
    fields: dict[str, Any] = {
        "entry_point": entry_point.name,
        "target": getattr(entry_point, "value", None),
        "distribution": _distribution_name(entry_point),
    }
    if entry_point.name in catalog:
        log.warn(
            "Skipping task entry point {entry_point} = {target} of {distribution}:"
            " a task named {entry_point} is already registered",
            **fields,
        )
        return None
    try:
        loaded = entry_point.load()
        if isinstance(loaded, Task):
            return dataclasses.replace(loaded, name=entry_point.name)
        if callable(loaded):
            return Task(entry_point.name, loaded, "thread")
        raise TypeError(f"{type(loaded).__name__} is neither a Task nor callable")
    except Exception:
        log.failure(
            "Skipping task entry point {entry_point} = {target} of {distribution}:"
            " it could not be loaded",
            **fields,
        )
        return None


def _distribution_name(entry_point: EntryPointLike) -> str:
    dist = getattr(entry_point, "dist", None)
    name = getattr(dist, "name", None)
    if name is None and dist is not None:
        try:
            name = dist.metadata["Name"]
        except Exception:
            name = None
    return str(name) if name else "an unknown distribution"
