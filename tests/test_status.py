"""
Tests for C{picluster status}: the table of L{picluster.cli.status} drawn
from crafted payloads, and the command run in this process against a real
master with a real slave over loopback TCP.
"""

from __future__ import annotations

import io
import json
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial import unittest

from picluster.address import MasterAddress
from picluster.cli import main as cli
from picluster.cli import options
from picluster.cli import status as statustable
from picluster.master.service import MasterService
from picluster.slave.runner import TaskRunner
from picluster.slave.session import SlaveFactory, SlaveService
from picluster.tasks.installed import installed_tasks
from picluster.wire import BadMessage

from . import processes
from .fakemaster import FakeMaster, FakeMasterConnection
from .webhelpers import WebMaster, hold_ready

NOW = 1_700_000_000.0
GIB = 2**30


def summary(**changes: Any) -> dict[str, Any]:
    """A connected slave's summary, as the contract shapes it."""
    shown = {
        "uuid": "ab" * 16, "state": "connected", "hostname": "pi-1",
        "model": "Raspberry Pi 4 Model B Rev 1.4", "address": "192.168.1.21:50412",
        "os": "Debian GNU/Linux 12 (bookworm)", "cpu_cores": 4, "ram_total": 4 * GIB,
        "connected_at": NOW - 3600, "last_seen": NOW - 1.25, "left_at": None, "left_reason": None,
        "uptime": 3 * 86400 + 7200, "rtt_ms": 1.3, "cpu_percent": 37.5, "temperature": 52.1,
        "ram_free": int(3.2 * GIB), "disk_free": 21 * GIB, "disk_total": 29 * GIB,
        "load_average": [1.0, 0.5, 0.25], "under_voltage": False, "throttled": False,
        "vitals_at": NOW - 1.5, "slots": 4, "running_tasks": 3,
    }
    shown.update(changes)
    return shown


def status(*slaves: dict[str, Any], connected: int | None = None, left: int | None = None,
           tasks: dict[str, int] | None = None) -> dict[str, Any]:
    """An C{info status} payload holding C{slaves}."""
    if connected is None:
        connected = sum(1 for slave in slaves if slave["state"] == "connected")
    if left is None:
        left = sum(1 for slave in slaves if slave["state"] == "left")
    return {
        "master": {
            "now": NOW, "version": "0.4.0", "hostname": "pi-master", "started_at": NOW - 7380,
            "uptime": 7380.0, "port": "tcp:12345", "keepalive": 5.0, "dead_after": 15.0,
            "slaves": {"connected": connected, "left": left}, "clients": 1,
            "tasks": tasks or {}, "wire": {},
        },
        "slaves": list(slaves),
        "tasks": tasks or {"queued": 2, "running": 3, "done": 40, "failed": 1, "cancelled": 0},
    }


def rows(text: str) -> dict[str, str]:
    """The table's lines by their first word (a host), header included."""
    return {line.split()[0]: line for line in text.splitlines()[2:] if line.strip()}


class ViewTests(unittest.TestCase):
    """
    statustable.render: what the table shows, on crafted payloads.
    """

    def test_header(self) -> None:
        """The master's name, version, uptime, slave counts and task counts lead."""
        text = statustable.render(status(summary(), summary(state="left", left_at=NOW - 60)), NOW)
        first, second = text.splitlines()[:2]
        self.assertEqual(first, "pi-master (picluster 0.4.0), up 2h03m: 1 slave connected, 1 left")
        self.assertEqual(second, "tasks: 2 queued, 3 running, 40 done, 1 failed, 0 cancelled")

    def test_row(self) -> None:
        """A slave's row: address, model, uptime, CPU, temperature, sizes, tasks, last seen."""
        text = statustable.render(status(summary()), NOW)
        self.assertEqual(rows(text)["HOST"].split(), [
            "HOST", "ADDRESS", "MODEL", "UP", "CPU", "TEMP", "RAM", "FREE", "DISK", "FREE",
            "TASKS", "SEEN", "STATE"])
        self.assertEqual(rows(text)["pi-1"].split(), [
            "pi-1", "192.168.1.21:50412", "Raspberry", "Pi", "4", "Model", "B", "Rev", "1.4",
            "3d02h", "38%", "52.1°C", "3.2G", "21G", "3/4", "1.2s", "ago", "connected"])

    def test_readyTasks(self) -> None:
        """Runs a slave holds ready follow its running/slots; none held ready, nothing is added."""
        text = statustable.render(status(summary(ready_tasks=4), summary(hostname="pi-2", uuid="02" * 16,
                                                                        ready_tasks=0)), NOW)
        self.assertIn("  3/4 +4 ready  1.2s ago", rows(text)["pi-1"])
        self.assertIn("  3/4  1.2s ago", rows(text)["pi-2"])
        self.assertNotIn("ready", rows(text)["pi-2"])

    def test_nullReadings(self) -> None:
        """Readings a slave has not sent (or cannot take) show as '-'."""
        blank = summary(model=None, uptime=None, cpu_percent=None, temperature=None,
                        ram_free=None, disk_free=None, slots=None, running_tasks=0)
        fields = rows(statustable.render(status(blank), NOW))["pi-1"].split()
        self.assertEqual(fields, ["pi-1", "192.168.1.21:50412", "-", "-", "-", "-", "-", "-",
                                  "0/-", "1.2s", "ago", "connected"])

    def test_noHostnameYet(self) -> None:
        """A slave whose facts have not come is named by the start of its uuid."""
        text = statustable.render(status(summary(hostname=None, uuid="0123456789abcdef" * 2)), NOW)
        self.assertIn("01234567", rows(text))

    def test_leftRows(self) -> None:
        """Slaves that left come after the connected ones, latest first, saying when."""
        payload = status(
            summary(hostname="pi-old", uuid="01" * 16, state="left", left_at=NOW - 7200),
            summary(hostname="pi-gone", uuid="02" * 16, state="left", left_at=NOW - 185),
            summary(hostname="pi-b", uuid="03" * 16),
            summary(hostname="pi-a", uuid="04" * 16),
        )
        lines = statustable.render(payload, NOW).splitlines()[3:]
        self.assertEqual([line.split()[0] for line in lines], ["pi-a", "pi-b", "pi-gone", "pi-old"])
        self.assertTrue(lines[2].endswith("left 3m05s ago"), lines[2])
        self.assertTrue(lines[3].endswith("left 2h00m ago"), lines[3])

    def test_leftRowsDimmed(self) -> None:
        """On a terminal a departed slave's row is dimmed, a connected one's is not."""
        payload = status(summary(hostname="pi-here"),
                         summary(hostname="pi-gone", uuid="02" * 16, state="left", left_at=NOW - 9))
        lines = statustable.render(payload, NOW, width=200, terminal=True).splitlines()
        here = next(line for line in lines if "pi-here" in line)
        gone = next(line for line in lines if "pi-gone" in line)
        self.assertIn("\x1b[2m", gone)
        self.assertNotIn("\x1b[2m", here)

    def test_plainOffTerminal(self) -> None:
        """Off a terminal the text holds no escapes and no trailing spaces."""
        payload = status(summary(under_voltage=True),
                         summary(hostname="pi-gone", uuid="02" * 16, state="left", left_at=NOW - 9))
        text = statustable.render(payload, NOW)
        self.assertNotIn("\x1b", text)
        self.assertEqual([line for line in text.splitlines() if line != line.rstrip()], [])

    def test_powerProblems(self) -> None:
        """Under-voltage and throttling are named in the state column."""
        text = statustable.render(status(summary(under_voltage=True, throttled=True)), NOW)
        self.assertTrue(rows(text)["pi-1"].endswith("connected, under-voltage, throttled"))

    def test_sizes(self) -> None:
        """Byte counts read short, in binary units; nonsense reads '-'."""
        self.assertEqual(
            [statustable.size(n) for n in (0, 512, 1536, 812 * 2**20, int(3.4 * GIB), 21 * GIB,
                                          2**50 * 3000, None, -1, "12", True)],
            ["0B", "512B", "1.5K", "812M", "3.4G", "21G", "3000P",
             "-", "-", "-", "-"])

    def test_longHostname(self) -> None:
        """A long hostname stays whole: on one line in a pipe, folded to fit a terminal."""
        name = "a-very-long-hostname-for-the-raspberry-pi-in-the-garden-shed"
        payload = status(summary(hostname=name), summary(hostname="pi-2", uuid="02" * 16))
        piped = statustable.render(payload, NOW)
        self.assertIn(name + "  192.168.1.21:50412", piped)
        narrow = statustable.render(payload, NOW, width=80)
        lines = narrow.splitlines()
        self.assertLessEqual(max(len(line) for line in lines), 80, narrow)
        folded = "".join(line.split()[0] for line in lines[3:] if not line.startswith("pi-2"))
        self.assertTrue(folded.startswith(name), narrow)
        self.assertIn("pi-2", rows(narrow))

    def test_narrowTerminal(self) -> None:
        """In a narrow terminal the least needed columns go, never the host or state."""
        text = statustable.render(status(summary()), NOW, width=60)
        header = rows(text)["HOST"].split()
        self.assertEqual(header, ["HOST", "CPU", "TEMP", "RAM", "FREE", "TASKS", "SEEN", "STATE"])
        self.assertLessEqual(max(len(line) for line in text.splitlines()), 60)
        self.assertEqual(rows(text)["pi-1"].split()[-1], "connected")

    def test_noSlaves(self) -> None:
        """Without slaves the table is a sentence."""
        text = statustable.render(status(tasks={"queued": 0, "running": 0, "done": 0,
                                               "failed": 0, "cancelled": 0}), NOW)
        self.assertEqual(text.splitlines()[2:], ["no slaves connected"])
        self.assertIn(": 0 slaves connected, 0 left", text)

    def test_controlCharacters(self) -> None:
        """What a slave says of itself cannot drive the terminal: control characters show as '?'."""
        payload = status(summary(hostname="evil\x1b[2J\x07", model="Pi\r\nfake row"))
        for terminal in (False, True):
            text = statustable.render(payload, NOW, width=200, terminal=terminal)
            self.assertNotIn("\x1b[2J", text)
            self.assertNotIn("\x07", text)
            self.assertIn("evil?[2J?", text)
            self.assertIn("Pi??fake row", text)

    def test_summaryAndTrouble(self) -> None:
        """With a summary, the healthy slaves are counted and only those in trouble listed."""
        hot = summary(hostname="pi-hot", uuid="05" * 16, temperature=83.0, troubles=["hot"])
        payload = dict(status(summary(troubles=[])), summary={
            "slaves": {"connected": 12, "left": 0, "in_trouble": 3}, "slots": 48, "running_tasks": 7,
            "troubles": {"left": 0, "silent": 1, "under-voltage": 0, "throttled": 1, "hot": 1,
                         "cloned": 0},
            "hottest": [{"uuid": "05" * 16, "hostname": "pi-hot", "temperature": 83.0},
                        {"uuid": "ab" * 16, "hostname": "pi-1", "temperature": 52.1}],
            "in_trouble": [hot],
        })
        lines = statustable.render(payload, NOW).splitlines()
        self.assertEqual(lines[2], "slots: 48, 7 running; hottest: pi-hot 83.0°C, pi-1 52.1°C")
        self.assertEqual(lines[3], "in trouble: 3 (1 silent, 1 throttled, 1 hot)")
        self.assertEqual([line.split()[0] for line in lines[4:]], ["HOST", "pi-hot", "and"])
        self.assertTrue(lines[5].endswith("connected, hot"), lines[5])
        self.assertEqual(lines[6], "and 2 more in trouble: picluster status --state trouble")
        listed = statustable.render(payload, NOW, rows=[summary(troubles=[]), hot]).splitlines()
        self.assertEqual([line.split()[0] for line in listed[4:]], ["HOST", "pi-1", "pi-hot"])

    def test_summaryReadyTasks(self) -> None:
        """The summary's ready runs follow its running ones, only when there are some."""
        counts = {"slaves": {"connected": 2, "left": 0, "in_trouble": 0}, "slots": 8, "running_tasks": 7}
        for ready, wanted in [(5, "slots: 8, 7 running, 5 ready"), (0, "slots: 8, 7 running"),
                              (None, "slots: 8, 7 running")]:
            payload = dict(status(), summary=dict(counts, ready_tasks=ready))
            self.assertEqual(statustable.render(payload, NOW).splitlines()[2], wanted)

    def test_markupIsText(self) -> None:
        """Square brackets in a name are shown, not read as rich markup."""
        text = statustable.render(status(summary(hostname="[bold]pi[/bold]")), NOW)
        self.assertIn("[bold]pi[/bold]", text)


class ReadyTasksTests(unittest.TestCase):
    """
    What picluster status prints of the runs slaves hold ready, from the
    C{info status} answer of a real master (its scheduler and workers),
    its slaves played over StringTransports.
    """

    def test_printed(self) -> None:
        """A slave holding runs ready says how many in its row and the summary; one with none as before."""
        web = WebMaster(self)
        _, client, _ = hold_ready(web)
        payload = client.request("info", {"question": "status"})["payload"]
        text = statustable.render(payload, web.clock.seconds(), rows=payload["slaves"])
        self.assertEqual(text.splitlines()[2], "slots: 2, 1 running, 2 ready")
        self.assertIn(" 1/1 +2 ready ", rows(text)["pi-busy"])
        self.assertIn(" 0/1 ", rows(text)["pi-idle"])
        self.assertNotIn("ready", rows(text)["pi-idle"])


class ClosingStream(io.StringIO):
    """Standard output read by someone who stops after a few looks (C{| head})."""

    def __init__(self, looks: int):
        super().__init__()
        self.looks: list[str] = []
        self.left = looks

    def write(self, text: str) -> int:
        if self.left == 0:
            raise BrokenPipeError()
        self.left -= 1
        self.looks.append(text)
        return len(text)


def wait_until(check: Any, what: str) -> defer.Deferred[Any]:
    return processes.wait_until(check, what, timeout=15.0, poll=0.02)


class StatusCommandTests(unittest.TestCase):
    """
    picluster status against a real master and slave, in this process.
    """

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.patch(cli, "INITIAL_DELAY", 0.05)
        self.master = MasterService("tcp:0:interface=127.0.0.1", keepalive=1)
        self.master.startService()
        self.addCleanup(lambda: self.master.running and self.master.stopService())
        listening = yield self.master.when_listening()
        yield self.master.scheduler.when_ready()
        self.port = listening.getHost().port
        self.address = f"127.0.0.1:{self.port}"

    def start_slave(self, hostname: str = "status-test-slave") -> SlaveService:
        runner = TaskRunner(installed_tasks(), slots=2, clock=reactor, reactor=reactor)
        factory = SlaveFactory(MasterAddress("127.0.0.1", self.port), keepalive=1,
                               initial_delay=0.05, max_delay=0.2, runner=runner,
                               computer_details={"hostname": hostname, "model": "Test Board"})
        slave = SlaveService(factory)
        slave.startService()
        self.addCleanup(lambda: slave.running and slave.stopService())
        return slave

    def slave_ready(self) -> defer.Deferred[Any]:
        """Wait until the master holds the slave's facts, vitals and offer of work."""
        return wait_until(
            lambda: any(slave.vitals is not None and slave.hostname and
                        slave in self.master.scheduler.workers for slave in self.master.registry),
            "the slave to report and offer work",
        )

    @defer.inlineCallbacks
    def picluster(self, *argv: str) -> Any:
        """Run one command line; fire with (status, stdout, stderr)."""
        stdout, stderr = io.StringIO(), io.StringIO()
        code = yield cli.main([*argv, "--insecure"], reactor=reactor, stdout=stdout,
                              stderr=stderr, stdin=io.StringIO(), environ={})
        return code, stdout.getvalue(), stderr.getvalue()

    @defer.inlineCallbacks
    def test_summary(self) -> Any:
        """status prints the master's line, the task counts and the summary; a healthy slave has no row."""
        self.start_slave()
        yield self.slave_ready()
        code, out, err = yield self.picluster("status", "--master", self.address)
        self.assertEqual((code, err), (0, ""))
        lines = out.splitlines()
        self.assertRegex(lines[0], r"^\S+ \(picluster \S+\), up \S+: 1 slave connected, 0 left$")
        self.assertEqual(lines[1], "tasks: 0 queued, 0 running, 0 done, 0 failed, 0 cancelled")
        self.assertRegex(lines[2], r"^slots: 2, 0 running(; hottest: status-test-slave \S+°C)?$")
        self.assertEqual(lines[3:], ["no slave in trouble"])

    @defer.inlineCallbacks
    def test_table(self) -> Any:
        """status --all prints a row for the slave with its vitals."""
        self.start_slave()
        yield self.slave_ready()
        code, out, err = yield self.picluster("status", "--all", "--master", self.address)
        self.assertEqual((code, err), (0, ""))
        row = {line.split()[0]: line for line in out.splitlines()[4:]}["status-test-slave"].split()
        self.assertTrue(row[1].startswith("127.0.0.1:"), row)
        self.assertEqual(row[2:4], ["Test", "Board"])
        self.assertIn("0/2", row)
        self.assertEqual(row[-1], "connected")
        self.assertRegex(" ".join(row), r"\d+% .* \d+(\.\d)?[KMGT] +\d+(\.\d)?[KMGT] 0/2 \S+ ago")

    @defer.inlineCallbacks
    def test_json(self) -> Any:
        """status --json prints the raw payload: master, slaves, task counts."""
        self.start_slave()
        yield self.slave_ready()
        code, out, err = yield self.picluster("status", "--json", "--master", self.address)
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(out.count("\n"), 1)
        payload = json.loads(out)
        self.assertEqual(sorted(payload), ["master", "more", "next", "slaves", "summary", "tasks", "total"])
        [slave] = payload["slaves"]
        self.assertEqual((slave["hostname"], slave["state"], slave["slots"]),
                         ("status-test-slave", "connected", 2))
        self.assertEqual(payload["master"]["slaves"], {"connected": 1, "left": 0})

    @defer.inlineCallbacks
    def test_leftSlave(self) -> Any:
        """A slave that left is still listed, saying when it left."""
        slave = self.start_slave()
        yield self.slave_ready()
        yield slave.stopService()
        yield wait_until(lambda: not any(True for _ in self.master.registry), "the slave to go")
        code, out, err = yield self.picluster("status", "--master", self.address)
        self.assertEqual(code, 0, err)
        self.assertIn(": 0 slaves connected, 1 left", out)
        self.assertRegex(out.splitlines()[-1], r"^status-test-slave .* left \S+ ago$")

    @defer.inlineCallbacks
    def test_noSlaves(self) -> Any:
        """A master without slaves is no error: it says so, exit 0."""
        code, out, err = yield self.picluster("status", "--master", self.address)
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(out.splitlines()[2:], ["slots: 0, 0 running", "no slave in trouble"])
        code, out, err = yield self.picluster("status", "--all", "--master", self.address)
        self.assertEqual(out.splitlines()[4:], ["no slaves connected"])

    @defer.inlineCallbacks
    def test_searchAndState(self) -> Any:
        """--search and --state list only the slaves asked for."""
        self.start_slave("pi-kitchen")
        self.start_slave("pi-garden")
        yield wait_until(lambda: len(self.master.registry) == 2 and all(
            slave.hostname for slave in self.master.registry), "both slaves")
        code, out, err = yield self.picluster("status", "--search", "GARD", "--master", self.address)
        self.assertEqual((code, err), (0, ""), err)
        self.assertEqual([line.split()[0] for line in out.splitlines()[5:]], ["pi-garden"])
        code, out, err = yield self.picluster("status", "--state", "left", "--master", self.address)
        self.assertEqual(out.splitlines()[4:], ["no slave matches"])

    @defer.inlineCallbacks
    def test_watch(self) -> Any:
        """--watch shows the cluster again and again, until its reader goes."""
        self.patch(options, "SHORTEST_WATCH_INTERVAL", 0.01)
        stdout = ClosingStream(looks=3)
        code = yield cli.main(["status", "--watch", "--interval", "0.01", "--master", self.address,
                               "--insecure"], reactor=reactor, stdout=stdout,
                              stderr=io.StringIO(), stdin=io.StringIO(), environ={})
        self.assertEqual(code, 1)
        self.assertEqual(len(stdout.looks), 3)
        self.assertTrue(all(look.startswith("\n") and "no slave in trouble" in look
                            for look in stdout.looks), stdout.looks)

    @defer.inlineCallbacks
    def test_unreachable(self) -> Any:
        """A master nobody listens for is one line on stderr and exit 1."""
        port = processes.free_port()
        code, out, err = yield self.picluster("status", "--master", f"127.0.0.1:{port}")
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(
            err, f"picluster status: error: cannot reach master 127.0.0.1:{port}: connection refused\n")


class OtherMasterTests(unittest.TestCase):
    """
    picluster status against masters that do not answer as the contract says.
    """

    def setUp(self) -> None:
        self.patch(cli, "INITIAL_DELAY", 0.05)
        self.master = FakeMaster()
        self.listening = reactor.listenTCP(0, self.master, interface="127.0.0.1")
        self.addCleanup(self.stop_master)

    @defer.inlineCallbacks
    def stop_master(self) -> Any:
        yield self.listening.stopListening()
        self.master.drop_connections()
        yield wait_until(lambda: not self.master.connections, "connections to close")

    @defer.inlineCallbacks
    def status_with(self, answer: Any) -> Any:
        # The fake master answers no info at all: teach it this one answer.
        FakeMasterConnection.msg_info = answer  # type: ignore[attr-defined]
        self.addCleanup(delattr, FakeMasterConnection, "msg_info")
        stdout, stderr = io.StringIO(), io.StringIO()
        address = f"127.0.0.1:{self.listening.getHost().port}"
        code = yield cli.main(["status", "--master", address, "--insecure"], reactor=reactor,
                              stdout=stdout, stderr=stderr, environ={})
        return code, stdout.getvalue(), stderr.getvalue()

    @defer.inlineCallbacks
    def test_olderMaster(self) -> Any:
        """A master that knows no info status refuses it: one line, exit 1."""

        def unknown(handler: Any, payload: Any) -> None:
            raise BadMessage("unknown info request", request=payload,
                             known=["computer_details", "uuid", "slave_details"])

        code, out, err = yield self.status_with(unknown)
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(err, "picluster status: error: the master refused it: unknown info"
                              " request (request: 'status', known: ['computer_details', 'uuid',"
                              " 'slave_details'])\n")

    @defer.inlineCallbacks
    def test_tasksOfOlderMaster(self) -> Any:
        """
        A master from before the tasks query's order refuses it: picluster
        tasks says so and lists what that master can, the oldest first.
        """
        asked: list[str] = []

        def tasks(handler: Any, query: Any) -> Any:
            asked.append(query.order)
            if query.order != "oldest":  # what an older master makes of any order
                raise BadMessage("Object contains unknown field `order`")
            return ("tasks", {"tasks": [], "more": None})

        self.patch(FakeMasterConnection, "msg_tasks", tasks)
        stdout, stderr = io.StringIO(), io.StringIO()
        address = f"127.0.0.1:{self.listening.getHost().port}"
        code = yield cli.main(["tasks", "--master", address, "--insecure"], reactor=reactor,
                              stdout=stdout, stderr=stderr, environ={})
        self.assertEqual((code, asked), (0, ["newest", "oldest"]))
        self.assertEqual(stderr.getvalue(), "this master lists the oldest tasks first"
                                            " (it is older than this command)\n")

    @defer.inlineCallbacks
    def test_unreadableAnswer(self) -> Any:
        """An answer of the wrong shape is one line, exit 1, not a traceback."""
        code, out, err = yield self.status_with(lambda handler, payload: ("status", [1, 2]))
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(err, "picluster status: error: master answered info status"
                              " with a status we cannot read\n")
