"""
Tests for L{picluster.tasks.catalog}: declaring tasks and loading them from entry points.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial import unittest

from picluster.tasks import BadArguments, NotPermitted, Task, TaskCatalog, task
from picluster.tasks.builtin import BUILTIN_TASKS
from picluster.tasks.catalog import Node, NodeBound, check_arguments, node_bound
from picluster.tasks.errors import ChildCrashed, CommandFailed, error_kind
from picluster.tasks.installed import installed_tasks
from picluster.wire.messages import RunTask
from tests.test_worker import as_sent


def add(a: int, b: int = 1) -> int:
    """Add two numbers.

    More text that is not the description.
    """
    return a + b


@task(run_in="process")
def render(scene: str) -> dict[str, str]:
    """Render a scene."""
    return {"scene": scene}


class FakeDistribution:
    def __init__(self, name: str) -> None:
        self.name = name


class FakeEntryPoint:
    """Just enough of an L{importlib.metadata.EntryPoint} for L{installed_tasks}."""

    def __init__(self, name: str, loaded: Any, dist: str = "example-tasks") -> None:
        self.name = name
        self.value = f"example.tasks:{name}"
        self.dist = FakeDistribution(dist)
        self._loaded = loaded

    def load(self) -> Any:
        if isinstance(self._loaded, BaseException):
            raise self._loaded
        return self._loaded


BUILTIN_NAMES = sorted(each.name for each in BUILTIN_TASKS)


class TaskDeclarationTests(unittest.TestCase):
    """
    C{@task} turns a function into a L{Task}.
    """

    def test_decoratorWithOptions(self) -> None:
        """@task(run_in=...) keeps the function's name, function and docstring line."""
        expected = Task("render", render.function, "process", False, "Render a scene.")
        self.assertEqual(render, expected)
        self.assertEqual(render.function("x"), {"scene": "x"})

    def test_bareDecorator(self) -> None:
        """@task without parentheses declares a thread task named after the function."""
        declared = task(add)
        self.assertEqual((declared.name, declared.run_in, declared.admin), ("add", "thread", False))
        self.assertEqual(declared.description, "Add two numbers.")

    def test_explicitNameAndAdmin(self) -> None:
        """@task("name", admin=True) names the task and marks it admin."""
        declared = task("plus", admin=True)(add)
        self.assertEqual((declared.name, declared.admin), ("plus", True))

    def test_badRunIn(self) -> None:
        """A run_in other than reactor, thread or process is refused at once."""
        self.assertRaises(ValueError, Task, "x", add, "gpu")

    def test_notCallable(self) -> None:
        """A task's function must be callable."""
        self.assertRaises(TypeError, Task, "x", 3)


class CheckArgumentsTests(unittest.TestCase):
    """
    Arguments are checked against the function's signature before it runs.
    """

    def test_fits(self) -> None:
        """Arguments the function accepts pass."""
        check_arguments(Task("add", add), {"a": 1})

    def test_missing(self) -> None:
        """A missing argument is BadArguments naming the task and the argument."""
        e = self.assertRaises(BadArguments, check_arguments, Task("add", add), {"b": 2})
        self.assertEqual(str(e), "add: missing a required argument: 'a'")

    def test_unexpected(self) -> None:
        """An argument the function does not take is BadArguments."""
        e = self.assertRaises(BadArguments, check_arguments, Task("add", add), {"a": 1, "c": 2})
        self.assertEqual(str(e), "add: got an unexpected keyword argument 'c'")

    def test_checkedAgain(self) -> None:
        """The signature is worked out once, and every later check still uses it."""
        checked = Task("add", add)
        for _ in range(2):
            check_arguments(checked, {"a": 1})
            self.assertRaises(BadArguments, check_arguments, checked, {"b": 2})

    def test_unhashableCallable(self) -> None:
        """A callable that cannot be a cache key is checked all the same."""

        class Unhashable:
            __hash__ = None  # type: ignore[assignment]

            def __call__(self, a: int) -> int:
                return a

        checked = Task("unhashable", Unhashable())
        check_arguments(checked, {"a": 1})
        e = self.assertRaises(BadArguments, check_arguments, checked, {"b": 2})
        self.assertEqual(str(e), "unhashable: missing a required argument: 'a'")


class ErrorKindTests(unittest.TestCase):
    """
    Exceptions map to the contract's error kinds.
    """

    def test_kinds(self) -> None:
        """Each known exception has its kind; anything else is error."""
        self.assertEqual(error_kind(BadArguments()), "bad_arguments")
        self.assertEqual(error_kind(NotPermitted()), "not_permitted")
        self.assertEqual(error_kind(ChildCrashed()), "crashed")
        self.assertEqual(error_kind(CommandFailed("x")), "error")
        self.assertEqual(error_kind(KeyError()), "error")


class NodeBoundTests(unittest.TestCase):
    """
    Node-bound functions get the node from the runner, not from the arguments.
    """

    def setUp(self) -> None:
        @node_bound(lambda node: "no" if not node.allow_admin else None)
        def scale(node: Node, factor: int) -> Any:
            """Scale something."""
            return (node, factor)

        self.scale = scale

    def test_signatureWithoutNode(self) -> None:
        """The signature checked against the arguments leaves out the node."""
        self.assertIsInstance(self.scale, NodeBound)
        check_arguments(Task("scale", self.scale), {"factor": 2})
        self.assertRaises(BadArguments, check_arguments, Task("scale", self.scale), {"node": 1})

    def test_bind(self) -> None:
        """bind(node) gives a function of the arguments alone."""
        self.assertEqual(self.scale.bind("the node")(factor=3), ("the node", 3))

    def test_callDirectly(self) -> None:
        """Called without a runner, a node-bound function says so."""
        self.assertRaises(TypeError, self.scale, factor=3)

    def test_refusal(self) -> None:
        """The refusal sees the node."""
        self.assertEqual(self.scale.refusal(Node(None, None, False, frozenset(), {}, None)), "no")

    def test_description(self) -> None:
        """The docstring still describes the task."""
        self.assertEqual(Task("scale", self.scale).description, "Scale something.")


class RegistryTests(unittest.TestCase):
    """
    The registry maps names to tasks, each name once.
    """

    def test_lookups(self) -> None:
        """get, [], in, len and names agree."""
        registry = TaskCatalog([render, task(add)])
        self.assertIs(registry.get("render"), render)
        self.assertIs(registry["render"], render)
        self.assertIsNone(registry.get("nothing"))
        self.assertIn("add", registry)
        self.assertEqual((len(registry), registry.names()), (2, ["add", "render"]))
        self.assertEqual([each.name for each in registry], ["add", "render"])

    def test_duplicate(self) -> None:
        """Adding a second task of the same name is an error."""
        registry = TaskCatalog([render])
        self.assertRaises(ValueError, registry.add, render)


class LoadTests(unittest.TestCase):
    """
    installed_tasks: the built-ins plus the picluster.tasks entry points.
    """

    def test_builtinsWithoutEntryPoints(self) -> None:
        """The built-ins are there even with no entry points at all."""
        registry = installed_tasks(entry_points=[])
        self.assertEqual(registry.names(), BUILTIN_NAMES)
        self.assertEqual(
            BUILTIN_NAMES,
            ["codebase_revision", "echo", "node_time", "primes", "reboot", "shell", "shutdown",
             "sleep", "update"],
        )

    def test_installed(self) -> None:
        """Without arguments it reads the installed entry points and keeps the built-ins."""
        registry = installed_tasks()
        self.assertTrue(set(BUILTIN_NAMES) <= set(registry.names()))

    def test_taskEntryPoint(self) -> None:
        """A Task entry point is renamed to the entry point's name."""
        registry = installed_tasks(entry_points=[FakeEntryPoint("draw", render)])
        self.assertEqual(registry["draw"].function, render.function)
        self.assertEqual((registry["draw"].name, registry["draw"].run_in), ("draw", "process"))

    def test_callableEntryPoint(self) -> None:
        """A plain callable becomes a thread task."""
        registry = installed_tasks(entry_points=[FakeEntryPoint("add", add)])
        self.assertEqual(registry["add"], Task("add", add, "thread"))

    def test_brokenEntryPoint(self) -> None:
        """One that fails to load is logged with its distribution and skipped."""
        entry_points = [
            FakeEntryPoint("broken", ImportError("no module named example"), dist="bad-dist"),
            FakeEntryPoint("add", add),
        ]
        with capturedLogs() as events:
            registry = installed_tasks(entry_points=entry_points)
        self.assertNotIn("broken", registry)
        self.assertIn("add", registry)
        [event] = [e for e in events if e.get("log_failure") is not None]
        self.assertIn("broken", formatEvent(event))
        self.assertIn("bad-dist", formatEvent(event))
        self.assertIsInstance(event["log_failure"].value, ImportError)
        self.assertEqual(len(self.flushLoggedErrors(ImportError)), 1)

    def test_notCallable(self) -> None:
        """An object that is neither a Task nor callable is skipped."""
        with capturedLogs() as events:
            registry = installed_tasks(entry_points=[FakeEntryPoint("three", 3)])
        self.assertNotIn("three", registry)
        self.assertEqual(len([e for e in events if e.get("log_failure")]), 1)
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)

    def test_builtinNameTaken(self) -> None:
        """An entry point cannot replace a built-in: it is skipped with a warning."""
        with capturedLogs() as events:
            registry = installed_tasks(entry_points=[FakeEntryPoint("shell", add, "sneaky")])
        self.assertIsNot(registry["shell"].function, add)
        [warning] = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertIn("shell", formatEvent(warning))
        self.assertIn("sneaky", formatEvent(warning))

    def test_secondOfAName(self) -> None:
        """Of two entry points with one name, the first wins."""
        with capturedLogs():
            registry = installed_tasks(
                entry_points=[FakeEntryPoint("add", add), FakeEntryPoint("add", render)]
            )
        self.assertIs(registry["add"].function, add)


class InstalledPackageTests(unittest.TestCase):
    """
    A task from an installed package: real package metadata on sys.path, as
    pip leaves it, found by importlib.metadata and run in a real child.
    """

    def install(self) -> str:
        """Lay out the package C{pitasks_demo} with a C{double} entry point."""
        import os
        import sys

        from tests.processes import temp_dir

        site = temp_dir(self)
        with open(os.path.join(site, "pitasks_demo.py"), "w") as module:
            module.write(
                "from picluster.tasks import task\n\n"
                "@task(run_in='process')\n"
                "def double(number: int) -> int:\n"
                "    '''Twice the number, computed in a child process.'''\n"
                "    return 2 * number\n"
            )
        info = os.path.join(site, "pitasks_demo-1.0.dist-info")
        os.mkdir(info)
        with open(os.path.join(info, "METADATA"), "w") as metadata:
            metadata.write("Metadata-Version: 2.1\nName: pitasks-demo\nVersion: 1.0\n")
        with open(os.path.join(info, "entry_points.txt"), "w") as entry_points:
            entry_points.write("[picluster.tasks]\ndouble = pitasks_demo:double\n")
        sys.path.insert(0, site)
        self.addCleanup(sys.path.remove, site)
        self.addCleanup(sys.modules.pop, "pitasks_demo", None)
        return site

    def test_installedPackageAddsATask(self) -> Any:
        """An installed package's entry point adds its task, which runs in a child process."""
        from twisted.internet import defer, reactor

        from picluster.slave.runner import TaskRunner

        self.install()
        registry = installed_tasks()
        self.assertIn("double", registry.names())
        self.assertEqual(registry.get("double").run_in, "process")
        runner = TaskRunner(registry, slots=1, clock=reactor, reactor=reactor)
        self.addCleanup(runner.stop)  # its warm worker
        finished: defer.Deferred[dict[str, Any]] = defer.Deferred()
        runner.on_result = finished.callback
        runner.start(RunTask(1, 1, "double", {"number": 21}, 30))

        def check(result: dict[str, Any]) -> None:
            self.assertEqual((result["outcome"], result["result"]), ("done", 42), result)

        return finished.addCallback(as_sent).addCallback(check)
