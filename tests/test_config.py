"""
Tests for the options of C{twistd picluster-master} and C{picluster-slave}:
the command line, C{--config} files (the tutorial's C{rpicluster.cfg}
included), the services they make, the master address parser and the
twistd plugins.
"""

from __future__ import annotations

import configparser
import importlib.util
import os

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin, getPlugins
from twisted.python import usage
from twisted.trial import unittest

from picluster import address, config
from picluster.address import MasterAddress, parse_master
from picluster.clockwatch import ClockWatch
from picluster.master.service import DEFAULT_BACKLOG, MasterService, with_default_backlog
from picluster.slave.results import DEFAULT_MAX_RESULT
from picluster.slave.session import SlaveService
from picluster.tap import master as master_tap
from picluster.tap import slave as slave_tap
from picluster.timebase import has_monotonic_timers
from picluster.trust.token import JoinToken, new_secret
from picluster.wire.messages import COMMAND_TASKS
from tests.processes import REPO_ROOT, temp_dir, temp_path

#: The tutorial's rpicluster.cfg, exactly as it ships.
TUTORIAL_CFG = """\
[master]
socket_port = 12345
socket_bind_ip =

[slave]
socket_port = 12345
master_ip = 127.0.0.1
"""


class OptionsTestMixin:
    """Parse options of one side, with or without a config file."""

    options_class: type[config.Options]
    #: Arguments every parse starts with.
    default_arguments: tuple[str, ...] = ()

    def write_config(self, text: str) -> str:
        path = temp_path(self)
        with open(path, "w", encoding="utf-8") as config_file:
            config_file.write(text)
        return path

    def parse(self, *arguments: str, config_text: str | None = None) -> config.Options:
        options = self.options_class()
        arguments = (*self.default_arguments, *arguments)
        if config_text is not None:
            arguments = ("--config", self.write_config(config_text), *arguments)
        options.parseOptions(list(arguments))
        return options

    def refused(self, *arguments: str, config_text: str | None = None) -> str:
        """The message of the UsageError that parsing these arguments raises."""
        error = self.assertRaises(
            usage.UsageError, self.parse, *arguments, config_text=config_text
        )
        return str(error)


class CommonOptionsMixin(OptionsTestMixin):
    """Options both sides share; mixed into each side's tests."""

    section: str

    def test_keepalive(self):
        """--keepalive takes seconds and sets dead-after to three times it."""
        options = self.parse("--keepalive", "2.5")
        self.assertEqual(options["keepalive"], 2.5)
        self.assertEqual(options["dead-after"], 7.5)

    def test_deadAfter(self):
        """--dead-after overrides the three-keepalives default."""
        options = self.parse("--keepalive", "2", "--dead-after", "4.5")
        self.assertEqual(options["dead-after"], 4.5)

    def test_maxFrameUnits(self):
        """--max-frame accepts plain bytes and K/M suffixes in any case."""
        for text, size in [("2M", 2 * 1024**2), ("64k", 65536), ("3 MiB", 3 * 1024**2),
                           ("1024", 1024), ("4096kb", 4 * 1024**2)]:
            self.assertEqual(self.parse("--max-frame", text)["max-frame"], size, text)

    def test_badKeepalive(self):
        """Negative, zero, NaN, infinite or textual --keepalive is refused, naming it."""
        for text in ["-1", "0", "nan", "inf", "soon", ""]:
            message = self.refused("--keepalive", text)
            self.assertTrue(message.startswith("--keepalive: "), message)
            self.assertIn(repr(text), message)

    def test_deadAfterNotLongerThanKeepalive(self):
        """A --dead-after no longer than --keepalive is refused, naming both."""
        for dead_after in ["5", "3"]:
            message = self.refused("--keepalive", "5", "--dead-after", dead_after)
            self.assertIn("--dead-after", message)
            self.assertIn("--keepalive", message)

    def test_badMaxFrame(self):
        """Too small, too large or unreadable --max-frame is refused, naming it."""
        for text in ["1000", "1023", "4096M", str(2**32), "lots", "1.5M", "-1", "4G", "2X", ""]:
            message = self.refused("--max-frame", text)
            self.assertTrue(message.startswith("--max-frame: "), f"{text}: {message}")

    def test_maxFrameBounds(self):
        """--max-frame accepts exactly its smallest and largest sizes."""
        self.assertEqual(self.parse("--max-frame", "1K")["max-frame"], config.SMALLEST_MAX_FRAME)
        self.assertEqual(
            self.parse("--max-frame", str(config.LARGEST_MAX_FRAME))["max-frame"],
            config.LARGEST_MAX_FRAME,
        )

    def test_newStyleCommonKeys(self):
        """keepalive, dead_after and max_frame are read from the file."""
        options = self.parse(
            config_text=f"[{self.section}]\nkeepalive = 2\ndead_after = 9\nmax_frame = 2M\n"
        )
        self.assertEqual(options["keepalive"], 2.0)
        self.assertEqual(options["dead-after"], 9.0)
        self.assertEqual(options["max-frame"], 2 * 1024**2)

    def test_dashedKey(self):
        """dead-after is read from the file spelled with a dash too."""
        options = self.parse(config_text=f"[{self.section}]\ndead-after = 11\n")
        self.assertEqual(options["dead-after"], 11.0)

    def test_commandLineBeatsFile(self):
        """A value on the command line wins over the file's."""
        options = self.parse(
            "--keepalive", "3", config_text=f"[{self.section}]\nkeepalive = 2\ndead_after = 30\n"
        )
        self.assertEqual(options["keepalive"], 3.0)
        self.assertEqual(options["dead-after"], 30.0)

    def test_badValueInFile(self):
        """A bad value in the file is refused, naming the key, section and file."""
        path = self.write_config(f"[{self.section}]\nkeepalive = -2\n")
        message = self.refused("--config", path)
        self.assertTrue(
            message.startswith(f"keepalive in [{self.section}] of {path}: "), message
        )

    def test_badFileValueHiddenByCommandLine(self):
        """A bad value in the file does not matter when the command line sets it."""
        options = self.parse("--keepalive", "4", config_text=f"[{self.section}]\nkeepalive = x\n")
        self.assertEqual(options["keepalive"], 4.0)

    def test_unknownKey(self):
        """An unknown key in the node's own section is refused, naming key and file."""
        path = self.write_config(f"[{self.section}]\nkeepalive = 2\ncolour = blue\n")
        message = self.refused("--config", path)
        self.assertIn(path, message)
        self.assertIn("'colour'", message)
        self.assertIn(f"[{self.section}]", message)

    def test_missingFile(self):
        """A --config file that does not exist is refused, naming it."""
        path = temp_path(self)
        message = self.refused("--config", path)
        self.assertTrue(message.startswith("--config: cannot read "), message)
        self.assertIn(path, message)
        self.assertIn("No such file", message)

    def test_directoryAsFile(self):
        """A directory given as --config is refused, naming it."""
        path = temp_dir(self)
        message = self.refused("--config", path)
        self.assertTrue(message.startswith("--config: cannot read "), message)
        self.assertIn(path, message)

    def test_notIni(self):
        """A --config file that is not INI is refused as such."""
        for text in ["keepalive = 2\n", "[master\n", '{"keepalive": 2}\n']:
            path = self.write_config(text)
            message = self.refused("--config", path)
            self.assertIn(f"--config: {path} is not a valid INI file", message)

    def test_notUtf8(self):
        """A --config file that is not UTF-8 text is refused as not INI."""
        path = temp_path(self)
        with open(path, "wb") as config_file:
            config_file.write(b"[" + self.section.encode() + b"]\nkeepalive = \xff\xfe\n")
        self.assertIn("is not a valid INI file", self.refused("--config", path))

    def test_emptyFile(self):
        """An empty --config file, or one without this node's section, gives the defaults."""
        for text in ["", "[elsewhere]\nkeepalive = 9\n"]:
            options = self.parse(config_text=text)
            self.assertEqual(options["keepalive"], 5.0)
            self.assertEqual(options["dead-after"], 15.0)


class MasterOptionsTests(CommonOptionsMixin, unittest.TestCase):
    """
    C{twistd picluster-master} options.
    """

    options_class = master_tap.Options
    section = "master"

    def test_defaults(self):
        """With no options the master listens on tcp:12345 with keepalive 5."""
        options = self.parse()
        self.assertEqual(options["port"], "tcp:12345")
        self.assertEqual(options["keepalive"], 5.0)
        self.assertEqual(options["dead-after"], 15.0)
        self.assertEqual(options["max-frame"], 1024 * 1024)
        self.assertIsNone(options["config"])

    def test_peerBounds(self):
        """The bounds on peers reach the master's factory, the connection cap below the file limit."""
        import resource

        from picluster.master import admission

        service = master_tap.makeService(self.parse(
            "--web", "none", "--max-connections", "100", "--max-handshakes", "7",
            "--max-handshakes-per-host", "2", "--handshake-timeout", "4", "--frame-deadline", "9",
            "--max-queued", "2M"))
        factory = service.factory
        self.assertEqual((factory.admission.max_connections, factory.admission.max_strangers,
                          factory.admission.max_strangers_per_host), (100, 7, 2))
        self.assertEqual((factory.handshake_timeout, factory.frame_deadline, factory.max_queued),
                         (4.0, 9.0, 2 * 1024 * 1024))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        service = master_tap.makeService(self.parse("--web", "none"))
        self.assertEqual(service.factory.admission.max_connections,
                         min(admission.DEFAULT_MAX_CONNECTIONS, soft - admission.RESERVED_DESCRIPTORS))
        self.assertEqual(service.factory.max_queued, 8 * 1024 * 1024)

    def test_clockWatched(self):
        """
        The master's timers keep to the monotonic clock, and it says in its
        log when the system clock is stepped.
        """
        service = master_tap.makeService(self.parse("--web", "none"))
        self.assertEqual(len([child for child in service if isinstance(child, ClockWatch)]), 1)
        self.assertTrue(has_monotonic_timers(service.reactor))

    def test_peerBoundsChecked(self):
        """Nonsense bounds are refused with a clear message."""
        for argv, expected in [
            (("--max-queued", "1K"), "--max-queued (1024 bytes) must be at least --max-frame"),
            (("--max-connections", "0"), "must be from 1"),
            (("--handshake-timeout", "0"), "positive number of seconds"),
            (("--frame-deadline", "-1"), "positive number of seconds"),
        ]:
            error = self.assertRaises(usage.UsageError, self.parse, *argv)
            self.assertIn(expected, str(error))

    def test_insecureHasNoHandshakeDeadline(self):
        """A plain master has no strangers, so no handshake deadline."""
        service = master_tap.makeService(self.parse("--web", "none", "--insecure"))
        self.assertIsNone(service.factory.handshake_timeout)

    def test_webAndInfluxDefaults(self):
        """The dashboard listens on this machine only; InfluxDB is off."""
        options = self.parse()
        self.assertEqual(options["web"], "tcp:8080:interface=127.0.0.1")
        self.assertEqual(options["forget-after"], 3600.0)
        self.assertIsNone(options["influxdb"])
        self.assertEqual(options["influxdb-db"], "picluster")
        service = master_tap.makeService(options)
        self.assertEqual(service.web_listener.endpoint._port, 8080)
        self.assertIsNone(service.influx)

    def test_webNone(self):
        """--web none: no web server at all."""
        service = master_tap.makeService(self.parse("--web", "none"))
        self.assertIsNone(service.web_listener)

    def test_influx(self):
        service = master_tap.makeService(self.parse(
            "--influxdb", "http://10.0.0.5:8086/", "--influxdb-db", "pis",
            "--influxdb-interval", "30"))
        self.assertEqual(service.influx.url, "http://10.0.0.5:8086")
        self.assertEqual((service.influx.database, service.influx.interval), ("pis", 30.0))
        self.assertIs(service.influx.registry, service.registry)

    def test_badWebAndInflux(self):
        self.assertIn("--web", self.refused("--web", "tcp:99999"))
        self.assertIn("--influxdb", self.refused("--influxdb", "ftp://x"))
        self.assertIn("--influxdb-interval", self.refused("--influxdb-interval", "0"))
        self.assertIn("--forget-after", self.refused("--forget-after", "-1"))

    def test_systemdWithoutSocket(self):
        """
        A systemd endpoint started without systemd's socket is a usage
        error that says so, not a traceback.
        """
        message = self.refused("--port", "systemd:domain=INET:index=0")
        self.assertIn("--port", message)
        self.assertIn("no socket for 'systemd:domain=INET:index=0' was handed over by systemd",
                      message)

    def test_plainMasterRefusesCommandTasks(self):
        """--insecure gives a plain master (no TLS) that will not queue a task running commands."""
        service = master_tap.makeService(self.parse("--insecure"))
        self.assertIsNone(service.trust)
        self.assertIs(service.listener.factory, service.factory)
        self.assertEqual(set(service.scheduler.refused_tasks), set(COMMAND_TASKS))
        self.assertIn("plain mode", service.scheduler.refused_tasks["shell"])

    def test_makeServiceDefaults(self):
        """makeService gives a secure MasterService on port 12345 with a 4096 backlog."""
        state_dir = temp_path(self)
        service = master_tap.makeService(self.parse("--state-dir", state_dir))
        self.assertIsInstance(service, MasterService)
        # TLS around the master's factory, with the state directory's trust.
        self.assertIs(service.listener.factory.wrappedFactory, service.factory)
        self.assertEqual(service.trust.state_dir, state_dir)
        self.assertEqual(service.scheduler.refused_tasks, {})
        self.assertTrue(os.path.exists(os.path.join(state_dir, "cluster-ca.pem")))
        self.assertIs(service.factory.registry, service.registry)
        endpoint = service.listener.endpoint
        self.assertEqual(endpoint._port, 12345)
        self.assertEqual(endpoint._backlog, DEFAULT_BACKLOG)
        self.assertEqual(DEFAULT_BACKLOG, 4096)
        self.assertEqual(service.factory.keepalive, 5.0)
        self.assertEqual(service.factory.dead_after, 15.0)
        self.assertEqual(service.factory.max_frame, 1024 * 1024)
        self.assertFalse(service.running)

    def test_makeServiceSettings(self):
        """makeService hands the port and every setting to the master."""
        service = master_tap.makeService(
            self.parse(
                "--port", "tcp:2000:interface=127.0.0.1:backlog=7", "--keepalive", "2",
                "--dead-after", "7", "--max-frame", "2M",
            )
        )
        endpoint = service.listener.endpoint
        self.assertEqual((endpoint._port, endpoint._interface, endpoint._backlog),
                         (2000, "127.0.0.1", 7))
        self.assertEqual(service.factory.keepalive, 2.0)
        self.assertEqual(service.factory.dead_after, 7.0)
        self.assertEqual(service.factory.max_frame, 2 * 1024**2)

    def test_defaultBacklog(self):
        """with_default_backlog adds backlog=4096 to TCP descriptions without one only."""
        self.assertEqual(with_default_backlog("tcp:12345"), "tcp:12345:backlog=4096")
        self.assertEqual(
            with_default_backlog("TCP6:12345:interface=\\:\\:1"),
            "TCP6:12345:interface=\\:\\:1:backlog=4096",
        )
        self.assertEqual(with_default_backlog("tcp:1:backlog=5"), "tcp:1:backlog=5")
        self.assertEqual(with_default_backlog("unix:/tmp/sock"), "unix:/tmp/sock")

    def test_tutorialConfig(self):
        """The tutorial's rpicluster.cfg as it ships listens on tcp:12345, all interfaces."""
        options = self.parse(config_text=TUTORIAL_CFG)
        self.assertEqual(options["port"], "tcp:12345")
        self.assertEqual(options["keepalive"], 5.0)
        service = master_tap.makeService(options)
        self.assertEqual(service.listener.endpoint._interface, "")

    def test_tutorialConfigBindIp(self):
        """The tutorial's socket_bind_ip becomes the interface, IPv6 colons escaped."""
        for bind_ip, port, interface in [
            ("127.0.0.1", "tcp:12345:interface=127.0.0.1", "127.0.0.1"),
            ("::1", "tcp:12345:interface=\\:\\:1", "::1"),
        ]:
            text = TUTORIAL_CFG.replace("socket_bind_ip =", f"socket_bind_ip = {bind_ip}")
            options = self.parse(config_text=text)
            self.assertEqual(options["port"], port)
            service = master_tap.makeService(options)
            self.assertEqual(service.listener.endpoint._interface, interface)

    def test_tutorialBindIpAlone(self):
        """socket_bind_ip without socket_port listens there on the default port."""
        options = self.parse(config_text="[master]\nsocket_bind_ip = 10.0.0.2\n")
        self.assertEqual(options["port"], "tcp:12345:interface=10.0.0.2")

    def test_newStylePort(self):
        """port in [master] is read as an endpoint description, beating socket_port."""
        options = self.parse(config_text="[master]\nport = tcp:2000\nsocket_port = 3000\n")
        self.assertEqual(options["port"], "tcp:2000")

    def test_commandLinePortBeatsTutorial(self):
        """--port beats the tutorial's socket_port."""
        options = self.parse("--port", "tcp:4000", config_text=TUTORIAL_CFG)
        self.assertEqual(options["port"], "tcp:4000")

    def test_badPort(self):
        """A --port that no server endpoint parser accepts is refused, naming it."""
        for text in ["tcp:notaport", "bogus:1", "tcp:", "tcp:1:backlog=many", "tcp:99999", "tcp:-1"]:
            message = self.refused("--port", text)
            self.assertTrue(message.startswith("--port: "), f"{text}: {message}")
            self.assertIn(repr(text), message)

    def test_badTutorialPort(self):
        """A bad socket_port in the file is refused, naming the keys written, section and file."""
        path = self.write_config("[master]\nsocket_port = twelve\n")
        message = self.refused("--config", path)
        self.assertTrue(message.startswith(f"socket_port/socket_bind_ip in [master] of {path}: "), message)

    def test_slaveSectionIgnored(self):
        """The master ignores the [slave] section, however wrong it is."""
        options = self.parse(
            config_text="[slave]\nmaster_ip = nowhere\nvitals = never\ncolour = blue\n"
        )
        self.assertEqual(options["port"], "tcp:12345")

    def test_slaveKeysRefusedInOwnSection(self):
        """A slave-only key in [master] is an unknown key."""
        self.assertIn("'vitals'", self.refused(config_text="[master]\nvitals = 5\n"))


class SlaveOptionsTests(CommonOptionsMixin, unittest.TestCase):
    """
    C{twistd picluster-slave} options.
    """

    options_class = slave_tap.Options
    #: The slaves here need no token: they are only parsed, or join plain masters.
    default_arguments = ("--insecure",)
    section = "slave"

    def test_defaults(self):
        """With no options the slave joins 127.0.0.1:12345 with the documented timings."""
        options = self.parse()
        self.assertEqual(options["master"], MasterAddress("127.0.0.1", 12345, 30.0))
        self.assertEqual(options["keepalive"], 5.0)
        self.assertEqual(options["dead-after"], 15.0)
        self.assertEqual(options["vitals"], 10.0)
        self.assertEqual(options["initial-delay"], 1.0)
        self.assertEqual(options["max-delay"], 60.0)
        self.assertEqual(options["max-frame"], 1024 * 1024)

    def test_makeService(self):
        """makeService hands the master's address and every setting to the factory."""
        options = self.parse(
            "--master", "tcp:host=pi0:port=2000:timeout=4", "--keepalive", "2",
            "--dead-after", "7", "--vitals", "10", "--initial-delay", "0.5",
            "--max-delay", "30", "--max-frame", "64K",
        )
        service = slave_tap.makeService(options)
        self.assertIsInstance(service, SlaveService)
        self.assertFalse(service.running)
        self.assertIsInstance(service.clock_watch, ClockWatch)
        self.assertTrue(has_monotonic_timers(service.clock_watch.reactor))
        factory = service.factory
        self.assertEqual(factory.master, MasterAddress("pi0", 2000, 4.0))
        self.assertEqual(factory.keepalive, 2.0)
        self.assertEqual(factory.dead_after, 7.0)
        self.assertEqual(factory.vitals_interval, 10.0)
        self.assertEqual((factory.initialDelay, factory.delay, factory.maxDelay), (0.5, 0.5, 30.0))
        self.assertEqual(factory.max_frame, 64 * 1024)
        self.assertIsNone(factory.uuid)

    def test_tokenFromTheConfigFile(self):
        """token_file (or token) in the [slave] section joins as --token-file does."""
        token = JoinToken("ab" * 32, "slave", new_secret())
        path = temp_path(self)
        with open(path, "w") as out:
            out.write(f"{token}\n")
        options = slave_tap.Options()
        options.parseOptions(["--config", self.write_config(f"[slave]\ntoken_file = {path}\n")])
        self.assertEqual(options["join-token"], token)
        options = slave_tap.Options()
        options.parseOptions(["--config", self.write_config(f"[slave]\ntoken = {token}\n")])
        self.assertEqual(options["join-token"], token)

    def test_noToken(self):
        """A slave with neither token nor --insecure is told where the token comes from."""
        error = self.assertRaises(usage.UsageError, slave_tap.Options().parseOptions, [])
        self.assertIn("a token is needed to join", str(error))

    def test_allowShellEntriesChecked(self):
        """--allow-shell entries are command lines, checked as they are read."""
        self.assertIn("may only end", self.refused("--allow-shell", "ls ... -l"))
        self.assertIn("must be named", self.refused("--allow-shell", "uptime,* x"))

    def test_plainRunsNoCommands(self):
        """In plain mode (--insecure) a slave refuses to allow admin or shell tasks."""
        for option in (["--allow-admin"], ["--allow-shell", "uptime"]):
            self.assertIn("need a secure master", self.refused(*option))

    def test_maxResult(self):
        """--max-result defaults to what a frame carries, and must fit in one."""
        self.assertEqual(self.parse()["max-result"], DEFAULT_MAX_RESULT)
        self.assertEqual(self.parse("--max-frame", "64K")["max-result"], 64 * 1024 - 256)
        options = self.parse("--max-result", "100K")
        self.assertEqual(options["max-result"], 100 * 1024)
        runner = slave_tap.makeService(options).factory.runner
        self.assertEqual(runner.max_result_bytes, 100 * 1024)
        self.assertIn("--max-result (1048576 bytes) must be from 512 to 1048320",
                      self.refused("--max-result", "1M"))
        self.assertIn("must be from 512", self.refused("--max-result", "511"))

    def test_taskLimits(self):
        """--task-memory and --task-cpu reach the runner; 0 is no limit; tiny limits are refused."""
        runner = slave_tap.makeService(self.parse()).factory.runner
        self.assertEqual((runner.task_memory, runner.task_cpu), (1024**3, 3600))
        runner = slave_tap.makeService(self.parse("--task-memory", "2G", "--task-cpu", "60")).factory.runner
        self.assertEqual((runner.task_memory, runner.task_cpu), (2 * 1024**3, 60))
        runner = slave_tap.makeService(self.parse("--task-memory", "0", "--task-cpu", "0")).factory.runner
        self.assertEqual((runner.task_memory, runner.task_cpu), (None, None))
        self.assertIn("must be 0 (no limit) or at least 67108864 bytes",
                      self.refused("--task-memory", "1M"))
        self.assertIn("--task-cpu", self.refused("--task-cpu", "-1"))

    def test_workersRecycleAfter(self):
        """--workers-recycle-after reaches the pool, 1000 by default, from 1 to 10**6."""
        runner = slave_tap.makeService(self.parse()).factory.runner
        self.assertEqual((runner.workers.recycle_after, runner.workers.size), (1000, runner.slots))
        runner = slave_tap.makeService(self.parse("--workers-recycle-after", "1")).factory.runner
        self.assertEqual(runner.workers.recycle_after, 1)
        self.assertIn("--workers-recycle-after", self.refused("--workers-recycle-after", "0"))
        self.assertIn("--workers-recycle-after", self.refused("--workers-recycle-after", "1000001"))

    def test_prefetch(self):
        """--prefetch (or prefetch in the file) reaches the runner, from 0 to 1024; --slots by default."""
        runner = slave_tap.makeService(self.parse("--slots", "3")).factory.runner
        self.assertEqual((runner.slots, runner.prefetch), (3, 3))
        runner = slave_tap.makeService(self.parse()).factory.runner
        self.assertEqual(runner.prefetch, runner.slots)
        runner = slave_tap.makeService(self.parse("--slots", "3", "--prefetch", "0")).factory.runner
        self.assertEqual(runner.prefetch, 0)
        options = self.parse("--slots", "2", config_text="[slave]\nprefetch = 1024\n")
        self.assertEqual(slave_tap.makeService(options).factory.runner.prefetch, 1024)
        self.assertEqual(self.refused("--prefetch", "-1"), "--prefetch: must be from 0 to 1024, not -1")
        self.assertEqual(self.refused("--prefetch", "1025"),
                         "--prefetch: must be from 0 to 1024, not 1025")
        self.assertEqual(self.refused("--prefetch", "x"), "--prefetch: expected a whole number, not 'x'")
        self.assertIn("prefetch in [slave] of ", self.refused(config_text="[slave]\nprefetch = lots\n"))

    def test_makeServiceDefaults(self):
        """makeService with no options makes a factory for 127.0.0.1:12345."""
        factory = slave_tap.makeService(self.parse()).factory
        self.assertEqual(factory.master, MasterAddress("127.0.0.1", 12345))
        self.assertEqual((factory.keepalive, factory.dead_after), (5.0, 15.0))
        self.assertEqual(factory.vitals_interval, 10.0)
        self.assertEqual((factory.initialDelay, factory.maxDelay), (1.0, 60.0))
        self.assertEqual(factory.max_frame, 1024 * 1024)

    def test_tutorialConfig(self):
        """The tutorial's rpicluster.cfg as it ships joins 127.0.0.1:12345."""
        options = self.parse(config_text=TUTORIAL_CFG)
        self.assertEqual(options["master"], MasterAddress("127.0.0.1", 12345))

    def test_tutorialConfigOtherMaster(self):
        """The tutorial's master_ip and socket_port name the master, IPv6 included."""
        for lines, expected in [
            ("master_ip = 10.0.0.2\nsocket_port = 2000\n", MasterAddress("10.0.0.2", 2000)),
            ("master_ip = ::1\nsocket_port = 2000\n", MasterAddress("::1", 2000)),
            ("master_ip = [::1]\nsocket_port = 2000\n", MasterAddress("::1", 2000)),
            ("master_ip = pi-master\n", MasterAddress("pi-master", 12345)),
            ("socket_port = 2000\n", MasterAddress("127.0.0.1", 2000)),
        ]:
            options = self.parse(config_text="[slave]\n" + lines)
            self.assertEqual(options["master"], expected, lines)

    def test_newStyleKeys(self):
        """master, vitals, initial_delay and max_delay are read from the file."""
        options = self.parse(
            config_text="[slave]\nmaster = tcp:host=pi0:port=2000\nvitals = 10\n"
            "initial_delay = 0.5\nmax-delay = 30\n"
        )
        self.assertEqual(options["master"], MasterAddress("pi0", 2000))
        self.assertEqual(options["vitals"], 10.0)
        self.assertEqual(options["initial-delay"], 0.5)
        self.assertEqual(options["max-delay"], 30.0)

    def test_newStyleMasterBeatsTutorial(self):
        """master in [slave] beats the tutorial's master_ip and socket_port."""
        options = self.parse(
            config_text="[slave]\nmaster = pi0:2000\nmaster_ip = 10.0.0.9\nsocket_port = 9\n"
        )
        self.assertEqual(options["master"], MasterAddress("pi0", 2000))

    def test_commandLineMasterBeatsFile(self):
        """--master beats the file's master_ip."""
        options = self.parse("--master", "pi1:3000", config_text=TUTORIAL_CFG)
        self.assertEqual(options["master"], MasterAddress("pi1", 3000))

    def test_badMaster(self):
        """An unusable --master is refused, naming it."""
        for text in ["host:99999", "host:0", "ssl:host=x:port=1", "unix:/tmp/s", "tcp:port=1",
                     "tcp:host=x", "nohostport", ":5", "", "[::1]", "tcp:host=x:port=1:bind=y"]:
            message = self.refused("--master", text)
            self.assertTrue(message.startswith("--master: "), f"{text!r}: {message}")

    def test_badMasterInFile(self):
        """A bad master_ip/socket_port in the file is refused, naming those keys and the file."""
        path = self.write_config("[slave]\nmaster_ip = 10.0.0.2\nsocket_port = 123456\n")
        message = self.refused("--config", path)
        self.assertTrue(message.startswith(f"master_ip/socket_port in [slave] of {path}: "), message)

    def test_badVitals(self):
        """A zero or textual --vitals is refused, naming it."""
        for text in ["0", "often"]:
            self.assertTrue(self.refused("--vitals", text).startswith("--vitals: "))

    def test_maxDelayShorterThanInitialDelay(self):
        """A --max-delay shorter than --initial-delay is refused, naming both."""
        message = self.refused("--initial-delay", "5", "--max-delay", "2")
        self.assertIn("--max-delay", message)
        self.assertIn("--initial-delay", message)

    def test_equalDelays(self):
        """A --max-delay equal to --initial-delay is accepted."""
        options = self.parse("--initial-delay", "2", "--max-delay", "2")
        self.assertEqual((options["initial-delay"], options["max-delay"]), (2.0, 2.0))

    def test_masterSectionIgnored(self):
        """The slave ignores the [master] section, however wrong it is."""
        options = self.parse(
            config_text="[master]\nport = bogus:1\nsocket_bind_ip = x\ncolour = blue\n"
        )
        self.assertEqual(options["master"], MasterAddress("127.0.0.1", 12345))

    def test_masterKeysRefusedInOwnSection(self):
        """A master-only key in [slave] is an unknown key."""
        self.assertIn("'port'", self.refused(config_text="[slave]\nport = tcp:1\n"))


class ParseMasterTests(unittest.TestCase):
    """
    L{parse_master} reads the forms C{--master} accepts.
    """

    def test_tcpNamed(self):
        """tcp:host=H:port=P gives H and P with the default connect timeout."""
        self.assertEqual(
            parse_master("tcp:host=pi0:port=2000"),
            MasterAddress("pi0", 2000, address.DEFAULT_CONNECT_TIMEOUT),
        )

    def test_tcpPositional(self):
        """tcp:H:P reads the host and port by position."""
        self.assertEqual(parse_master("tcp:10.0.0.2:2000"), MasterAddress("10.0.0.2", 2000))

    def test_tcpMixed(self):
        """Positional values fill whichever of host and port is not named."""
        self.assertEqual(parse_master("tcp:pi0:port=2000"), MasterAddress("pi0", 2000))
        self.assertEqual(parse_master("tcp:host=pi0:2000"), MasterAddress("pi0", 2000))

    def test_tcpCaseAndSpace(self):
        """The tcp: prefix is case-insensitive and surrounding space is ignored."""
        self.assertEqual(parse_master("  TCP:host=pi0:port=7 "), MasterAddress("pi0", 7))

    def test_hostPort(self):
        """A plain H:P is a host and a port."""
        self.assertEqual(parse_master("pi-master.local:12345"),
                         MasterAddress("pi-master.local", 12345))

    def test_bracketedIpv6(self):
        """[v6]:P gives the bare IPv6 address."""
        self.assertEqual(parse_master("[::1]:5"), MasterAddress("::1", 5))
        self.assertEqual(parse_master("[fe80::1%eth0]:5"), MasterAddress("fe80::1%eth0", 5))

    def test_escapedIpv6(self):
        """tcp:host= takes an IPv6 address with its colons escaped."""
        self.assertEqual(parse_master("tcp:host=\\:\\:1:port=5"), MasterAddress("::1", 5))

    def test_timeout(self):
        """timeout= sets the connect timeout in seconds."""
        self.assertEqual(parse_master("tcp:host=pi0:port=5:timeout=2.5").timeout, 2.5)

    def test_str(self):
        """A MasterAddress prints as host:port, IPv6 hosts bracketed."""
        self.assertEqual(str(MasterAddress("pi0", 5)), "pi0:5")
        self.assertEqual(str(MasterAddress("::1", 5)), "[::1]:5")

    def assert_refused(self, description: str, *words: str):
        error = self.assertRaises(ValueError, parse_master, description)
        for word in words:
            self.assertIn(word, str(error), description)

    def test_errors(self):
        """Each malformed description is refused with a message saying what is wrong."""
        self.assert_refused("", "empty")
        self.assert_refused("   ", "empty")
        self.assert_refused("nohostport", "HOST:PORT", "'nohostport'")
        self.assert_refused(":5", "HOST:PORT")
        self.assert_refused("host:", "port must be a number")
        self.assert_refused("host:99999", "between 1 and 65535", "99999")
        self.assert_refused("host:0", "between 1 and 65535")
        self.assert_refused("host:http", "port must be a number", "'http'")
        self.assert_refused("tcp:port=1", "needs a host")
        self.assert_refused("tcp:host=pi0", "needs a port")
        self.assert_refused("tcp:host=::1:port=5", "too many")
        self.assert_refused("tcp:host=pi0:port=1:junk", "too many")
        self.assert_refused("tcp:host=pi0:port=1:timeout=nan", "timeout must be a positive")
        self.assert_refused("tcp:host=pi0:port=1:timeout=inf", "timeout must be a positive")
        self.assert_refused("tcp:host=pi0:port=5:bind=x", "unknown tcp: argument", "'bind'")
        self.assert_refused("tcp:a:1:2", "too many")
        self.assert_refused("tcp:host=pi0:port=5:timeout=soon", "timeout must be a number")
        self.assert_refused("tcp:host=pi0:port=5:timeout=0", "timeout must be a positive")
        self.assert_refused("tcp:host=pi0:port=5:timeout=-1", "timeout must be a positive")
        self.assert_refused("[::1]", "[IPv6]:PORT")
        self.assert_refused("[]:5", "[IPv6]:PORT")
        self.assert_refused("[::1]:x", "port must be a number")

    def test_unsupportedKinds(self):
        """Endpoint kinds other than tcp: are refused by name."""
        for kind in ["unix", "tcp6", "hostname"]:
            error = self.assertRaises(ValueError, parse_master, f"{kind}:host=x:port=1")
            self.assertIn(f"{kind}: endpoints are not supported", str(error))

    def test_tlsNeedsNoKind(self):
        """ssl: and tls: are refused with the reason: a token brings TLS by itself."""
        for kind in ["ssl", "tls", "SSL"]:
            error = self.assertRaises(ValueError, parse_master, f"{kind}:host=x:port=1")
            self.assertIn(f"{kind}: is not needed: the master is reached over TLS whenever a token"
                          " is given", str(error))


class SettingTests(unittest.TestCase):
    """
    The value parsers behind the settings.
    """

    def test_seconds(self):
        """seconds accepts positive finite numbers only."""
        self.assertEqual(config.seconds("0.25"), 0.25)
        self.assertEqual(config.seconds(" 3 "), 3.0)
        for text in ["0", "-0.1", "nan", "-inf", "inf", "1e999", "five", ""]:
            self.assertRaises(ValueError, config.seconds, text)

    def test_frameSizeMessage(self):
        """frame_size says what it expected and which bounds apply."""
        self.assertIn("such as 1048576 or 1M", str(self.assertRaises(
            ValueError, config.frame_size, "big")))
        self.assertIn(str(config.SMALLEST_MAX_FRAME), str(self.assertRaises(
            ValueError, config.frame_size, "1")))

    def test_usageShowsDefaults(self):
        """--help text of each side shows the defaults it will use."""
        # Help text wraps where it likes: compare it with spaces squeezed.
        master_help = " ".join(str(master_tap.Options()).split())
        self.assertIn("[default: tcp:12345]", master_help)
        self.assertIn("[default: tcp:8080:interface=127.0.0.1]", master_help)
        self.assertIn("--config=", master_help)
        slave_help = " ".join(str(slave_tap.Options()).split())
        self.assertIn("[default: tcp:host=127.0.0.1:port=12345]", slave_help)
        self.assertIn("[default: 10.0]", slave_help)


class PluginTests(unittest.TestCase):
    """
    twistd finds C{picluster-master} and C{picluster-slave}.
    """

    def test_getPlugins(self):
        """getPlugins(IServiceMaker) finds both tapnames, backed by the tap modules."""
        makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker)}
        self.assertIn("picluster-master", makers)
        self.assertIn("picluster-slave", makers)
        self.assertIs(makers["picluster-master"].options, master_tap.Options)
        self.assertIs(makers["picluster-master"].makeService, master_tap.makeService)
        self.assertIs(makers["picluster-slave"].options, slave_tap.Options)
        self.assertIs(makers["picluster-slave"].makeService, slave_tap.makeService)

    def test_checkoutPluginFile(self):
        """The checkout's plugin file declares both service makers."""
        path = os.path.join(REPO_ROOT, "twisted", "plugins", "picluster_plugin.py")
        spec = importlib.util.spec_from_file_location("_checkout_picluster_plugin", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        makers = {
            maker.tapname: maker for maker in vars(module).values()
            if IServiceMaker.providedBy(maker) and IPlugin.providedBy(maker)
        }
        self.assertEqual(sorted(makers), ["picluster-master", "picluster-slave"])
        self.assertIs(makers["picluster-master"].options, master_tap.Options)
        self.assertIs(makers["picluster-slave"].options, slave_tap.Options)

    def test_pluginPackaging(self):
        """twisted/plugins has no __init__.py and setup.cfg ships it."""
        self.assertFalse(os.path.exists(os.path.join(REPO_ROOT, "twisted", "__init__.py")))
        self.assertFalse(
            os.path.exists(os.path.join(REPO_ROOT, "twisted", "plugins", "__init__.py"))
        )
        setup = configparser.ConfigParser(interpolation=None)
        setup.read(os.path.join(REPO_ROOT, "setup.cfg"), encoding="utf-8")
        self.assertIn("twisted.plugins", setup["options"]["packages"].split())
        self.assertIn("picluster.tap", setup["options"]["packages"].split())
        self.assertIn("picluster_plugin.py", setup["options.package_data"]["twisted.plugins"])
