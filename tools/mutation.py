#!/usr/bin/env python
"""
Mutation testing of picluster's wire layer, each mutant in a fresh pytest.

    python tools/mutation.py                      # wire/envelope.py, requests.py, protocol.py
    python tools/mutation.py --sample 50          # 50 mutants, chosen with --seed
    python tools/mutation.py --module picluster/wire/envelope.py --tests tests/test_wire.py
    python tools/mutation.py --mutant 'picluster.wire.envelope.x_decode__mutmut_3'

It needs mutmut 3 (``pip install 'mutmut>=3,<4'``) next to the test
dependencies, and touches nothing in the checkout: the files git knows of
(committed or not, ignored ones left out) are copied to a temporary
directory, removed at the end unless --keep is given.

Why not ``mutmut run``: it forks every mutant's test run from one warmed-up
process, and Hypothesis then fails with "called from multiple different
executors", which mutmut counts as a kill.  Here mutmut only generates the
mutants: each module in the copy is replaced by mutmut's version of it, in
which every function is a trampoline calling either the original or the
mutant named by the MUTANT_UNDER_TEST environment variable.  Each mutant is
then tested by its own ``python -m pytest -x -q -p no:cacheprovider TESTS``
process, with an empty Hypothesis database and a fixed Hypothesis seed.

A mutant is killed when pytest fails, survives when it passes, and times out
when pytest runs past --timeout (by default three times an unmutated run,
plus 30 s); a timeout counts as detected.  Survivors are printed with their
diffs: judge by hand which ones are equivalent to the original.
"""

from __future__ import annotations

import argparse
import difflib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULES = ["picluster/wire/envelope.py", "picluster/wire/requests.py", "picluster/wire/protocol.py"]
TESTS = ["tests/test_wire.py", "tests/test_protocol.py", "tests/test_fuzz.py"]


def copy_checkout(destination: Path) -> None:
    """Copy the files git knows of, as they are in the work tree."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True,
    ).stdout.decode()
    for name in filter(None, listing.split("\0")):
        source = ROOT / name
        if source.is_file():  # a file deleted but not yet staged is skipped
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def generate_mutants(checkout: Path, modules: list[str]) -> dict[str, tuple[str, str]]:
    """
    Replace each module in C{checkout} by its trampolined mutmut version.

    @return: Each mutant's name (as MUTANT_UNDER_TEST wants it) mapped to its
        module path and the mutated module's code.
    """
    # mutmut reads its settings (do_not_mutate_patterns) from the working
    # directory's setup.cfg: point them at the copy's, with our modules added.
    with open(checkout / "setup.cfg", "a") as cfg:
        cfg.write("\n[mutmut]\nsource_paths =\n" + "".join(f"    {m}\n" for m in modules))
    os.chdir(checkout)
    from mutmut.mutation.file_mutation import mutate_file_contents
    from mutmut.utils.format_utils import get_mutant_name

    mutants = {}
    for module in modules:
        mutated = mutate_file_contents(module, (checkout / module).read_text())
        (checkout / module).write_text(mutated.code)
        for function_mutant in mutated.mutant_names:
            mutants[get_mutant_name(Path(module), function_mutant)] = (module, mutated.code)
    return mutants


def diffs(mutants: dict[str, tuple[str, str]], names: list[str]) -> dict[str, str]:
    """The diff each of C{names} makes to its function (a module is parsed once)."""
    import libcst
    from mutmut.mutation.diff_apply import read_mutant_function, read_original_function

    parsed: dict[str, libcst.Module] = {}
    result = {}
    for name in names:
        module, code = mutants[name]
        if module not in parsed:
            parsed[module] = libcst.parse_module(code)
        functions = (read_original_function(parsed[module], name), read_mutant_function(parsed[module], name))
        before, after = (libcst.Module([f]).code.strip().splitlines() for f in functions)
        result[name] = "\n".join(difflib.unified_diff(before, after, module, module, lineterm=""))
    return result


def run_tests(checkout: Path, tests: list[str], mutant: str, timeout: float) -> tuple[str, float]:
    """
    Run C{tests} in a fresh process with C{mutant} active.

    @return: C{"killed"}, C{"survived"} or C{"timeout"}, and the seconds taken.
    """
    with tempfile.TemporaryDirectory(prefix="hypothesis-") as hypothesis_dir:
        env = dict(os.environ, MUTANT_UNDER_TEST=mutant, PYTHONPATH=str(checkout),
                   HYPOTHESIS_STORAGE_DIRECTORY=hypothesis_dir, PYTHONDONTWRITEBYTECODE="1")
        command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                   "--hypothesis-seed=0", *tests]
        started = time.monotonic()
        # A session of its own, so that a timeout kills whatever pytest started too.
        process = subprocess.Popen(command, cwd=checkout, env=env, start_new_session=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return "timeout", time.monotonic() - started
    return ("survived" if code == 0 else "killed"), time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--module", action="append", help=f"module to mutate (default: {' '.join(MODULES)})")
    parser.add_argument("--tests", action="append", help=f"test file to run (default: {' '.join(TESTS)})")
    parser.add_argument("--sample", type=int, help="test only this many mutants, chosen at random")
    parser.add_argument("--seed", type=int, default=0, help="seed of --sample's choice (default 0)")
    parser.add_argument("--mutant", action="append", help="test only this mutant (repeatable)")
    parser.add_argument("--workers", type=int, default=2, help="pytest processes at once (default 2)")
    parser.add_argument("--timeout", type=float, help="seconds per mutant (default: 3 x a clean run + 30)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary checkout, and say where")
    args = parser.parse_args()
    modules, tests = args.module or MODULES, args.tests or TESTS

    checkout = Path(tempfile.mkdtemp(prefix="picluster-mutation-"))
    try:
        copy_checkout(checkout)
        mutants = generate_mutants(checkout, modules)
        names = sorted(mutants)
        if args.mutant:
            unknown = set(args.mutant) - set(names)
            if unknown:
                parser.error(f"no such mutant: {', '.join(sorted(unknown))}")
            names = args.mutant
        elif args.sample is not None and args.sample < len(names):
            names = sorted(random.Random(args.seed).sample(names, args.sample))
        print(f"{len(mutants)} mutants of {', '.join(modules)}; testing {len(names)}", flush=True)

        # Sanity: the tests pass unmutated, and fail when every function raises.
        outcome, took = run_tests(checkout, tests, "", timeout=600)
        if outcome != "survived":
            print(f"the tests do not pass on the unmutated code ({outcome})")
            return 2
        if run_tests(checkout, tests, "fail", timeout=600)[0] != "killed":
            print("the tests pass with every function failing: is the copy the one imported?")
            return 2
        timeout = args.timeout or 3 * took + 30
        print(f"clean run: {took:.1f} s; timeout per mutant: {timeout:.0f} s", flush=True)

        results: dict[str, list[str]] = {"killed": [], "survived": [], "timeout": []}
        with ThreadPoolExecutor(args.workers) as pool:
            runs = pool.map(lambda name: (name, *run_tests(checkout, tests, name, timeout)), names)
            for done, (name, outcome, took) in enumerate(runs, 1):
                results[outcome].append(name)
                print(f"[{done}/{len(names)}] {outcome:8} {took:5.1f} s  {name}", flush=True)

        shown = diffs(mutants, results["survived"] + results["timeout"])
        for name in results["survived"]:
            print(f"\n--- survived: {name}\n{shown[name]}")
        for name in results["timeout"]:
            print(f"\n--- timed out: {name}\n{shown[name]}")
        detected = len(results["killed"]) + len(results["timeout"])
        print(f"\nkilled {len(results['killed'])}, timed out {len(results['timeout'])},"
              f" survived {len(results['survived'])}, of {len(names)}:"
              f" {100 * detected / max(1, len(names)):.1f} % detected")
        return 1 if results["survived"] else 0
    finally:
        os.chdir(ROOT)
        if args.keep:
            print(f"checkout kept in {checkout}")
        else:
            shutil.rmtree(checkout, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
