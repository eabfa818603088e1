"""
The benchmarks run: each C{python -m bench NAME --quick} in a child
process, its record and last line checked, so that none of them rots.

These are not timed tests.  Quick sizes are too small for any figure to
mean something; what is checked is that every benchmark starts its
processes, measures every ratio it promises, and says so in the form
C{python -m bench all} and the docs rely on.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from typing import Any

from twisted.internet import defer, reactor, utils
from twisted.trial import unittest

from bench.__main__ import BENCHMARKS
from bench.report import Report
from bench.summary import summarise
from tests.processes import REPO_ROOT, child_env, temp_dir

#: Benchmarks whose baseline needs the bench extra (Dask).
_NEEDS = {"tasks": "distributed"}


class QuickRunTests(unittest.TestCase):
    """Every benchmark, at its quick size."""

    timeout = 240

    @defer.inlineCallbacks
    def run_benchmark(self, name: str, *arguments: str) -> defer.Deferred[Any]:
        needed = _NEEDS.get(name)
        if needed and importlib.util.find_spec(needed) is None:
            raise unittest.SkipTest(
                f"{needed} is not installed; the tests' install command installs it"
                " with picluster's bench extra"
            )
        out = temp_dir(self)
        output, errors, status = yield utils.getProcessOutputAndValue(
            sys.executable, ["-m", "bench", name, "--quick", "--out", out, *arguments],
            env=child_env(), path=REPO_ROOT, reactor=reactor,
        )
        text = output.decode("utf-8", "replace")
        report = f"stdout:\n{text}\nstderr:\n{errors.decode('utf-8', 'replace')}"
        self.assertEqual(status, 0, report)
        lines = text.strip().splitlines()
        self.assertTrue(lines and lines[-1].startswith(f"{name} ratios: "), report)
        with open(os.path.join(out, f"{name}.json"), encoding="utf-8") as record_file:
            record = json.load(record_file)
        self.assertEqual(record["benchmark"], name)
        self.assertTrue(record["quick"])
        self.assertTrue(record["ratios"], f"{name} recorded no ratio\n{report}")
        for ratio in record["ratios"]:
            self.assertIsInstance(ratio["value"], (int, float), f"{ratio['key']} unmeasured\n{report}")
            self.assertGreater(ratio["value"], 0, f"{ratio['key']}\n{report}")
            self.assertIn(ratio["key"], lines[-1])
            self.assertIn(ratio["met"], (True, False))
        return record

    def test_ingest(self) -> defer.Deferred[None]:
        return self.run_benchmark("ingest")

    def test_rtt(self) -> defer.Deferred[None]:
        return self.run_benchmark("rtt")

    def test_scale(self) -> defer.Deferred[None]:
        return self.run_benchmark("scale")

    @defer.inlineCallbacks
    def test_scaleCapped(self) -> Any:
        """--max-slaves caps the scale benchmark's steps and rejoin, and its record says so."""
        # 90 keeps the quick steps (50, 100) but for the last, and holds the
        # quick rejoin's 100 slaves to 90.
        record = yield self.run_benchmark("scale", "--max-slaves", "90")
        self.assertEqual(record["figures"]["counts"], [50])
        self.assertTrue(any(note.startswith("--max-slaves 90: steps 50 (not 50, 100), and 90 slaves")
                            for note in record["notes"]), record["notes"])

    def test_tasks(self) -> defer.Deferred[None]:
        return self.run_benchmark("tasks")

    def test_durability(self) -> defer.Deferred[None]:
        return self.run_benchmark("durability")

    def test_arguments(self) -> defer.Deferred[None]:
        return self.run_benchmark("arguments")

    def test_every_benchmark_is_tested(self) -> None:
        tested = {name[len("test_"):] for name in dir(self) if name.startswith("test_")}
        self.assertEqual(set(BENCHMARKS) - tested, set())


class SummaryTests(unittest.TestCase):
    """What C{all} writes from the records: the ratio lines and the plots."""

    def reports(self) -> list[Report]:
        scale = Report("scale", quick=True)
        scale.figure("rss_curve", {
            "slaves": [10, 20],
            "picluster_bytes_per_slave": [4000.0, 3900.0],
            "threaded_bytes_per_connection": [17000.0, 16500.0],
            "picluster_total_bytes": [40000.0, 78000.0],
            "threaded_total_bytes": [170000.0, 330000.0],
        })
        scale.ratio("rss_per_slave", 0.24, 0.5, higher=False)
        rtt = Report("rtt", quick=True)
        percentiles = {"p50": 0.1, "p90": 0.2, "p99": 0.4, "p99.9": 0.9}
        rtt.figure("latency_ms", {
            mode: {system: dict(percentiles) for system in ("picluster", "amp", "bare")}
            for mode in ("serial", "inflight50")
        })
        rtt.ratio("serial_vs_amp", 1.5, 2.0)
        return [scale, rtt]

    def test_summary(self) -> None:
        out = temp_dir(self)
        summarise(self.reports(), ["tasks"], out)
        with open(os.path.join(out, "summary.txt"), encoding="utf-8") as summary_file:
            summary = summary_file.read().splitlines()
        self.assertEqual(summary[0], "scale ratios: rss_per_slave 0.24 (goal <= 0.5: met)")
        self.assertEqual(summary[1], "rtt ratios: serial_vs_amp 1.50 (goal >= 2: MISSED)")
        self.assertEqual(summary[2], "tasks: could not run")
        self.assertEqual(summary[3], "goals met: 1 of 2; missed: serial_vs_amp")
        with open(os.path.join(out, "summary.json"), encoding="utf-8") as summary_json:
            record = json.load(summary_json)
        self.assertEqual(record["failed"], ["tasks"])
        self.assertEqual(record["benchmarks"]["scale"][0]["met"], True)

    def test_plots(self) -> None:
        if importlib.util.find_spec("matplotlib") is None:
            raise unittest.SkipTest("matplotlib (picluster's bench extra) is not installed")
        out = temp_dir(self)
        summarise(self.reports(), [], out)
        for name in ("scale-rss.png", "rtt-latency.png"):
            with open(os.path.join(out, name), "rb") as png:
                self.assertEqual(png.read(8), b"\x89PNG\r\n\x1a\n", name)
