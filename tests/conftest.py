"""
pytest only: run the suite in a temporary directory, as trial runs it in
C{_trial_temp}.

Trial's C{TestCase.mktemp()} returns a path relative to the working
directory; trial itself changes into C{_trial_temp} first, but under pytest
the working directory is the checkout, and every run left files in it.  The
change comes after collection, so that paths on the command line (C{--ignore
tests/system}) still mean what they say.  Hypothesis, whose plugin pytest
loads before any test, is told its database's place at once.
"""

from __future__ import annotations

import os
import shutil
import tempfile

_checkout = os.getcwd()
_workdir = tempfile.mkdtemp(prefix="picluster-tests-")
os.environ["HYPOTHESIS_STORAGE_DIRECTORY"] = os.path.join(_workdir, ".hypothesis")


def pytest_collection_finish(session: object) -> None:
    os.chdir(_workdir)


def pytest_sessionfinish(session: object, exitstatus: int) -> None:
    os.chdir(_checkout)
    shutil.rmtree(_workdir, ignore_errors=True)
