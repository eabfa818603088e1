"""
End-to-end tests: real C{twistd} processes talking over real TCP.

These are the only tests that wait for real time, each wait bounded; the
children run the checkout (it is first on their C{PYTHONPATH}), except in
L{InstalledPluginTests}, which checks what C{pip install} put in place.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import sysconfig

from twisted.internet import defer
from twisted.trial import unittest

from tests.processes import ENDED_BY_SIGTERM, REPO_ROOT, Child, Cluster, child_env, temp_dir

#: What of the checkout an editable install needs: everything but what a
#: build or a test run leaves in it.
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "build", "*.egg-info", "__pycache__", "_trial_temp*", "tests.*"
)


class InstalledPluginTests(unittest.TestCase):
    """
    C{twistd} outside the checkout lists the installed plugins.
    """

    @defer.inlineCallbacks
    def test_helpListsBothSubcommands(self):
        """The installed twistd --help lists both picluster subcommands, twice, without errors."""
        cluster = Cluster(self)
        probe = Child(
            self, "probe",
            [sys.executable, "-c", "import picluster, twisted.plugins.picluster_plugin"],
            cwd=cluster.cwd, env=child_env(checkout=False),
        )
        status = yield probe.wait_for_exit()
        if status != 0:
            raise unittest.SkipTest(
                "picluster and its plugin are not importable outside the checkout"
                f" (not installed?):\n{probe.stderr()}"
            )
        for run in ("first", "second"):
            help_run = cluster.twistd(f"help-{run}", "--help", checkout=False)
            status = yield help_run.wait_for_exit()
            self.assertEqual(status, 0, help_run.report())
            self.assertIn("picluster-master", help_run.stdout(), help_run.report())
            self.assertIn("picluster-slave", help_run.stdout(), help_run.report())
            self.assertNotIn("Traceback", help_run.output(), help_run.report())
            self.assertNotIn("Unable to write", help_run.output(), help_run.report())


class EditableInstallTests(unittest.TestCase):
    """
    C{pip install -e .}, what a contributor types first, gives a twistd that
    lists both plugins: setuptools' default editable import hook hides
    C{twisted/plugins} from Twisted's plugin scan, so the packages' root is
    declared (C{package_dir}) and the install is a plain path entry.
    """

    @defer.inlineCallbacks
    def test_editableInstallListsBothSubcommands(self):
        """A fresh venv with an editable install of a copy of the checkout runs both plugins' --help."""
        where = temp_dir(self)
        source = os.path.join(where, "checkout")
        shutil.copytree(REPO_ROOT, source, ignore=_NOT_SOURCE)
        venv = os.path.join(where, "venv")
        python = os.path.join(venv, "bin", "python")
        env = child_env(checkout=False)
        steps = [
            [sys.executable, "-m", "venv", "--without-pip", venv],
            # This venv's own packages (Twisted, setuptools, pip) for the new
            # one, so that the test installs nothing from an index.
            [python, "-c", _ADD_PATH, sysconfig.get_paths()["purelib"]],
            [python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
             "--no-build-isolation", "--editable", source],
            [python, "-c", "from twisted.scripts.twistd import run; run()", "--help"],
        ]
        for number, argv in enumerate(steps):
            step = Child(self, f"step-{number}", argv, cwd=where, env=env)
            status = yield step.wait_for_exit(timeout=120)
            self.assertEqual(status, 0, step.report())
        self.assertIn("picluster-master", step.stdout(), step.report())
        self.assertIn("picluster-slave", step.stdout(), step.report())
        probe = Child(self, "probe", [python, "-c", "import picluster; print(picluster.__file__)"],
                      cwd=where, env=env)
        self.assertEqual((yield probe.wait_for_exit()), 0, probe.report())
        self.assertTrue(probe.stdout().startswith(source), probe.report())


#: Run by the new venv's python with a directory: puts it on that venv's path.
_ADD_PATH = """
import os, site, sys
with open(os.path.join(site.getsitepackages()[0], "outer.pth"), "w") as pth:
    pth.write(sys.argv[1] + "\\n")
"""


class ReconnectionTests(unittest.TestCase):
    """
    A slave outlives its master and rejoins it under the same uuid.
    """

    @defer.inlineCallbacks
    def test_slaveRejoinsRestartedMaster(self):
        """After the master is SIGKILLed and restarted, the slave rejoins with its old uuid."""
        cluster = Cluster(self)
        first_master = cluster.master("master")
        slave = cluster.slave("slave")

        joined = yield cluster.wait_for_slaves(
            "the slave to join and report its vitals",
            lambda slaves: len(slaves) == 1 and slaves[0]["vitals"] is not None,
        )
        uuid = joined[0]["uuid"]
        self.assertRegex(uuid, "^[0-9a-f]{32}$")
        self.assertIsNotNone(joined[0]["hostname"])

        first_master.signal(signal.SIGKILL)
        status = yield first_master.wait_for_exit(report=cluster.report)
        self.assertEqual(status, -signal.SIGKILL)

        cluster.master("master-again")
        rejoined = yield cluster.wait_for_slaves(
            "the slave to rejoin the restarted master", lambda slaves: len(slaves) == 1
        )
        self.assertEqual(rejoined[0]["uuid"], uuid, cluster.report())

        log = slave.output()
        self.assertIn(
            "Got disconnection exception with message: Lost connection to master", log,
            cluster.report(),
        )
        self.assertIn(f"Rejoined master 127.0.0.1:{cluster.port} as {uuid}", log, cluster.report())
        self.assertNotIn("Traceback", log, cluster.report())
        self.assertTrue(slave.running, cluster.report())


class BadOptionsTests(unittest.TestCase):
    """
    A bad option stops twistd at once with a usage message, not a traceback.
    """

    @defer.inlineCallbacks
    def assert_refused(self, option: str, *arguments: str):
        cluster = Cluster(self)
        child = cluster.twistd("refused", *arguments)
        status = yield child.wait_for_exit(timeout=10.0)
        self.assertNotEqual(status, 0, child.report())
        self.assertIn(f"{option}:", child.output(), child.report())
        self.assertNotIn("Traceback", child.output(), child.report())
        self.assertNotIn("starting up", child.output(), child.report())

    def test_masterZeroKeepalive(self):
        """twistd picluster-master --keepalive 0 exits non-zero naming --keepalive."""
        return self.assert_refused("--keepalive", "picluster-master", "--keepalive", "0")

    def test_slaveBadMaster(self):
        """twistd picluster-slave --master host:99999 exits non-zero naming --master."""
        return self.assert_refused("--master", "picluster-slave", "--master", "host:99999")

    def test_slaveNoSlots(self):
        """twistd picluster-slave --slots 0 exits non-zero naming --slots."""
        return self.assert_refused("--slots", "picluster-slave", "--slots", "0")

    @defer.inlineCallbacks
    def test_masterUnusableDatabase(self):
        """A master whose --db cannot be opened exits non-zero with one line saying why."""
        cluster = Cluster(self)
        with open(f"{cluster.cwd}/notes.txt", "w") as notes:
            notes.write("not a database\n" * 100)
        master = cluster.master("master", "--db", "notes.txt")
        status = yield master.wait_for_exit(timeout=10.0)
        self.assertNotEqual(status, 0, master.report())
        self.assertIn("picluster-master: cannot use task database notes.txt: file is not a database",
                      master.output(), master.report())
        self.assertNotIn("Traceback", master.output(), master.report())

    @defer.inlineCallbacks
    def test_masterPortTaken(self):
        """A second master on a taken port exits non-zero with one line saying so."""
        cluster = Cluster(self)
        cluster.master("first")
        yield cluster.wait_until(
            lambda: cluster.slave_details().addCallback(lambda slaves: slaves is not None),
            "the first master to answer",
        )
        second = cluster.master("second")
        status = yield second.wait_for_exit(timeout=10.0)
        self.assertNotEqual(status, 0, second.report())
        self.assertIn(
            f"picluster-master: cannot listen on tcp:{cluster.port}:interface=127.0.0.1:"
            " Address already in use",
            second.output(), second.report(),
        )
        self.assertNotIn("Traceback", second.output(), second.report())


    @defer.inlineCallbacks
    def test_webPortTaken(self):
        """A taken --web port is named in the one line, not the slave port."""
        import socket

        cluster = Cluster(self)
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            web = f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1"
            master = cluster.master("master", "--web", web)
            status = yield master.wait_for_exit(timeout=10.0)
        self.assertNotEqual(status, 0, master.report())
        self.assertIn(f"picluster-master: cannot listen on {web}: Address already in use",
                      master.output(), master.report())
        self.assertNotIn("Traceback", master.output(), master.report())

    def test_badWebEndpoint(self):
        """--web that is no endpoint exits naming --web."""
        return self.assert_refused("--web", "picluster-master", "--web", "tcp:http")

    def test_badInfluxURL(self):
        return self.assert_refused("--influxdb", "picluster-master", "--influxdb", "ftp://x")


class ShutdownTests(unittest.TestCase):
    """
    SIGTERM ends a node cleanly, and its peer carries on.
    """

    @defer.inlineCallbacks
    def start_joined(self):
        cluster = Cluster(self)
        master = cluster.master("master")
        slave = cluster.slave("slave")
        yield cluster.wait_for_slaves("the slave to join", lambda slaves: len(slaves) == 1)
        return cluster, master, slave

    def assert_shut_down(self, child: Child, status: int, report: str):
        # twistd re-raises SIGTERM on itself once it has shut down cleanly.
        self.assertEqual(status, ENDED_BY_SIGTERM, report)
        self.assertIn("Server Shut Down.", child.output(), report)
        self.assertNotIn("Traceback", child.output(), report)

    @defer.inlineCallbacks
    def test_sigtermSlave(self):
        """SIGTERM makes a joined slave close its connection and shut down; the master drops it."""
        cluster, master, slave = yield self.start_joined()
        slave.signal(signal.SIGTERM)
        status = yield slave.wait_for_exit(report=cluster.report)
        self.assert_shut_down(slave, status, cluster.report())
        self.assertIn("Lost connection to master", slave.output(), cluster.report())
        self.assertIn("slave shutting down", slave.output(), cluster.report())
        yield cluster.wait_for_slaves("the master to drop the slave", lambda slaves: not slaves)
        self.assertTrue(master.running, cluster.report())

    @defer.inlineCallbacks
    def test_sigtermMaster(self):
        """SIGTERM makes a master close its slaves' connections and stop; the slave retries."""
        cluster, master, slave = yield self.start_joined()
        master.signal(signal.SIGTERM)
        status = yield master.wait_for_exit(report=cluster.report)
        self.assert_shut_down(master, status, cluster.report())
        self.assertIn("master shutting down", master.output(), cluster.report())
        yield cluster.wait_for_log(slave, f"Lost connection to master 127.0.0.1:{cluster.port}")
        yield cluster.wait_for_log(slave, "connection refused")
        self.assertTrue(slave.running, cluster.report())


class SilenceTests(unittest.TestCase):
    """
    A peer that goes silent without closing (frozen, unplugged) is given up
    on after --dead-after, and rejoins once it wakes.  SIGSTOP freezes a
    process while its kernel keeps the TCP connection open: a real half-open
    peer, which no in-memory test can stand in for.
    """

    @defer.inlineCallbacks
    def start_joined(self):
        cluster = Cluster(self)
        master = cluster.master("master")
        slave = cluster.slave("slave")
        [joined] = yield cluster.wait_for_slaves("the slave to join", lambda slaves: len(slaves) == 1)
        return cluster, master, slave, joined["uuid"]

    @defer.inlineCallbacks
    def test_frozenSlave(self):
        """The master drops a frozen slave after dead-after; thawed, it rejoins as itself."""
        cluster, master, slave, uuid = yield self.start_joined()
        slave.signal(signal.SIGSTOP)
        yield cluster.wait_for_slaves("the master to drop the frozen slave", lambda slaves: not slaves)
        self.assertIn(f"({uuid}): nothing received for", master.output(), cluster.report())
        slave.signal(signal.SIGCONT)
        [back] = yield cluster.wait_for_slaves(
            "the thawed slave to rejoin", lambda slaves: len(slaves) == 1
        )
        self.assertEqual(back["uuid"], uuid, cluster.report())
        yield cluster.wait_for_log(slave, f"Rejoined master 127.0.0.1:{cluster.port} as {uuid}")

    @defer.inlineCallbacks
    def test_frozenMaster(self):
        """A slave gives up on a frozen master, and rejoins it as itself once it thaws."""
        cluster, master, slave, uuid = yield self.start_joined()
        master.signal(signal.SIGSTOP)
        yield cluster.wait_for_log(slave, "no sign of life")
        master.signal(signal.SIGCONT)
        yield cluster.wait_for_log(slave, f"Rejoined master 127.0.0.1:{cluster.port} as {uuid}")
        [back] = yield cluster.wait_for_slaves(
            "exactly one connection for the slave", lambda slaves: len(slaves) == 1
        )
        self.assertEqual(back["uuid"], uuid, cluster.report())
        self.assertTrue(slave.running and master.running, cluster.report())
