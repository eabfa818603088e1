"""
What a task is, and the catalog of tasks a slave offers.

A task is a named Python function that a slave runs on the master's behalf,
called as C{function(**args)} with the JSON arguments of the submission.  It
runs in the reactor (quick, or returning a Deferred or a coroutine), in the
reactor's thread pool (blocking I/O), or in a child process (CPU-bound work,
which would otherwise hold the slave's GIL and starve its keepalives, and
which a timeout must be able to kill).  Packages add tasks through the
C{picluster.tasks} entry-point group; see
L{picluster.tasks.installed.installed_tasks}.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar, overload

from twisted.logger import Logger

from picluster.tasks.errors import BadArguments

log = Logger()

#: Where a task may run.
RunIn = Literal["reactor", "thread", "process"]
RUN_IN: frozenset[str] = frozenset({"reactor", "thread", "process"})

# -- tasks -------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """
    A task a slave can run.

    @ivar name: What submissions call it.
    @ivar function: Called as C{function(**args)}.  A process task's function
        must be importable as C{module:qualname}, since the child imports it.
    @ivar run_in: C{"reactor"}, C{"thread"} or C{"process"}.
    @ivar admin: Refused unless the slave was started with C{--allow-admin}.
    @ivar description: One line for listings; the docstring's first line by default.
    """

    name: str
    function: Callable[..., Any]
    run_in: RunIn = "thread"
    admin: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        if self.run_in not in RUN_IN:
            raise ValueError(f"task {self.name!r}: run_in must be one of {sorted(RUN_IN)}")
        if not callable(self.function):
            raise TypeError(f"task {self.name!r}: function is not callable")
        if not self.description:
            object.__setattr__(self, "description", _first_line(self.function))


def _first_line(function: Callable[..., Any]) -> str:
    doc = inspect.getdoc(function) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


_F = TypeVar("_F", bound=Callable[..., Any])


@overload
def task(name: _F) -> Task: ...
@overload
def task(
    name: str | None = None, *, run_in: RunIn = "thread", admin: bool = False
) -> Callable[[Callable[..., Any]], Task]: ...


def task(
    name: Any = None, *, run_in: RunIn = "thread", admin: bool = False
) -> Any:
    """
    Declare a function as a task: C{@task}, C{@task("name")}, C{@task(run_in="process")}.

    The decorated name becomes a L{Task}, which is what a C{picluster.tasks}
    entry point should point at.  A process task's child finds the function
    through the L{Task}, so the function must be defined at module level.
    """
    if callable(name):
        return Task(name.__name__, name, run_in, admin)

    def declare(function: Callable[..., Any]) -> Task:
        return Task(name or function.__name__, function, run_in, admin)

    return declare


def check_arguments(task: Task, args: Mapping[str, Any]) -> None:
    """
    Refuse C{args} that C{task.function(**args)} could not be called with.

    @raise BadArguments: naming the task, e.g. C{"primes: missing a required
        argument: 'stop'"}.
    """
    try:
        signature = _cached_signature(task.function)
    except TypeError:  # an unhashable callable: worked out every time
        signature = _signature(task.function)
    if signature is None:
        return  # Some builtins have no signature; the call itself will tell.
    try:
        signature.bind(**args)
    except TypeError as e:
        raise BadArguments(f"{task.name}: {e}") from None


def _signature(function: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(function)
    except (TypeError, ValueError):
        return None


#: Worked out once a task function: a slave checks the arguments of every
#: run, and inspect.signature is a tenth of what a slave spends on a small one.
_cached_signature = functools.lru_cache(maxsize=1024)(_signature)


# -- what built-ins may use of the slave ---------------------------------------


@dataclass(frozen=True)
class ProcessResult:
    """How a command ended and what it wrote (each stream capped)."""

    exit_code: int
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool = False
    stderr_truncated: bool = False


class RunProcess(Protocol):
    def __call__(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        limit: int = ...,
    ) -> Any: ...


@dataclass(frozen=True)
class Node:
    """
    The parts of the slave that node-bound built-ins (L{node_bound}) may use.

    @ivar run_process: Runs a command without a shell and returns a Deferred
        firing with a L{ProcessResult}; cancelling it kills the command.
        Fails with L{ChildCrashed} if a signal it did not send killed it.
    @ivar admin_commands: Admin task name to the commands it runs in turn.
    @ivar booted_at: When the machine booted, in the clock's seconds
        (C{None}: unknown), so that a reboot can refuse to come too soon.
    """

    reactor: Any
    clock: Any
    allow_admin: bool
    allowed_commands: frozenset[str]
    admin_commands: Mapping[str, Sequence[Sequence[str]]]
    run_process: RunProcess
    booted_at: float | None = None


class NodeBound:
    """
    A task function that needs the slave itself (its clock, its processes, its settings).

    The L{TaskRunner} calls C{bind(node)(**args)}; calling the function
    directly is an error.  Its signature, used to check arguments, is the
    implementation's without the leading C{node} parameter.

    @ivar refusal: Given the node, why the task is refused outright, or C{None}.
    """

    #: The implementation's name, copied with its docstring by C{functools.update_wrapper}.
    __name__: str

    def __init__(
        self,
        implementation: Callable[..., Any],
        refusal: Callable[[Node], str | None] | None = None,
    ):
        functools.update_wrapper(self, implementation)
        self.implementation = implementation
        self.refusal = refusal or (lambda node: None)
        signature = inspect.signature(implementation)
        parameters = list(signature.parameters.values())[1:]
        self.__signature__ = signature.replace(parameters=parameters)

    def __call__(self, **args: Any) -> Any:
        raise TypeError(f"{self.__name__} needs a slave to run on: run it with a TaskRunner")

    def bind(self, node: Node) -> Callable[..., Any]:
        return functools.partial(self.implementation, node)


def node_bound(
    refusal: Callable[[Node], str | None] | None = None,
) -> Callable[[Callable[..., Any]], NodeBound]:
    """Decorate C{f(node, **args)} as a L{NodeBound} task function."""
    return lambda implementation: NodeBound(implementation, refusal)


# -- the catalog ---------------------------------------------------------------


class TaskCatalog:
    """The tasks a slave offers, by name."""

    def __init__(self, tasks: Iterable[Task] = ()):
        self._tasks: dict[str, Task] = {}
        for each in tasks:
            self.add(each)

    def add(self, task: Task) -> None:
        """Offer C{task}; a name is offered once only."""
        if task.name in self._tasks:
            raise ValueError(f"a task named {task.name!r} is already registered")
        self._tasks[task.name] = task

    def get(self, name: str) -> Task | None:
        return self._tasks.get(name)

    def __getitem__(self, name: str) -> Task:
        return self._tasks[name]

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __iter__(self) -> Iterator[Task]:
        return iter(sorted(self._tasks.values(), key=lambda each: each.name))

    def __len__(self) -> int:
        return len(self._tasks)

    def names(self) -> list[str]:
        return sorted(self._tasks)
