"""
Tests for L{picluster.tasks.builtin}, each task on its own, with a fake node.

The node's C{run_process} is a fake here: what the commands would do is
scripted, so no test runs apt-get or reboots anything.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import time
from datetime import datetime
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

import picluster
from picluster.tasks import BadArguments, NotPermitted, builtin
from picluster.tasks import primes as primes_module
from picluster.tasks.catalog import Node, ProcessResult, check_arguments
from picluster.tasks.errors import CommandFailed


def naive_count(start: int, stop: int) -> int:
    """The number of primes in [start, stop), the slow and obvious way."""
    return sum(
        1 for n in range(max(start, 2), stop) if all(n % d for d in range(2, int(n**0.5) + 1))
    )


class FakeProcesses:
    """A scripted run_process: each call takes the next result (default: exit 0)."""

    def __init__(self, *results: ProcessResult) -> None:
        self.results = list(results)
        self.calls: list[dict[str, Any]] = []

    def __call__(self, argv: Any, *, stdin: Any = None, env: Any = None,
                 limit: int = 0) -> defer.Deferred[ProcessResult]:
        self.calls.append({"argv": list(argv), "env": env, "limit": limit})
        if self.results:
            return defer.succeed(self.results.pop(0))
        return defer.succeed(ProcessResult(0, b"", b""))


def make_node(processes: FakeProcesses | None = None, *, allow_admin: bool = False,
              allowed: tuple[str, ...] = (), clock: Clock | None = None) -> Node:
    return Node(
        reactor=None,
        clock=clock or Clock(),
        allow_admin=allow_admin,
        allowed_commands=frozenset(allowed),
        admin_commands={
            "reboot": [["reboot-now"]],
            "shutdown": [["halt-now"]],
            "update": [["fetch-lists"], ["upgrade-all"]],
        },
        run_process=processes or FakeProcesses(),
    )


class PrimesTests(unittest.TestCase):
    """
    primes counts the primes in a half-open range, with a segmented sieve.
    """

    def test_smallRanges(self) -> None:
        """Every small range, including empty, negative and tiny ones, matches a naive count."""
        for start in (-10, -1, 0, 1, 2, 3, 4, 17, 90, 97, 100):
            for stop in range(max(start, 0), 230, 7):
                self.assertEqual(primes_module.primes(start, stop), naive_count(start, stop),
                                 (start, stop))
        self.assertEqual(primes_module.primes(0, 0), 0)
        self.assertEqual(primes_module.primes(2, 3), 1)
        self.assertEqual(primes_module.primes(-5, -1), 0)

    def test_acrossSegments(self) -> None:
        """Ranges spanning segment boundaries match a naive count."""
        size = primes_module._PRIMES_SEGMENT
        for start, stop in ((size - 100, size + 100), (3 * size - 50, 3 * size + 60)):
            self.assertEqual(primes_module.primes(start, stop), naive_count(start, stop))

    def test_knownValue(self) -> None:
        """There are 78498 primes below a million."""
        self.assertEqual(primes_module.primes(0, 10**6), 78498)
        self.assertEqual(primes_module.primes(10**6, 10**6 + 1000), 75)

    def test_badArguments(self) -> None:
        """Non-integers, bools, reversed and too-wide ranges are BadArguments."""
        for start, stop in ((0, True), (False, 10), (0, 10.0), ("0", 10), (10, 5),
                            (0, primes_module.PRIMES_MAX_RANGE + 1)):
            self.assertRaises(BadArguments, primes_module.primes, start, stop)

    def test_widestRange(self) -> None:
        """A range exactly as wide as allowed is not refused by the check."""
        self.patch(primes_module, "count_primes", lambda start, stop: "counted")
        self.assertEqual(primes_module.primes(5, 5 + primes_module.PRIMES_MAX_RANGE), "counted")

    def test_largestStop(self) -> None:
        """stop may be PRIMES_MAX_STOP, not one more: a huge stop would cost a huge sieve."""
        largest = primes_module.PRIMES_MAX_STOP
        self.assertEqual(primes_module.primes(largest - 1, largest), 0)
        e = self.assertRaises(BadArguments, primes_module.primes, largest, largest + 1)
        self.assertEqual(str(e), f"primes: stop ({largest + 1}) is larger than {largest}")
        self.assertRaises(BadArguments, primes_module.primes, 10**16, 10**16 + 1)


class EchoTests(unittest.TestCase):
    """
    echo answers with its arguments, whatever they are.
    """

    def test_arguments(self) -> None:
        """The result is the arguments, as a new dict."""
        args = {"n": 1, "text": "hi", "nested": {"list": [1, None, True]}}
        self.assertEqual(builtin.echo(**args), args)

    def test_none(self) -> None:
        """Without arguments it answers an empty object."""
        self.assertEqual(builtin.echo(), {})

    def test_anyName(self) -> None:
        """Every argument name is accepted: there is nothing to refuse."""
        [echo] = [each for each in builtin.BUILTIN_TASKS if each.name == "echo"]
        check_arguments(echo, {"args": 1, "start": 2, "node": 3})


class NodeTimeTests(unittest.TestCase):
    """
    node_time reports the node's clock.
    """

    def test_fields(self) -> None:
        """Unix time, an ISO-8601 time with an offset for the same moment, and a zone name."""
        before = time.time()
        result = builtin.node_time()
        self.assertTrue(before <= result["time"] <= time.time())
        parsed = datetime.fromisoformat(result["iso"])
        self.assertIsNotNone(parsed.utcoffset())
        self.assertAlmostEqual(parsed.timestamp(), result["time"], places=3)
        self.assertIsInstance(result["timezone"], str)
        self.assertTrue(result["timezone"])

    def test_timezoneFromTZ(self) -> None:
        """The TZ variable, when set, names the zone."""
        self.patch(os, "environ", dict(os.environ, TZ=":Europe/Berlin"))
        self.assertEqual(builtin._timezone_name(datetime.now().astimezone()), "Europe/Berlin")


class CodebaseRevisionTests(unittest.TestCase):
    """
    codebase_revision says which picluster runs, and its git revision when it can.
    """

    def test_inThisCheckout(self) -> None:
        """Run from a git checkout, it reports HEAD and its commit time."""
        package = os.path.dirname(os.path.abspath(picluster.__file__))
        if shutil.which("git") is None or not os.path.exists(
            os.path.join(os.path.dirname(package), ".git")
        ):
            raise unittest.SkipTest("not a git checkout, or no git")
        head = subprocess.run(["git", "-C", package, "rev-parse", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        result = builtin.codebase_revision()
        self.assertEqual(result["version"], picluster.__version__)
        self.assertEqual(result["path"], package)
        self.assertEqual(result["revision"], head)
        datetime.fromisoformat(result["revision_time"])

    def test_noGit(self) -> None:
        """Without git the revision is null."""
        def missing(*args: Any, **kwargs: Any) -> Any:
            raise FileNotFoundError("git")

        self.patch(subprocess, "run", missing)
        result = builtin.codebase_revision()
        self.assertEqual((result["revision"], result["revision_time"]), (None, None))
        self.assertEqual(result["version"], picluster.__version__)

    def test_notACheckout(self) -> None:
        """A package directory that git does not track has no revision."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.patch(picluster, "__file__", os.path.join(directory, "__init__.py"))
        result = builtin.codebase_revision()
        self.assertEqual(result["path"], directory)
        self.assertEqual((result["revision"], result["revision_time"]), (None, None))


class SleepTests(unittest.TestCase):
    """
    sleep waits on the node's clock, and can be cancelled.
    """

    def test_sleeps(self) -> None:
        """It answers once the time has passed, not before."""
        clock = Clock()
        d = builtin.sleep.bind(make_node(clock=clock))(seconds=2.5)
        clock.advance(2)
        self.assertNoResult(d)
        clock.advance(0.5)
        self.assertEqual(self.successResultOf(d), {"slept": 2.5})

    def test_cancel(self) -> None:
        """Cancelling it leaves no delayed call behind."""
        clock = Clock()
        d = builtin.sleep.bind(make_node(clock=clock))(seconds=100)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_badSeconds(self) -> None:
        """Negative, boolean and non-numeric seconds are BadArguments."""
        sleep = builtin.sleep.bind(make_node())
        for seconds in (-1, True, "3", None):
            self.assertRaises(BadArguments, sleep, seconds=seconds)


class ShellTests(unittest.TestCase):
    """
    shell runs one command from the allow-list, without a shell.
    """

    def run_shell(self, command: Any, *results: ProcessResult,
                  allowed: tuple[str, ...] = ("echo ...", "uptime -p")) -> Any:
        self.processes = FakeProcesses(*results)
        return builtin.shell.bind(make_node(self.processes, allowed=allowed))(command=command)

    def test_string(self) -> None:
        """A string is split as a shell would, and the output comes back."""
        d = self.run_shell("echo 'a b' c", ProcessResult(0, b"a b c\n", b"warn\n"))
        self.assertEqual(self.successResultOf(d),
                         {"exit_code": 0, "stdout": "a b c\n", "stderr": "warn\n"})
        [call] = self.processes.calls
        self.assertEqual(call["argv"], ["echo", "a b", "c"])
        self.assertEqual(call["limit"], builtin.SHELL_OUTPUT_LIMIT)

    def test_list(self) -> None:
        """An argv list is run as it is."""
        self.successResultOf(self.run_shell(["uptime", "-p"]))
        self.assertEqual(self.processes.calls[0]["argv"], ["uptime", "-p"])

    def test_notAllowed(self) -> None:
        """A command not on the list is refused, naming it and the allowed ones."""
        e = self.assertRaises(NotPermitted, self.run_shell, ["rm", "-rf", "/"])
        self.assertEqual(
            str(e), "shell is refused: 'rm -rf /' is not an allowed command"
                    " (allowed: echo ...; uptime -p)"
        )
        self.assertEqual(self.processes.calls, [])

    def test_wholeCommandLine(self) -> None:
        """An entry allows its words exactly: no other arguments, unless it says so."""
        for entry, argv, allowed in [
            ("vcgencmd measure_temp", ["vcgencmd", "measure_temp"], True),
            ("vcgencmd measure_temp", ["vcgencmd", "measure_temp", "x"], False),
            ("vcgencmd measure_temp", ["vcgencmd"], False),
            ("vcgencmd measure_temp", ["vcgencmd", "get_config", "int"], False),
            ("uptime", ["uptime"], True),
            ("uptime", ["uptime", "-p"], False),
            ("find", ["find", ".", "-exec", "sh", ";"], False),
            ("tar", ["tar", "--checkpoint-action=exec=sh"], False),
            ("vcgencmd measure_clock *", ["vcgencmd", "measure_clock", "arm"], True),
            ("vcgencmd measure_clock *", ["vcgencmd", "measure_clock"], False),
            ("vcgencmd measure_clock *", ["vcgencmd", "measure_clock", "arm", "core"], False),
            ("journalctl -u picluster-slave ...", ["journalctl", "-u", "picluster-slave"], True),
            ("journalctl -u picluster-slave ...", ["journalctl", "-u", "picluster-slave", "-n", "5"], True),
            ("journalctl -u picluster-slave ...", ["journalctl", "-u", "sshd"], False),
            ("'a b' c", ["a b", "c"], True),
        ]:
            self.assertEqual(builtin.command_matches(entry, argv), allowed, (entry, argv))

    def test_badEntries(self) -> None:
        """An entry that names no command, or puts ... before its end, is refused."""
        for entry, problem in [("", "cannot be empty"), ("* x", "must be named"),
                               ("... ", "must be named"), ("ls ... -l", "may only end"),
                               ("ls 'x", "cannot split")]:
            error = self.assertRaises(ValueError, builtin.parse_allowed_command, entry)
            self.assertIn(problem, str(error))

    def test_exactWord(self) -> None:
        """The first word must match as written: allowing echo does not allow /bin/echo."""
        self.assertRaises(NotPermitted, self.run_shell, ["/bin/echo", "hi"])

    def test_emptyAllowList(self) -> None:
        """With no allowed commands at all, shell is refused, and says so up front."""
        self.assertRaises(NotPermitted, self.run_shell, "echo hi", allowed=())
        refusal = builtin.shell.refusal(make_node())
        self.assertEqual(refusal, "shell is refused: this slave allows no commands")
        self.assertIsNone(builtin.shell.refusal(make_node(allowed=("echo ...",))))

    def test_badCommands(self) -> None:
        """Empty, unsplittable and non-string commands are BadArguments."""
        for command in ("", [], "echo 'unclosed", [1, 2], {"argv": "echo"}, None):
            self.assertRaises(BadArguments, self.run_shell, command)

    def test_failure(self) -> None:
        """A non-zero exit fails, quoting the last line of stderr."""
        d = self.run_shell("echo", ProcessResult(3, b"", b"first\nno such thing\n"))
        failure = self.failureResultOf(d, CommandFailed)
        self.assertEqual(str(failure.value), "command exited with 3: no such thing")
        self.assertEqual(failure.value.details, "first\nno such thing\n")

    def test_truncated(self) -> None:
        """Output cut at the limit is marked as truncated."""
        d = self.run_shell("echo", ProcessResult(0, b"x" * 10, b"", stdout_truncated=True))
        stdout = self.successResultOf(d)["stdout"]
        self.assertTrue(stdout.startswith("x" * 10))
        self.assertIn("truncated", stdout)


class PowerTests(unittest.TestCase):
    """
    reboot and shutdown answer at once and act a few seconds later.
    """

    def test_reboot(self) -> None:
        """The command runs POWER_DELAY seconds after the answer."""
        clock, processes = Clock(), FakeProcesses()
        node = make_node(processes, allow_admin=True, clock=clock)
        self.assertEqual(builtin.reboot.bind(node)(), {"scheduled": "reboot", "in_seconds": 5})
        clock.advance(builtin.POWER_DELAY - 0.1)
        self.assertEqual(processes.calls, [])
        clock.advance(0.1)
        self.assertEqual([call["argv"] for call in processes.calls], [["reboot-now"]])

    def test_noRebootSoonAfterBoot(self) -> None:
        """A node that booted less than REBOOT_MIN_UPTIME ago refuses to reboot: no reboot loop."""
        clock, processes = Clock(), FakeProcesses()
        clock.advance(10_000)
        node = dataclasses.replace(make_node(processes, allow_admin=True, clock=clock),
                                   booted_at=clock.seconds() - builtin.REBOOT_MIN_UPTIME + 60)
        error = self.assertRaises(NotPermitted, builtin.reboot.bind(node))
        self.assertIn("booted 540 s ago", str(error))
        clock.advance(builtin.POWER_DELAY * 2)
        self.assertEqual(processes.calls, [])
        clock.advance(60)
        self.assertEqual(builtin.reboot.bind(node)()["scheduled"], "reboot")

    def test_shutdown(self) -> None:
        """shutdown runs its own command."""
        clock, processes = Clock(), FakeProcesses()
        node = make_node(processes, allow_admin=True, clock=clock)
        self.assertEqual(builtin.shutdown.bind(node)()["scheduled"], "shutdown")
        clock.advance(builtin.POWER_DELAY)
        self.assertEqual([call["argv"] for call in processes.calls], [["halt-now"]])

    def test_notAdmin(self) -> None:
        """Without --allow-admin, nothing is scheduled."""
        clock = Clock()
        e = self.assertRaises(NotPermitted, builtin.reboot.bind(make_node(clock=clock)))
        self.assertEqual(str(e), "reboot is refused: this slave was not started with --allow-admin")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_commands(self) -> None:
        """The real commands are systemctl's, through sudo -n unless run as root."""
        prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
        self.assertEqual(builtin.ADMIN_COMMANDS["reboot"], [prefix + ["systemctl", "reboot"]])
        self.assertEqual(builtin.ADMIN_COMMANDS["shutdown"], [prefix + ["systemctl", "poweroff"]])
        update, upgrade = builtin.ADMIN_COMMANDS["update"]
        self.assertEqual(update, prefix + ["apt-get", "update"])
        self.assertEqual(upgrade[: len(prefix)], prefix)
        self.assertEqual(upgrade[upgrade.index("apt-get") :][:2], ["apt-get", "-y"])
        self.assertEqual(upgrade[-1], "upgrade")


class UpdateTests(unittest.TestCase):
    """
    update runs its commands in turn, non-interactively, and stops at the first failure.
    """

    def test_success(self) -> None:
        """Both steps run, and their exit codes and output tails come back."""
        processes = FakeProcesses(ProcessResult(0, b"lists\n", b""),
                                  ProcessResult(0, b"y" * 10000, b""))
        d = builtin.update.bind(make_node(processes, allow_admin=True))()
        steps = self.successResultOf(d)["steps"]
        self.assertEqual([s["command"] for s in steps], [["fetch-lists"], ["upgrade-all"]])
        self.assertEqual([s["exit_code"] for s in steps], [0, 0])
        self.assertEqual(steps[0]["stdout_tail"], "lists\n")
        self.assertEqual(len(steps[1]["stdout_tail"]), builtin.UPDATE_TAIL)
        for call in processes.calls:
            self.assertEqual(call["env"]["DEBIAN_FRONTEND"], "noninteractive")

    def test_firstFails(self) -> None:
        """A failing first step fails the task and the second never runs."""
        processes = FakeProcesses(ProcessResult(100, b"", b"E: could not get lock\n"))
        d = builtin.update.bind(make_node(processes, allow_admin=True))()
        failure = self.failureResultOf(d, CommandFailed)
        self.assertEqual(str(failure.value), "fetch-lists exited with 100: E: could not get lock")
        self.assertEqual(len(processes.calls), 1)

    def test_cancel(self) -> None:
        """Cancelling it cancels the command it waits for."""
        killed: list[bool] = []
        waiting: defer.Deferred[ProcessResult] = defer.Deferred(lambda _: killed.append(True))
        node = make_node(allow_admin=True)
        node = Node(node.reactor, node.clock, True, node.allowed_commands, node.admin_commands,
                    lambda argv, **kwargs: waiting)
        d = builtin.update.bind(node)()
        d.cancel()
        self.assertEqual(killed, [True])
        self.failureResultOf(d, defer.CancelledError)


class BuiltinTableTests(unittest.TestCase):
    """
    The built-ins run where their work belongs.
    """

    def test_table(self) -> None:
        """Each built-in's run_in and admin flag."""
        table = {t.name: (t.run_in, t.admin) for t in builtin.BUILTIN_TASKS}
        self.assertEqual(table, {
            "echo": ("reactor", False), "node_time": ("reactor", False), "codebase_revision": ("thread", False),
            "sleep": ("reactor", False), "primes": ("process", False),
            "shell": ("reactor", False), "reboot": ("reactor", True),
            "shutdown": ("reactor", True), "update": ("reactor", True),
        })
        for each in builtin.BUILTIN_TASKS:
            self.assertTrue(re.match(r"[A-Z]", each.description), each.name)
