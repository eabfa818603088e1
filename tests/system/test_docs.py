"""
The documentation builds, warning-free, from the code it describes; the
README stays a page a newcomer reads; the source passes ruff and mypy.

Sphinx, ruff and mypy run as child processes, as a contributor would run them.
"""

from __future__ import annotations

import os
import sys

from twisted.internet import defer
from twisted.trial import unittest

from tests.processes import REPO_ROOT, Child, child_env, temp_dir

#: Lines a newcomer reads in five minutes.
README_LINES = 150


class DocsTests(unittest.TestCase):
    """The Sphinx docs and the README."""

    @defer.inlineCallbacks
    def test_docsBuildWithoutWarnings(self):
        """sphinx-build -W -n builds docs/ with every option table generated and no warning."""
        out = temp_dir(self)
        build = Child(
            self, "sphinx",
            [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-q", "-b", "html",
             "-d", os.path.join(out, "doctrees"), os.path.join(REPO_ROOT, "docs"),
             os.path.join(out, "html")],
            cwd=out, env=child_env(),
        )
        status = yield build.wait_for_exit(timeout=120)
        self.assertEqual(status, 0, build.report())
        with open(os.path.join(out, "html", "operating.html"), encoding="utf-8") as page:
            operating = page.read()
        # The generated tables carry options no hand-written text names twice.
        for option in ("--max-frame", "--dead-after", "--allow-shell"):
            self.assertIn(option, operating)

    def test_readmeIsShort(self):
        """README.rst is a newcomer's page, the manual lives in docs/."""
        with open(os.path.join(REPO_ROOT, "README.rst"), encoding="utf-8") as readme:
            lines = readme.read().splitlines()
        self.assertLessEqual(len(lines), README_LINES)


class LintTests(unittest.TestCase):
    """ruff and mypy, configured in pyproject.toml, find nothing."""

    @defer.inlineCallbacks
    def test_ruffIsClean(self):
        """ruff check over the whole checkout reports no problem."""
        where = temp_dir(self)
        ruff = Child(
            self, "ruff",
            [sys.executable, "-m", "ruff", "check", "--no-cache", "--quiet", REPO_ROOT],
            cwd=where, env=child_env(),
        )
        status = yield ruff.wait_for_exit(timeout=60)
        self.assertEqual(status, 0, ruff.report())

    @defer.inlineCallbacks
    def test_mypyIsClean(self):
        """
        mypy, with the mypy-zope plugin for Twisted's interfaces, finds no
        error in the package and its twistd plugins; its cache and output
        go to a temporary directory, not the checkout.
        """
        where = temp_dir(self)
        mypy = Child(
            self, "mypy",
            [sys.executable, "-m", "mypy", "--config-file", os.path.join(REPO_ROOT, "pyproject.toml"),
             "--cache-dir", os.path.join(where, "cache"), "--no-error-summary",
             os.path.join(REPO_ROOT, "picluster"), os.path.join(REPO_ROOT, "twisted", "plugins")],
            cwd=where, env=child_env(),
        )
        status = yield mypy.wait_for_exit(timeout=300)
        self.assertEqual(status, 0, mypy.report())
