"""
picluster's tests.

Hypothesis keeps its database under its storage directory, which it takes
from the working directory the first time it looks: under trial, which
imports the tests before it changes into C{_trial_temp}, that was the
checkout.  So the directory is named here, before any test module imports
Hypothesis, as a temporary one removed at exit (under pytest,
C{conftest.py} names its own).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

if "HYPOTHESIS_STORAGE_DIRECTORY" not in os.environ:
    _hypothesis_home = tempfile.mkdtemp(prefix="picluster-hypothesis-")
    os.environ["HYPOTHESIS_STORAGE_DIRECTORY"] = _hypothesis_home
    atexit.register(shutil.rmtree, _hypothesis_home, True)
