"""
C{python -m bench NAME [--quick] [--out DIR]}: run one benchmark, or C{all}.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import time

from bench.procs import BenchError
from bench.report import Report

#: The benchmarks, in the order C{all} runs them: name to module.
BENCHMARKS = {
    "ingest": "bench.ingest",
    "rtt": "bench.rtt",
    "scale": "bench.scale",
    "tasks": "bench.tasks",
    "durability": "bench.durability",
    "arguments": "bench.arguments",
}


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure picluster against the baselines a user would pick instead."
        " Each benchmark prints a table and a last line of ratios with their goals,"
        " and writes NAME.json into --out.",
    )
    parser.add_argument("name", choices=[*BENCHMARKS, "all"], help="the benchmark to run")
    parser.add_argument(
        "--quick", action="store_true",
        help="tiny sizes, to check that the benchmark runs (the figures mean little)",
    )
    parser.add_argument("--out", default="bench-results", help="folder for the JSON records"
                        " (and, for all, the summary and plots); default: %(default)s")
    parser.add_argument("--keep", action="store_true",
                        help="keep the children's folders and logs for a look afterwards")
    parser.add_argument("--max-slaves", type=int, default=None, metavar="N",
                        help="scale: hold at most N simulated slaves on one master (its steps and"
                        " its rejoin), for a machine that cannot run 20,000 in reasonable time;"
                        " the record notes it")
    options = parser.parse_args(argv)
    if options.max_slaves is not None and options.max_slaves < 1:
        parser.error("--max-slaves must be at least 1")
    return options


def run_one(name: str, options: argparse.Namespace) -> Report:
    module = importlib.import_module(BENCHMARKS[name])
    report = Report(name, options.quick)
    print(f"== {name}: {module.__doc__.strip().splitlines()[0]}", flush=True)
    started = time.monotonic()
    module.run(report, options)
    print(f"({name} took {time.monotonic() - started:.0f} s)\n", flush=True)
    report.finish(options.out)
    return report


def _exit_on_sigterm(number: int, frame: object) -> None:
    # Unwind, so that every Processes block kills its children on the way.
    raise SystemExit(128 + number)


def main(argv: list[str] | None = None) -> int:
    options = parse_arguments(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    names = list(BENCHMARKS) if options.name == "all" else [options.name]
    reports: list[Report] = []
    failed: list[str] = []
    for name in names:
        try:
            reports.append(run_one(name, options))
        except BenchError as e:
            print(f"{name}: could not run: {e}", file=sys.stderr, flush=True)
            failed.append(name)
    if options.name == "all":
        from bench.summary import summarise

        summarise(reports, failed, options.out)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
