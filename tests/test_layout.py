"""
The shape of the package: folders by role, imports that only go down.

The graph counts every import a module makes, at its top, in a function or
under C{TYPE_CHECKING}: a loop of type-only imports is still two modules
that cannot be read, or changed, one without the other.
"""

from __future__ import annotations

import ast
import os
import re

from twisted.trial import unittest

from tests.processes import REPO_ROOT

PACKAGE = os.path.join(REPO_ROOT, "picluster")

#: Another object's protocol reached into: C{x.protocol.send}, not C{self.protocol.send}.
_REACHING = re.compile(r"(?<!self)\.protocol\.[a-z_]")

#: The roles, each a folder of its own.
ROLES = ("wire", "trust", "master", "slave", "client", "cli", "tasks", "tap")


def _module_name(path: str) -> str:
    relative = os.path.relpath(path, REPO_ROOT)[: -len(".py")]
    parts = relative.split(os.sep)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, str]:
    """Every module of picluster, by dotted name, to its file."""
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                found[_module_name(path)] = path
    return found


def imports(path: str, known: set[str]) -> set[str]:
    """The picluster modules that the file at C{path} imports, anywhere in it."""
    with open(path, encoding="utf-8") as source:
        tree = ast.parse(source.read(), path)
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                targets.add(submodule if submodule in known else node.module)
    return {target for target in targets if target in known}


def import_graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports(path, known) - {name} for name, path in found.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One loop of the graph, as the modules along it, or C{None}."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def role(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in ROLES else None


class LayoutTests(unittest.TestCase):
    """The package reads at a glance, and its imports only go one way."""

    def test_findCycleFindsOne(self):
        """The loop finder itself sees a loop of three."""
        graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
        self.assertEqual(find_cycle(graph), ["a", "b", "c", "a"])
        self.assertIsNone(find_cycle({"a": {"b"}, "b": set()}))

    def test_noImportLoops(self):
        """No module of picluster imports, through others, itself."""
        self.assertIsNone(find_cycle(import_graph()))

    def test_rolesAreFolders(self):
        """Each role is a package of its own."""
        for name in ROLES:
            self.assertTrue(os.path.isfile(os.path.join(PACKAGE, name, "__init__.py")), name)

    def test_sidesDoNotImportEachOther(self):
        """The master and the slave never import each other; the wire, trust and the tasks API import no role."""
        below = {"wire": set(), "trust": set(), "tasks": set(), "master": {"wire", "trust"},
                 "slave": {"wire", "tasks", "trust"}, "client": {"wire", "trust"}}
        for module, targets in import_graph().items():
            allowed = below.get(role(module) or "")
            if allowed is None:
                continue
            for target in targets:
                other = role(target)
                if other is not None and other != role(module):
                    self.assertIn(other, allowed, f"{module} imports {target}")

    def test_onlyHandlersTouchTheirProtocol(self):
        """
        Outside the wire, only a connection's own handler reaches its
        protocol (C{self.protocol}); workers, watchers and the service send
        through the handler's C{send}/C{request}/C{close}.
        """
        found = []
        for name, path in modules().items():
            if role(name) == "wire":
                continue
            with open(path, encoding="utf-8") as source:
                for number, line in enumerate(source, 1):
                    if _REACHING.search(line):
                        found.append(f"{name}:{number}: {line.strip()}")
        self.assertEqual(found, [])

    def test_theReachingPatternSeesAReach(self):
        """The pattern above finds what it forbids, and lets a handler's own protocol be."""
        self.assertTrue(_REACHING.search("worker.connection.protocol.request('run_task')"))
        self.assertFalse(_REACHING.search("self.protocol.request('hello')"))
