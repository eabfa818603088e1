"""
The systemd units of C{contrib/systemd}: systemd accepts every file, the
picluster option parser accepts every command line they run, and a master
really serves slaves and its dashboard on sockets handed over the way systemd
hands them (C{systemd-socket-activate}, since there is no systemd PID 1 here).

A unit is read as systemd reads it, as far as these tests need: sections,
continuation lines, C{Environment=}, an C{EnvironmentFile=} (the shipped
C{*.default} example), drop-ins, and C{ExecStart=} with C{$VAR} split into
words.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
from typing import Any

from treq.client import HTTPClient
from twisted.internet import defer, endpoints, reactor, utils
from twisted.python import usage
from twisted.python.systemd import ListenFDs
from twisted.scripts.twistd import ServerOptions
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool

from picluster.tap import master as master_tap
from picluster.tap import slave as slave_tap
from picluster.tasks.builtin import ADMIN_COMMANDS
from picluster.trust.cluster import ClusterTrust
from tests.processes import (
    REPO_ROOT,
    WAIT,
    Child,
    Cluster,
    child_env,
    free_port,
    temp_dir,
    twistd_command,
)

CONTRIB = os.path.join(REPO_ROOT, "contrib", "systemd")

#: Where the units expect picluster's virtual environment (docs/operating.rst says
#: how to change it).
TWISTD = "/opt/picluster/bin/twistd"

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")
SYSUSERS = shutil.which("systemd-sysusers")
VISUDO = shutil.which("visudo") or next(
    (path for path in ("/usr/sbin/visudo", "/sbin/visudo") if os.access(path, os.X_OK)), None
)


def contrib(name: str) -> str:
    return os.path.join(CONTRIB, name)


def unit_files() -> list[str]:
    """The names of every unit shipped (not the drop-ins)."""
    return sorted(
        os.path.basename(path)
        for pattern in ("*.service", "*.socket")
        for path in glob.glob(contrib(pattern))
    )


def drop_ins(unit: str) -> list[str]:
    """The drop-in files shipped for C{unit}, in the order systemd applies them."""
    return sorted(glob.glob(contrib(f"{unit}.d/*.conf")))


def read_unit(*paths: str) -> list[tuple[str, str, str]]:
    """
    Every C{(section, key, value)} of a unit and its drop-ins, in order,
    with continuation lines joined and comments dropped.
    """
    settings = []
    for path in paths:
        section = ""
        with open(path, encoding="utf-8") as unit:
            lines = iter(unit.read().splitlines())
        for line in lines:
            line = line.strip()
            while line.endswith("\\"):
                line = line[:-1] + " " + next(lines, "").strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("["):
                section = line.strip("[]")
                continue
            key, _, value = line.partition("=")
            settings.append((section, key.strip(), value.strip()))
    return settings


def values(settings: list[tuple[str, str, str]], section: str, key: str) -> list[str]:
    """The values of one key, an empty assignment clearing those before it, as systemd does."""
    found: list[str] = []
    for where, name, value in settings:
        if (where, name) == (section, key):
            found = found + [value] if value else []
    return found


def read_environment_file(path: str) -> dict[str, str]:
    """The C{KEY=VALUE} lines of an C{EnvironmentFile=}, quotes removed."""
    environment = {}
    with open(path, encoding="utf-8") as file:
        for line in file:
            line = line.strip()
            if line and not line.startswith("#"):
                key, _, value = line.partition("=")
                environment[key.strip()] = " ".join(shlex.split(value))
    return environment


def environment_of(settings: list[tuple[str, str, str]], default_file: str) -> dict[str, str]:
    """C{Environment=} assignments, then the shipped example of the C{EnvironmentFile=}."""
    environment = {}
    for assignments in values(settings, "Service", "Environment"):
        for assignment in shlex.split(assignments):
            key, _, value = assignment.partition("=")
            environment[key] = value
    environment.update(read_environment_file(default_file))
    return environment


def command_line(settings: list[tuple[str, str, str]], environment: dict[str, str]) -> list[str]:
    """
    The argv of the one C{ExecStart=} in effect: C{$VAR} becomes the words
    of its value (none when empty), C{${VAR}} one word.
    """
    [command] = values(settings, "Service", "ExecStart")
    argv = []
    for word in shlex.split(command.lstrip("-@:+!")):
        bare = re.fullmatch(r"\$(\w+)", word)
        if bare:
            argv.extend(environment.get(bare.group(1), "").split())
        else:
            argv.append(re.sub(r"\$\{(\w+)\}", lambda m: environment.get(m.group(1), ""), word))
    return argv


#: Where the shipped slave unit reads its join token.
UNIT_TOKEN_FILE = "/etc/picluster/slave.token"


def parse_twistd(argv: list[str]) -> ServerOptions:
    """Parse a twistd command line with twistd's own parser, plugin options included."""
    options = ServerOptions()
    options.parseOptions(argv[1:])
    return options


def socket_families(socket_unit: str) -> list[str]:
    """
    The address family of each C{ListenStream=} of a socket unit, in the
    order the service is handed them, as the C{domain=} of Twisted's
    C{systemd:} endpoint names it.
    """
    families = []
    for address in values(read_unit(contrib(socket_unit)), "Socket", "ListenStream"):
        if address.startswith(("/", "@")):
            families.append("UNIX")
        elif re.fullmatch(r"\d+", address) or address.startswith("["):
            # A bare port is an IPv6 socket that takes IPv4 too.
            families.append("INET6")
        else:
            families.append("INET")
    return families


def systemd_endpoints(argv: list[str]) -> list[tuple[str, int]]:
    """The C{(domain, index)} of every C{systemd:} endpoint on a command line."""
    found = []
    for word in argv:
        match = re.fullmatch(r"systemd:domain=(\w+):index=(\d+)", word)
        if match:
            found.append((match.group(1), int(match.group(2))))
    return found


def run(executable: str, *arguments: str) -> defer.Deferred[tuple[bytes, bytes, int]]:
    """Run a tool to its end (bounded), firing with its stdout, stderr and status."""
    return utils.getProcessOutputAndValue(
        executable, arguments, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    ).addTimeout(WAIT, reactor)


class UnitCommandLineTests(unittest.TestCase):
    """
    Every command line the units run is accepted by twistd and the real
    picluster option parser, as the service would start it.
    """

    def master_argv(self, *extra_units: str) -> list[str]:
        settings = read_unit(contrib("picluster-master.service"), *extra_units)
        return command_line(settings, environment_of(settings, contrib("picluster-master.default")))

    def slave_argv(self, *extra_units: str) -> list[str]:
        settings = read_unit(contrib("picluster-slave.service"), *extra_units)
        argv = command_line(settings, environment_of(settings, contrib("picluster-slave.default")))
        return self.with_test_token(argv)

    def with_test_token(self, argv: list[str]) -> list[str]:
        """C{argv} with the unit's token file swapped for one this test made."""
        token_file = os.path.join(temp_dir(self), "slave.token")
        if not os.path.exists(token_file):
            trust = ClusterTrust.open(os.path.join(temp_dir(self), "state"))
            with open(token_file, "w", encoding="utf-8") as out:
                out.write(f"{trust.token('slave')}\n")
        unit_file = f"--token-file={UNIT_TOKEN_FILE}"
        self.assertIn(unit_file, argv)
        return [f"--token-file={token_file}" if word == unit_file else word for word in argv]

    def test_everyUnitRunsTheVenvTwistd(self):
        """Every ExecStart, drop-ins too, runs the venv's twistd in the foreground, no pid file."""
        for unit in ("picluster-master.service", "picluster-slave.service"):
            for extra in [[], *([path] for path in drop_ins(unit))]:
                settings = read_unit(contrib(unit), *extra)
                argv = command_line(settings, {})
                self.assertEqual(argv[:3], [TWISTD, "--nodaemon", "--pidfile="], (unit, extra))

    def test_masterService(self):
        """picluster-master.service runs a master on the state directory's database."""
        options = parse_twistd(self.master_argv())
        self.assertEqual(options.subCommand, "picluster-master")
        self.assertIsInstance(options.subOptions, master_tap.Options)
        self.assertEqual(options.subOptions["db"], "/var/lib/picluster/picluster.db")
        self.assertEqual(options.subOptions["port"], "tcp:12345")
        self.assertTrue(options["nodaemon"])
        self.assertEqual(options["pidfile"], "")

    def test_socketActivatedMaster(self):
        """The socket drop-in's master takes each socket of the socket unit, by index and family."""
        [drop_in] = drop_ins("picluster-master.service")
        argv = self.master_argv(drop_in)
        families = socket_families("picluster-master.socket")
        # What systemd hands over: one descriptor per ListenStream, all named
        # after the socket unit.
        handed_over = ListenFDs(
            list(range(3, 3 + len(families))), ("picluster-master.socket",) * len(families)
        )
        # Twisted reads LISTEN_FDS once, at import, into this class attribute.
        self.patch(endpoints._SystemdParser, "_sddaemon", handed_over)
        options = parse_twistd(argv)
        self.assertEqual(options.subOptions["port"], "systemd:domain=INET:index=0")
        self.assertEqual(options.subOptions["web"], "systemd:domain=INET:index=1")
        used = systemd_endpoints(argv)
        self.assertEqual(sorted(index for _, index in used), list(range(len(families))))
        for domain, index in used:
            self.assertEqual(domain, families[index], f"index={index}")

    def test_socketActivationBindsTheSocket(self):
        """The socket drop-in makes the master need its socket unit and start after it."""
        [drop_in] = drop_ins("picluster-master.service")
        settings = read_unit(drop_in)
        self.assertEqual(values(settings, "Unit", "Requires"), ["picluster-master.socket"])
        self.assertEqual(values(settings, "Unit", "After"), ["picluster-master.socket"])
        socket_unit = read_unit(contrib("picluster-master.socket"))
        self.assertEqual(values(socket_unit, "Socket", "Service"), ["picluster-master.service"])

    def test_slaveService(self):
        """picluster-slave.service runs a slave that refuses the admin tasks."""
        options = parse_twistd(self.slave_argv())
        self.assertEqual(options.subCommand, "picluster-slave")
        self.assertIsInstance(options.subOptions, slave_tap.Options)
        self.assertFalse(options.subOptions["allow-admin"])

    def test_adminSlave(self):
        """The allow-admin drop-in runs the slave with --allow-admin."""
        [drop_in] = drop_ins("picluster-slave.service")
        options = parse_twistd(self.slave_argv(drop_in))
        self.assertTrue(options.subOptions["allow-admin"])

    def test_defaultFileExamples(self):
        """Every commented example in the /etc/default files is a valid option list."""
        config = os.path.join(temp_dir(self), "picluster.cfg")
        with open(config, "w", encoding="utf-8") as file:
            file.write("[master]\n[slave]\n")
        for side in ("master", "slave"):
            default_file = contrib(f"picluster-{side}.default")
            settings = read_unit(contrib(f"picluster-{side}.service"))
            variable = f"PICLUSTER_{side.upper()}_OPTS"
            with open(default_file, encoding="utf-8") as file:
                examples = re.findall(rf"^#{variable}=(.*)$", file.read(), re.MULTILINE)
            self.assertTrue(examples, default_file)
            for example in examples:
                words = " ".join(shlex.split(example)).split()
                value = " ".join(config if word == "/etc/picluster.cfg" else word for word in words)
                environment = {variable: value}
                if side == "slave":
                    environment["PICLUSTER_SLAVE_TOKEN"] = f"--token-file={UNIT_TOKEN_FILE}"
                argv = command_line(settings, environment)
                options = parse_twistd(self.with_test_token(argv) if side == "slave" else argv)
                self.assertEqual(options.subCommand, f"picluster-{side}", example)

    def test_aTypoFails(self):
        """A misspelt option in a unit's command line is refused (the checks above can fail)."""
        argv = self.master_argv() + ["--keepaliev", "5"]
        self.assertRaises(usage.UsageError, parse_twistd, argv)


class SystemdAcceptsUnitsTests(unittest.TestCase):
    """
    C{systemd-analyze verify} and C{systemd-sysusers} accept the shipped
    files, checked in a throwaway root so that nothing is installed here.
    """

    def setUp(self):
        if SYSTEMD_ANALYZE is None:
            raise unittest.SkipTest("systemd-analyze is not installed (Debian package systemd)")

    def make_root(self, with_drop_ins: bool) -> str:
        """
        A root holding the units in /etc/systemd/system, a stand-in twistd
        (verify checks that ExecStart is executable) and the one target that
        verify needs from the system (it adds sysinit.target to every unit).
        """
        root = temp_dir(self)
        units = os.path.join(root, "etc", "systemd", "system")
        os.makedirs(units)
        for name in unit_files():
            shutil.copy(contrib(name), units)
            if with_drop_ins and os.path.isdir(contrib(f"{name}.d")):
                shutil.copytree(contrib(f"{name}.d"), os.path.join(units, f"{name}.d"))
        system_units = os.path.join(root, "usr", "lib", "systemd", "system")
        os.makedirs(system_units)
        with open(os.path.join(system_units, "sysinit.target"), "w", encoding="utf-8") as target:
            target.write("[Unit]\nDescription=System Initialization\n")
        twistd = os.path.join(root, TWISTD.lstrip("/"))
        os.makedirs(os.path.dirname(twistd))
        with open(twistd, "w", encoding="utf-8") as script:
            script.write("#!/bin/sh\n")
        os.chmod(twistd, 0o755)
        return root

    @defer.inlineCallbacks
    def verify(self, with_drop_ins: bool) -> Any:
        root = self.make_root(with_drop_ins)
        out, err, status = yield run(
            SYSTEMD_ANALYZE, "verify", "--man=no", f"--root={root}", *unit_files()
        )
        # An unknown key is only a warning to systemd (status 0): any output fails.
        self.assertEqual((status, out + err), (0, b""), (out + err).decode(errors="replace"))

    def test_unitsVerify(self):
        """systemd-analyze verify finds nothing to say about the units alone."""
        self.assertEqual(len(unit_files()), 3)
        return self.verify(with_drop_ins=False)

    def test_unitsWithDropInsVerify(self):
        """Nor about the units with both drop-ins applied."""
        return self.verify(with_drop_ins=True)

    @defer.inlineCallbacks
    def test_verifyCatchesAMisspeltKey(self):
        """A misspelt key is caught (the checks above can fail)."""
        root = self.make_root(with_drop_ins=False)
        slave_unit = os.path.join(root, "etc", "systemd", "system", "picluster-slave.service")
        with open(slave_unit, "a", encoding="utf-8") as unit:
            unit.write("\n[Service]\nProtectSystme=strict\n")
        out, err, status = yield run(
            SYSTEMD_ANALYZE, "verify", "--man=no", f"--root={root}", "picluster-slave.service"
        )
        self.assertIn(b"ProtectSystme", out + err)

    @defer.inlineCallbacks
    def test_sysusersCreatesTheUser(self):
        """systemd-sysusers makes a system user picluster, in the video group, with no login."""
        if SYSUSERS is None:
            raise unittest.SkipTest("systemd-sysusers is not installed (Debian package systemd)")
        root = temp_dir(self)
        os.mkdir(os.path.join(root, "etc"))
        out, err, status = yield run(
            SYSUSERS, f"--root={root}", contrib("picluster.sysusers.conf")
        )
        self.assertEqual(status, 0, (out + err).decode(errors="replace"))
        [user] = entries(os.path.join(root, "etc", "passwd"), "picluster")
        self.assertLess(int(user[2]), 1000)
        self.assertEqual(user[5], "/var/lib/picluster")
        self.assertTrue(user[6].endswith("nologin"), user)
        [video] = entries(os.path.join(root, "etc", "group"), "video")
        self.assertIn("picluster", video[3].split(","))


def entries(path: str, name: str) -> list[list[str]]:
    """The fields of the lines of an /etc/passwd or /etc/group file for C{name}."""
    with open(path, encoding="utf-8") as file:
        return [line.split(":") for line in file.read().splitlines() if line.split(":")[0] == name]


def sudoers_rules(path: str) -> list[tuple[set[str], list[str]]]:
    """The C{(tags, command words)} of each command a sudoers file allows."""
    rules = []
    with open(path, encoding="utf-8") as file:
        for line in file:
            line = line.strip()
            if not line or line.startswith("#") or line.startswith("Defaults"):
                continue
            match = re.fullmatch(r"picluster\s+ALL=\(root\)\s+((?:[A-Z]+:)+)\s*(.*)", line)
            assert match, f"not a rule for picluster: {line}"
            tags = set(match.group(1).rstrip(":").split(":"))
            for command in re.split(r"(?<!\\),", match.group(2)):
                rules.append((tags, re.sub(r"\\(.)", r"\1", command).split()))
    return rules


def without_sudo(command: list[str]) -> list[str]:
    """An admin command as sudo matches it: no C{sudo -n}, no C{NAME=value} before it."""
    words = command[2:] if command[:2] == ["sudo", "-n"] else command
    while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
        words = words[1:]
    return words


class SudoersTests(unittest.TestCase):
    """
    The sudoers rules for C{--allow-admin} allow exactly what the admin
    tasks run, and sudo accepts the file (a broken file in /etc/sudoers.d
    stops sudo altogether).
    """

    def test_rulesMatchTheAdminTasks(self):
        """Each command of the reboot, shutdown and update tasks has a rule; nothing else does."""
        rules = sudoers_rules(contrib("picluster.sudoers"))
        allowed = sorted([os.path.basename(words[0]), *words[1:]] for _, words in rules)
        needed = sorted(
            without_sudo(command) for commands in ADMIN_COMMANDS.values() for command in commands
        )
        self.assertEqual(allowed, needed)
        for tags, words in rules:
            self.assertTrue(os.path.isabs(words[0]), words)
            # SETENV would let the slave's user set any variable for root.
            self.assertEqual(tags, {"NOPASSWD"}, words)

    def test_onlyTheFrontendIsKept(self):
        """The one variable the update task hands to apt-get is kept for picluster alone."""
        with open(contrib("picluster.sudoers"), encoding="utf-8") as file:
            defaults = [line.strip() for line in file if line.startswith("Defaults")]
        self.assertEqual(defaults, ['Defaults:picluster env_keep += "DEBIAN_FRONTEND"'])
        set_by_update = {word.split("=")[0] for command in ADMIN_COMMANDS["update"]
                         for word in command if re.fullmatch(r"[A-Z_]+=.*", word)}
        self.assertLessEqual(set_by_update, {"DEBIAN_FRONTEND"})

    @defer.inlineCallbacks
    def test_visudoAcceptsTheFile(self):
        """visudo -c parses the sudoers file."""
        if VISUDO is None:
            raise unittest.SkipTest("visudo is not installed (Debian package sudo)")
        out, err, status = yield run(VISUDO, "-c", "-f", contrib("picluster.sudoers"))
        self.assertEqual(status, 0, (out + err).decode(errors="replace"))


def one_slave(slaves: list[dict]) -> bool:
    return len(slaves) == 1


class SocketActivationTests(unittest.TestCase):
    """
    A real master adopts listening sockets handed over by
    C{systemd-socket-activate} (systemd's protocol: C{LISTEN_FDS},
    C{LISTEN_PID}, C{LISTEN_FDNAMES}) and a real slave joins it.

    Twisted only adopts descriptors that come with names, as systemd 227 and
    later always gives them; C{systemd-socket-activate} needs C{--fdname}
    for that.  It starts the master at the first connection, as systemd
    does, passing on only the environment it is told to.
    """

    def setUp(self):
        if SOCKET_ACTIVATE is None:
            raise unittest.SkipTest(
                "systemd-socket-activate is not installed (Debian package systemd)"
            )

    def activated_master(
        self, cluster: Cluster, addresses: list[str], names: list[str], master_argv: list[str]
    ) -> Child:
        """C{systemd-socket-activate} holding C{addresses}, to run twistd with C{master_argv}."""
        env = child_env()
        argv = [SOCKET_ACTIVATE, *(f"--listen={address}" for address in addresses)]
        argv.append(f"--fdname={':'.join(names)}")
        for name in ("PYTHONPATH", "PYTHONUNBUFFERED"):
            if name in env:
                argv += ["-E", name]
        argv += [*twistd_command(), *master_argv]
        master = Child(self, "master", argv, cwd=cluster.cwd, env=env)
        cluster.children.append(master)
        return master

    @defer.inlineCallbacks
    def test_masterAdoptsTheSlavePort(self):
        """A master on --port systemd:domain=INET:index=0 serves a slave on the socket it is handed."""
        cluster = Cluster(self)
        self.activated_master(
            cluster, [f"127.0.0.1:{cluster.port}"], ["slaves"],
            ["-n", "--pidfile=", "picluster-master", "--port", "systemd:domain=INET:index=0",
             "--web", "none", "--db", os.path.join(cluster.cwd, "picluster.db"),
             "--keepalive", "1", "--state-dir", cluster.state_dir],
        )
        slave = cluster.slave("slave")
        [listed] = yield cluster.wait_for_slaves("the slave to join", one_slave)
        self.assertTrue(slave.running, cluster.report())
        self.assertIsNotNone(listed["computer_details"])

    @defer.inlineCallbacks
    def test_shippedSocketUnitAndDropIn(self):
        """
        The drop-in's own command line, on the socket unit's sockets (ports
        swapped for free ones), serves slaves on the first and the dashboard
        on the second.
        """
        cluster = Cluster(self)
        web_port = free_port()
        families = socket_families("picluster-master.socket")
        self.assertEqual(families, ["INET", "INET"])
        [drop_in] = drop_ins("picluster-master.service")
        settings = read_unit(contrib("picluster-master.service"), drop_in)
        # How a user adds options: through PICLUSTER_MASTER_OPTS.
        argv = command_line(settings, {"PICLUSTER_MASTER_OPTS":
                                       f"--keepalive 1 --state-dir {cluster.state_dir}"})
        self.assertEqual(argv[0], TWISTD)
        db = argv.index("--db") + 1
        argv[db] = os.path.join(cluster.cwd, "picluster.db")
        self.activated_master(
            cluster, [f"127.0.0.1:{cluster.port}", f"127.0.0.1:{web_port}"],
            ["picluster-master.socket"] * 2, argv[1:],
        )
        cluster.slave("slave")
        [listed] = yield cluster.wait_for_slaves("the slave to join", one_slave)

        pool = HTTPConnectionPool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        http = HTTPClient(Agent(reactor, pool=pool))
        url = f"http://127.0.0.1:{web_port}/api/slaves"
        response = yield http.get(url).addTimeout(WAIT, reactor)
        self.assertEqual(response.code, 200, cluster.report())
        answer = yield response.json()
        self.assertEqual([slave["uuid"] for slave in answer["slaves"]], [listed["uuid"]])
