"""
Distributed tasks: what a slave can run for the master.

A package offers tasks by declaring them with L{task} and naming them in the
C{picluster.tasks} entry-point group::

    from picluster.tasks import task

    @task(run_in="process")
    def render(scene: str) -> dict:
        ...

    # setup.cfg:  [options.entry_points]
    #             picluster.tasks =
    #                 render = mypackage.tasks:render


The names below are imported on first use, so that a task's child process
(which imports C{picluster.tasks.childmain} and the task's own module) does
not pay for Twisted.
"""

from typing import Any

from picluster.tasks.errors import BadArguments, NotPermitted

__all__ = ["BadArguments", "NotPermitted", "Task", "TaskCatalog", "task"]

_FROM_CATALOG = ("Task", "TaskCatalog", "task")


def __getattr__(name: str) -> Any:
    if name not in _FROM_CATALOG:
        raise AttributeError(f"module 'picluster.tasks' has no attribute {name!r}")
    from picluster.tasks import catalog

    value = getattr(catalog, name)
    globals()[name] = value
    return value
