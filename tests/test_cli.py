"""
Tests for the C{picluster} command: L{picluster.cli.main} run in this
process against a L{FakeMaster} over real loopback TCP, its output caught
in strings; and once as a real process.
"""

from __future__ import annotations

import io
import json
import sys
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial import unittest

from picluster.cli import formatting
from picluster.cli import main as cli
from picluster.wire import BadMessage

from . import processes
from .fakemaster import FakeMaster, FakeMasterConnection


def run_task(name: str, args: dict[str, Any]) -> Any:
    """What the fake master's pretend slaves do with a task."""
    if name == "primes":
        return [n for n in range(2, args.get("stop", 10)) if all(n % d for d in range(2, n))]
    if name == "boom":
        raise ValueError(args.get("message", "boom"))
    return args


class TTY(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def wait_until(check: Any, what: str) -> defer.Deferred[Any]:
    return processes.wait_until(check, what, timeout=10.0, poll=0.01)


class CLITestCase(unittest.TestCase):
    """A fake master on a loopback port, and a way to run command lines at it."""

    runner: Any = staticmethod(run_task)

    def setUp(self) -> defer.Deferred[None]:
        self.patch(cli, "INITIAL_DELAY", 0.05)
        self.master = FakeMaster(runner=self.runner)
        self.listen()
        self.address = f"tcp:host=127.0.0.1:port={self.port.getHost().port}"
        self.addCleanup(self.stop_master)
        return defer.succeed(None)

    def listen(self, port_number: int = 0) -> None:
        self.port = reactor.listenTCP(port_number, self.master, interface="127.0.0.1")

    @defer.inlineCallbacks
    def stop_master(self) -> Any:
        yield self.port.stopListening()
        self.master.drop_connections()
        yield wait_until(lambda: not self.master.connections, "connections to close")

    @defer.inlineCallbacks
    def picluster(self, *argv: str, stdin: str = "", tty: bool = False,
                  environ: dict[str, str] | None = None) -> Any:
        """Run one command line; fire with (status, stdout, stderr)."""
        stdout, stderr = io.StringIO(), (TTY() if tty else io.StringIO())
        if environ is None and "--master" not in argv:
            argv = argv + ("--master", self.address)
        if argv and argv[0] not in ("demo", "token") and not {"--token", "--insecure"} & set(argv):
            # The masters here are plain, in-process ones.
            argv = argv + ("--insecure",)
        status = yield cli.main(list(argv), reactor=reactor, stdout=stdout, stderr=stderr,
                                stdin=io.StringIO(stdin), environ=environ or {})
        return status, stdout.getvalue(), stderr.getvalue()

    def args_file(self, *lines: str) -> str:
        path = processes.temp_path(self)
        with open(path, "w", encoding="utf-8") as file:
            file.write("".join(line + "\n" for line in lines))
        return path

    def assertOneLine(self, stderr: str, text: str) -> None:
        """stderr is exactly one line, holding C{text}."""
        self.assertEqual(stderr.count("\n"), 1, stderr)
        self.assertIn(text, stderr)
        self.assertNotIn("Traceback", stderr)


class SubmitTests(CLITestCase):
    """
    picluster submit.
    """

    @defer.inlineCallbacks
    def test_printsId(self) -> Any:
        """submit prints the new task's id."""
        status, out, err = yield self.picluster("submit", "primes")
        self.assertEqual((status, out, err), (0, "1\n", ""))

    @defer.inlineCallbacks
    def test_spec(self) -> Any:
        """Arguments, requirements, timeout, retries and key reach the master as a spec."""
        status, out, err = yield self.picluster(
            "submit", "primes", "--args", '{"stop": 20}', "--requires", "min_ram=512M",
            "--requires", "tags=gpu,camera", "--requires", "min_cores=2",
            "--requires", "hostname=pi-3", "--timeout", "2.5", "--retries", "0", "--key", "k1",
        )
        self.assertEqual(status, 0, err)
        self.assertEqual(self.master.submits, [[{
            "name": "primes", "args": {"stop": 20}, "timeout": 2.5, "retries": 0, "key": "k1",
            "requirements": {"min_ram": 536870912, "tags": ["gpu", "camera"],
                             "min_cores": 2, "hostname": "pi-3"},
        }]])

    @defer.inlineCallbacks
    def test_wait(self) -> Any:
        """submit --wait prints how the task ended, its result included."""
        status, out, err = yield self.picluster("submit", "primes", "--wait", "--args", '{"stop": 12}')
        self.assertEqual((status, err), (0, ""))
        self.assertIn("state:    done\n", out)
        self.assertIn("slave:    pi-2\n", out)
        self.assertIn("attempts: 1\n", out)
        self.assertIn("result:   [2, 3, 5, 7, 11]\n", out)

    @defer.inlineCallbacks
    def test_waitFailed(self) -> Any:
        """submit --wait of a task that fails prints its error and exits 1."""
        status, out, err = yield self.picluster(
            "submit", "boom", "--wait", "--json", "--args", '{"message": "no luck"}')
        self.assertEqual(status, 1)
        record = json.loads(out)
        self.assertEqual((record["state"], record["error"]["message"]), ("failed", "no luck"))

    @defer.inlineCallbacks
    def test_json(self) -> Any:
        """submit --json prints the submitted entry."""
        status, out, err = yield self.picluster("submit", "primes", "--json", "--key", "same")
        self.assertEqual(json.loads(out), {"id": 1, "key": "same", "state": "queued",
                                           "duplicate": False})

    @defer.inlineCallbacks
    def test_warnings(self) -> Any:
        """The master's warnings go to stderr."""
        self.master.warn_about.add("primes")
        status, out, err = yield self.picluster("submit", "primes")
        self.assertEqual((status, out), (0, "1\n"))
        self.assertEqual(err, "warning: no slave offers 'primes' right now\n")

    @defer.inlineCallbacks
    def test_refused(self) -> Any:
        """A refused submission is one line on stderr and exit 1."""
        self.master.known_names = {"primes"}
        status, out, err = yield self.picluster("submit", "nope")
        self.assertEqual(status, 1)
        self.assertOneLine(err, "picluster submit: error: the master refused it: unknown task 'nope'")

    @defer.inlineCallbacks
    def test_masterFromEnvironment(self) -> Any:
        """PICLUSTER_MASTER says where the master is when --master does not."""
        status, out, err = yield self.picluster(
            "submit", "primes", environ={"PICLUSTER_MASTER": self.address})
        self.assertEqual((status, out), (0, "1\n"))


class UsageTests(CLITestCase):
    """
    Bad command lines: exit 2, one error line and a hint, never a traceback.
    """

    @defer.inlineCallbacks
    def assertUsageError(self, argv: list[str], command: str, text: str) -> Any:
        status, out, err = yield self.picluster(*argv)
        self.assertEqual(status, 2)
        first, hint = err.splitlines()
        command = f"picluster {command}".rstrip()
        self.assertEqual(first, f"{command}: error: {text}")
        self.assertEqual(hint, f"Try '{command} --help' for more information.")
        self.assertEqual(self.master.submits, [])

    def test_argsNotObject(self) -> Any:
        """--args must be a JSON object."""
        return self.assertUsageError(["submit", "x", "--args", "[1]"], "submit",
                                     "--args must be a JSON object, such as '{\"stop\": 100}'")

    def test_argsNotJson(self) -> Any:
        """--args must be JSON."""
        return self.assertUsageError(["submit", "x", "--args", "{nope"], "submit",
                                     "--args is not valid JSON: Expecting property name enclosed"
                                     " in double quotes: line 1 column 2 (char 1)")

    def test_unknownRequirement(self) -> Any:
        """An unknown requirement is named with the known ones."""
        return self.assertUsageError(
            ["map", "x", "--args-file", "-", "--requires", "gpu=1"], "map",
            "unknown requirement 'gpu' (known: min_ram, min_cores, tags, hostname)")

    def test_badSize(self) -> Any:
        """min_ram must be a size."""
        return self.assertUsageError(
            ["submit", "x", "--requires", "min_ram=lots"], "submit",
            "min_ram must be bytes such as 536870912, 512M or 1G, not 'lots'")

    def test_badTaskId(self) -> Any:
        """A task ID is a number."""
        return self.assertUsageError(["task", "seven"], "task",
                                     "the task ID must be a whole number, not 'seven'")

    def test_badState(self) -> Any:
        """--state is one of the five states."""
        return self.assertUsageError(["tasks", "--state", "lost"], "tasks",
                                     "--state must be one of queued, running, done, failed, cancelled")

    def test_badMaster(self) -> Any:
        """A bad --master says what is wrong with it."""
        return self.assertUsageError(["tasks", "--master", "tcp:host=x"], "tasks",
                                     "--master: tcp: needs a port")

    @defer.inlineCallbacks
    def test_noCommand(self) -> Any:
        """No command at all is a usage error."""
        status, out, err = yield self.picluster(environ={})
        self.assertEqual((status, err), (2, "picluster: error: no command given\n"
                                            "Try 'picluster --help' for more information.\n"))

    @defer.inlineCallbacks
    def test_help(self) -> Any:
        """--help prints the options on stdout and exits 0."""
        status, out, err = yield self.picluster("submit", "--help")
        self.assertEqual((status, err), (0, ""))
        self.assertTrue(out.startswith("Usage: picluster submit NAME [options]\n"), out)
        self.assertIn("--requires=", out)


class ConnectionTests(CLITestCase):
    """
    Losing or missing the master.
    """

    @defer.inlineCallbacks
    def test_unreachable(self) -> Any:
        """A master nobody listens for is one line on stderr and exit 1."""
        port = processes.free_port()
        status, out, err = yield self.picluster("tasks", "--master", f"127.0.0.1:{port}")
        self.assertEqual((status, out), (1, ""))
        self.assertOneLine(
            err, f"picluster tasks: error: cannot reach master 127.0.0.1:{port}: connection refused")

    @defer.inlineCallbacks
    def test_masterFails(self) -> Any:
        """The master's own failure is one line, told apart from a refusal."""

        def broken(handler: Any, payload: Any) -> None:
            raise RuntimeError("disk on fire")

        self.patch(FakeMasterConnection, "msg_tasks", broken)
        status, out, err = yield self.picluster("tasks")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(status, 1)
        self.assertOneLine(err, "picluster tasks: error: the master failed:"
                                " internal error handling tasks")

    @defer.inlineCallbacks
    def test_mapRidesOutRestart(self) -> Any:
        """map keeps waiting through a master restart, saying so once on stderr."""
        self.master.runner = None
        path = self.args_file('{"n": 1}', '{"n": 2}')
        mapped = self.picluster("map", "echo", "--args-file", path)
        yield wait_until(lambda: self.master.watches, "the map to watch its tasks")
        port_number = self.port.getHost().port
        yield self.port.stopListening()
        self.master.drop_connections()
        yield wait_until(lambda: not self.master.connections, "the master to drop the client")
        self.listen(port_number)
        yield wait_until(lambda: len(self.master.watches) == 2, "the map to watch again")
        self.master.finish(1, "one")
        self.master.finish(2, "two")
        status, out, err = yield mapped
        self.assertEqual((status, out), (0, '"one"\n"two"\n'))
        lost = f"lost master 127.0.0.1:{port_number} (connection closed by peer); reconnecting\n"
        self.assertEqual(err.count(lost), 1, err)
        self.assertEqual(self.master.watches, [[1, 2], [1, 2]])


class MapTests(CLITestCase):
    """
    picluster map.
    """

    @defer.inlineCallbacks
    def test_resultsInOrder(self) -> Any:
        """One result a line in input order; a failed task as its error; exit 1 if any failed."""
        path = self.args_file('{"stop": 5}', '{"stop": 3}')
        status, out, err = yield self.picluster("map", "primes", "--args-file", path)
        self.assertEqual((status, out), (0, "[2, 3]\n[2]\n"))
        path = self.args_file('{"message": "first"}', '{"message": "second"}')
        status, out, err = yield self.picluster("map", "boom", "--args-file", path)
        self.assertEqual((status, out),
                         (1, "error: ValueError: first\nerror: ValueError: second\n"))

    @defer.inlineCallbacks
    def test_json(self) -> Any:
        """map --json prints one object a line with line, id, state, result, error, slave."""
        path = self.args_file('{"stop": 4}', '{"message": "no"}')
        self.master.runner = lambda name, args: run_task("boom" if "message" in args else name, args)
        status, out, err = yield self.picluster("map", "primes", "--args-file", path, "--json")
        first, second = map(json.loads, out.splitlines())
        self.assertEqual(status, 1)
        self.assertEqual({k: first[k] for k in ("line", "id", "state", "result", "error")},
                         {"line": 1, "id": 1, "state": "done", "result": [2, 3], "error": None})
        self.assertEqual((second["line"], second["state"], second["error"]["message"]),
                         (2, "failed", "no"))
        self.assertEqual((second["slave_hostname"], second["attempts"]), ("pi-2", 1))

    @defer.inlineCallbacks
    def test_stdin(self) -> Any:
        """'-' reads the arguments from stdin."""
        status, out, err = yield self.picluster(
            "map", "echo", "--args-file", "-", stdin='{"a": 1}\n{"a": 2}\n')
        self.assertEqual((status, out), (0, '{"a": 1}\n{"a": 2}\n'))

    @defer.inlineCallbacks
    def test_badLine(self) -> Any:
        """A line that is not a JSON object is named, and nothing is submitted."""
        for lines, problem in [
            (['{"a": 1}', "[1]"], "line 2: expected a JSON object, not list"),
            (['{"a": 1}', "", '{"a": 2}'], "line 2: blank; each line must hold a JSON object"),
            (['{"a": NaN}'], "line 1: not valid JSON: NaN is not valid JSON"),
            (['{"a": 1e400}'], "line 1: not valid JSON: number 1e400 is out of range"),
        ]:
            path = self.args_file(*lines)
            status, out, err = yield self.picluster("map", "echo", "--args-file", path)
            self.assertEqual(status, 1)
            self.assertOneLine(err, f"picluster map: error: {path} {problem}")
        self.assertEqual(self.master.submits, [])

    @defer.inlineCallbacks
    def test_missingFile(self) -> Any:
        """A file that cannot be read is one line and exit 1."""
        status, out, err = yield self.picluster("map", "echo", "--args-file", "/no/such/file")
        self.assertEqual(status, 1)
        self.assertOneLine(err, "picluster map: error: cannot read /no/such/file:"
                                " No such file or directory")

    @defer.inlineCallbacks
    def test_refusedLine(self) -> Any:
        """A spec the master refuses is named by its line."""
        self.master.runner = None
        self.patch(type(self.master), "after_submit", lambda self, entries: None)
        path = self.args_file('{"a": 1}', '{"a": 2}')
        self.master.known_names = set()
        status, out, err = yield self.picluster("map", "echo", "--args-file", path)
        self.assertOneLine(err, "picluster map: error: line 1: the master refused it:"
                                " unknown task 'echo'")

    @defer.inlineCallbacks
    def test_progressInLog(self) -> Any:
        """Off a terminal, progress is a line at every tenth."""
        path = self.args_file(*[f'{{"i": {i}}}' for i in range(20)])
        status, out, err = yield self.picluster("map", "echo", "--args-file", path)
        lines = err.splitlines()
        self.assertEqual(lines[0], "submitted 20 tasks; waiting for them")
        self.assertEqual(lines[1:3], ["2/20 finished, 0 failed (10%)",
                                      "4/20 finished, 0 failed (20%)"])
        self.assertEqual(len(lines), 11)

    @defer.inlineCallbacks
    def test_progressOnTerminal(self) -> Any:
        """On a terminal, progress is one line redrawn with a carriage return."""
        path = self.args_file('{"i": 1}', '{"i": 2}')
        status, out, err = yield self.picluster("map", "echo", "--args-file", path, tty=True)
        self.assertTrue(err.startswith("\r[------------------------------] 0/2 finished"), err)
        self.assertTrue(err.endswith("\r[##############################] 2/2 finished, 0 failed\n"))
        self.assertEqual(err.count("\n"), 1)


class QueryTests(CLITestCase):
    """
    picluster tasks, task and cancel.
    """

    runner = None

    def setUp(self) -> defer.Deferred[None]:
        result = super().setUp()
        for name in ("primes", "boom", "sleep"):
            self.master.store({"name": name, "args": {"n": 1}})
        self.master.finish(1, [2, 3])
        self.master.fail(2, "ValueError", "bad", traceback="Traceback (most recent call last):\n"
                                                            "ValueError: bad\n")
        return result

    @defer.inlineCallbacks
    def test_table(self) -> Any:
        """tasks prints a table with slave, attempts, time and waiting reason."""
        status, out, err = yield self.picluster("tasks")
        header, done, failed, queued = out.splitlines()
        self.assertEqual(header.split(), ["ID", "NAME", "STATE", "SLAVE", "TRIES", "TIME", "WAITING"])
        self.assertEqual(done.split()[:5], ["1", "primes", "done", "pi-2", "1"])
        self.assertTrue(queued.endswith("no slave is connected"), queued)

    @defer.inlineCallbacks
    def test_filtersAndJson(self) -> Any:
        """tasks --state --limit --json sends the filters and prints a JSON array."""
        status, out, err = yield self.picluster("tasks", "--state", "failed", "--limit", "5", "--json")
        self.assertEqual([record["id"] for record in json.loads(out)], [2])
        self.assertEqual(self.master.queries, [{"state": "failed", "limit": 5, "order": "newest"}])

    @defer.inlineCallbacks
    def test_oldestFirst(self) -> Any:
        """tasks lists the newest first unless told --oldest."""
        yield self.picluster("tasks", "--oldest", "--after", "1")
        self.assertEqual(self.master.queries, [{"after": 1}])  # order: its default, oldest

    @defer.inlineCallbacks
    def test_task(self) -> Any:
        """task shows every field, a failed task's traceback included."""
        status, out, err = yield self.picluster("task", "2")
        self.assertEqual(status, 0)
        for line in ["id:           2", "state:        failed", "slave:        pi-2 (" + "ab" * 16 + ")",
                     "error:        ValueError: bad (error)", "traceback:",
                     "    ValueError: bad", 'args:         {"n": 1}', "timeout:      none"]:
            self.assertIn(line + "\n", out)

    @defer.inlineCallbacks
    def test_taskWaiting(self) -> Any:
        """task shows why a queued task waits."""
        status, out, err = yield self.picluster("task", "3")
        self.assertIn("waiting:      no slave is connected\n", out)

    @defer.inlineCallbacks
    def test_taskAbsent(self) -> Any:
        """task of an unknown id says so and exits 1."""
        status, out, err = yield self.picluster("task", "42")
        self.assertEqual((status, out), (1, ""))
        self.assertOneLine(err, "picluster task: error: no task 42")

    @defer.inlineCallbacks
    def test_cancel(self) -> Any:
        """cancel prints the cancelled record."""
        status, out, err = yield self.picluster("cancel", "3", "--json")
        self.assertEqual((status, json.loads(out)["state"]), (0, "cancelled"))

    @defer.inlineCallbacks
    def test_cancelFinished(self) -> Any:
        """Cancelling a finished task is the master's refusal, in one line."""
        status, out, err = yield self.picluster("cancel", "1")
        self.assertEqual(status, 1)
        self.assertOneLine(err, "picluster cancel: error: the master refused it:"
                                " task 1 already finished (id: 1)")


class ProcessTests(CLITestCase):
    """
    The command as a real process.
    """

    @defer.inlineCallbacks
    def test_exitStatus(self) -> Any:
        """python -m picluster.cli runs a command and exits with its status."""
        child = processes.Child(
            self, "picluster",
            [sys.executable, "-m", "picluster.cli", "submit", "boom", "--wait", "--json",
             "--master", self.address, "--insecure"],
            cwd=processes.temp_dir(self), env=processes.child_env(),
        )
        status = yield child.wait_for_exit()
        self.assertEqual(status, 1, child.report())
        self.assertEqual(json.loads(child.stdout())["state"], "failed")
        self.assertEqual(child.stderr(), "")

    @defer.inlineCallbacks
    def test_installedScript(self) -> Any:
        """pip install puts a picluster command beside this Python, outside the checkout."""
        import os

        script = os.path.join(os.path.dirname(sys.executable), "picluster")
        if not os.path.exists(script):
            raise unittest.SkipTest(f"picluster is not installed beside {sys.executable}")
        child = processes.Child(
            self, "installed", [script, "tasks", "--json", "--master", self.address, "--insecure"],
            cwd=processes.temp_dir(self), env=processes.child_env(checkout=False),
        )
        status = yield child.wait_for_exit()
        self.assertEqual(status, 0, child.report())
        self.assertIsInstance(json.loads(child.stdout()), list, child.report())


class FormatTests(unittest.TestCase):
    """
    Durations in the table and details.
    """

    def test_durations(self) -> None:
        """Durations read short at every scale."""
        self.assertEqual([formatting.duration(s) for s in (4.25, 42, 185, 7380, 93600)],
                         ["4.2s", "42s", "3m05s", "2h03m", "1d02h"])

    def test_attemptsNeverStarted(self) -> None:
        """A task's details say how many of its attempts never started, only when some did not."""
        record = {"id": 7, "name": "primes", "state": "queued", "retries": 3, "attempts": 3}
        lines = formatting.details(dict(record, unstarted=1), 0.0).splitlines()
        self.assertIn("attempts:     3 (1 never started)", lines)
        for plain in (record, dict(record, unstarted=0)):
            self.assertIn("attempts:     3", formatting.details(plain, 0.0).splitlines())



ESC = "\x1b"

#: Texts a hostile master (or slave, or user) could put in a task record.
HOSTILE_NAME = f"evil{ESC}[31m\u202e"
HOSTILE_MESSAGE = f"bad {ESC}]0;pwned\x07\nstate:        done\r\x9b2J"
HOSTILE_RESULT = {"out": f"{ESC}[2J\x9b31m\U000e0001"}


class EscapeTests(CLITestCase):
    """
    No command prints the master's control characters raw: names, errors,
    results, reasons and refusals reach the terminal cleaned.
    """

    runner = None

    def setUp(self) -> defer.Deferred[None]:
        result = super().setUp()
        self.master.store({"name": HOSTILE_NAME, "args": {"x": ESC}})
        self.master.store({"name": "boom", "args": {}})
        self.master.store({"name": "primes", "args": {}, "key": f"k{ESC}[1m"})
        self.master.tasks[1].update(waiting=f"waiting {ESC}[5m\nforever")
        self.master.finish(3, HOSTILE_RESULT)
        self.master.tasks[3]["slave_hostname"] = f"pi{ESC}[8m"
        self.master.tasks[3]["submitted_by"] = f"client{ESC}[0m at 10.0.0.1:4"
        self.master.fail(2, f"Bad{ESC}[1m", HOSTILE_MESSAGE,
                         traceback=f"Traceback:\n  {ESC}[31mValueError\x08\x08: bad\n")
        return result

    def assertHarmless(self, *outputs: str) -> None:
        for text in outputs:
            self.assertEqual([char for char in text if not char.isprintable() and char != "\n"], [],
                             text)

    @defer.inlineCallbacks
    def test_tasks(self) -> Any:
        """The table shows names and waiting reasons with their control characters as ?."""
        status, out, err = yield self.picluster("tasks")
        self.assertEqual(status, 0, err)
        self.assertHarmless(out, err)
        self.assertIn("evil?[31m?", out)
        self.assertIn("waiting ?[5m?forever", out)
        self.assertEqual(len(out.splitlines()), 4)

    @defer.inlineCallbacks
    def test_task(self) -> Any:
        """One task's fields, its error and traceback, cannot write escapes or forge lines."""
        for task_id in ("1", "2", "3"):
            status, out, err = yield self.picluster("task", task_id)
            self.assertEqual(status, 0, err)
            self.assertHarmless(out, err)
            self.assertEqual([line for line in out.splitlines() if line.startswith("state:")],
                             [f"state:        {self.master.tasks[int(task_id)]['state']}"])
        status, out, err = yield self.picluster("task", "2")
        self.assertIn("error:        Bad?[1m: bad ?]0;pwned??state:        done??2J (error)\n", out)
        self.assertIn("\n      ?[31mValueError??: bad\n", out)
        status, out, err = yield self.picluster("task", "3")
        self.assertIn('result:       {"out": "\\u001b[2J\\u009b31m\\udb40\\udc01"}\n', out)
        self.assertIn("slave:        pi?[8m (", out)
        self.assertIn(" by client?[0m at 10.0.0.1:4\n", out)
        self.assertIn("key:          k?[1m\n", out)

    @defer.inlineCallbacks
    def test_json(self) -> Any:
        """--json escapes what a terminal would act on, and parses back to the very same values."""
        status, out, err = yield self.picluster("tasks", "--json")
        self.assertHarmless(out, err)
        records = json.loads(out)
        self.assertEqual(records, [dict(record) for record in self.master.tasks.values()])
        self.assertEqual(records[0]["name"], HOSTILE_NAME)
        self.assertEqual(records[2]["result"], HOSTILE_RESULT)

    @defer.inlineCallbacks
    def test_waitAndMap(self) -> Any:
        """How a task ended, for submit --wait and map, comes out cleaned."""

        def hostile(name: str, args: dict[str, Any]) -> Any:
            if name == "boom":
                raise ValueError(HOSTILE_MESSAGE)
            return HOSTILE_RESULT

        self.master.runner = hostile
        status, out, err = yield self.picluster("submit", "boom", "--wait")
        self.assertEqual(status, 1)
        self.assertHarmless(out, err)
        self.assertIn("error:    ValueError: bad ?]0;pwned??state:        done??2J (error)\n", out)
        path = self.args_file("{}")
        for name in ("boom", "primes"):
            status, out, err = yield self.picluster("map", name, "--args-file", path)
            self.assertHarmless(out, err)
            self.assertEqual(len(out.splitlines()), 1)

    @defer.inlineCallbacks
    def test_refusalsAndWarnings(self) -> Any:
        """A refusal or a warning from the master is one harmless line on stderr."""

        def refuse(handler: Any, payload: Any) -> None:
            raise BadMessage(f"no {ESC}[31mway\nreally")

        self.patch(FakeMasterConnection, "msg_tasks", refuse)
        status, out, err = yield self.picluster("tasks")
        self.assertHarmless(out, err)
        self.assertOneLine(err, "picluster tasks: error: the master refused it: no ?[31mway?really")
        self.master.runner = run_task
        self.patch(FakeMasterConnection, "_answer", lambda self, kind, reply: (
            reply[0], dict(reply[1], warnings=[f"look {ESC}[2J\nhere"])))
        status, out, err = yield self.picluster("submit", "primes")
        self.assertHarmless(out, err)
        self.assertEqual(err, "warning: look ?[2J?here\n")


class PrintableTests(unittest.TestCase):
    """The one function that makes a peer's text fit for a terminal."""

    def test_controlsReplaced(self) -> None:
        """C0 and C1 controls, format characters and separators become ?; the rest stays."""
        from picluster.text import printable

        self.assertEqual(printable(f"a{ESC}[1m\r\x08\x9b\u202e\u2028é 漢"), "a?[1m?????é 漢")
        self.assertEqual(printable("one\ntwo\t", keep="\n"), "one\ntwo?")

    def test_jsonKeepsTheValue(self) -> None:
        """to_json writes every non-printable character as an escape that decodes to it."""
        value = {"k\x1b": ["\x7f\x9b\u202e\U000e0001é", 1.5, None]}
        text = formatting.to_json(value)
        self.assertTrue(text.isprintable(), text)
        self.assertEqual(json.loads(text), value)
        self.assertIn("é", text)
