"""
Helpers for the tests that touch the file system or run real processes.

L{temp_path} hands out C{mktemp} paths that are removed after the test, so
that a pytest run (whose cwd is the checkout) leaves nothing behind.  The
rest runs real C{twistd} processes for the end-to-end tests: every wait is
bounded and polled from the reactor, every child is killed in cleanup, and a
failure message carries the children's logs.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from picluster.address import MasterAddress
from picluster.client import Client
from picluster.trust.cluster import ClusterTrust
from picluster.wire.errors import DisconnectionException, RequestTimeout

#: The checkout under test: put on the children's C{PYTHONPATH}.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: The longest any single wait for a process may take.
WAIT = 20.0

#: Seconds between two looks at what is being waited for.
POLL = 0.1

#: How twistd ends after a clean shutdown on SIGTERM: it re-raises the signal
#: on itself, so that whoever started it sees why it stopped.
ENDED_BY_SIGTERM = -signal.SIGTERM


def temp_path(case: unittest.TestCase) -> str:
    """An absolute C{case.mktemp()} path whose whole tree goes at cleanup."""
    relative = case.mktemp()
    top = os.path.abspath(relative.split(os.sep, 1)[0])
    case.addCleanup(shutil.rmtree, top, True)
    return os.path.abspath(relative)


def temp_dir(case: unittest.TestCase) -> str:
    """A fresh empty directory, removed at cleanup."""
    path = temp_path(case)
    os.mkdir(path)
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def twistd_command() -> list[str]:
    """
    How to run this interpreter's C{twistd}.

    Not C{python -m twisted}: that runs C{twist}, which has no C{-n},
    C{--pidfile} or C{--logfile}.
    """
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.isfile(script):
        return [sys.executable, script]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def child_env(checkout: bool = True) -> dict[str, str]:
    """
    The environment of a child: the checkout first on its path, or (with
    C{checkout=False}) no C{PYTHONPATH} at all, so only installed code is seen.
    """
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env["PYTHONUNBUFFERED"] = "1"
    if checkout:
        env["PYTHONPATH"] = REPO_ROOT
    return env


def sleep(seconds: float) -> defer.Deferred[None]:
    return task.deferLater(reactor, seconds, lambda: None)


class Child:
    """
    One child process with its stdout and stderr in files under C{cwd}.

    It is killed (SIGKILL) at the test's cleanup if it is still running.
    """

    def __init__(
        self,
        case: unittest.TestCase,
        name: str,
        argv: list[str],
        *,
        cwd: str,
        env: dict[str, str],
    ):
        self.name = name
        self.argv = argv
        self.stdout_path = os.path.join(cwd, f"{name}.stdout")
        self.stderr_path = os.path.join(cwd, f"{name}.stderr")
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=cwd, env=env
            )
        case.addCleanup(self.kill)

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stdout(self) -> str:
        with open(self.stdout_path, encoding="utf-8", errors="replace") as out:
            return out.read()

    def stderr(self) -> str:
        with open(self.stderr_path, encoding="utf-8", errors="replace") as err:
            return err.read()

    def output(self) -> str:
        return self.stdout() + self.stderr()

    def report(self) -> str:
        """Everything known about the child, for a failure message."""
        state = "running" if self.running else f"exited with {self.process.returncode}"
        return (
            f"--- {self.name} ({state}): {' '.join(self.argv)}\n"
            f"--- stdout:\n{self.stdout()}--- stderr:\n{self.stderr()}"
        )

    def signal(self, number: int) -> None:
        if self.running:
            self.process.send_signal(number)

    def kill(self) -> None:
        if self.running:
            self.process.kill()
        self.process.wait()

    def wait_for_exit(
        self, timeout: float = WAIT, report: Callable[[], str] | None = None
    ) -> defer.Deferred[int]:
        """Fire with the exit status (negative: killed by that signal)."""
        return wait_until(
            lambda: self.process.poll() is not None,
            f"{self.name} to exit",
            report or self.report,
            timeout,
        ).addCallback(lambda _: self.process.returncode)


def wait_until(
    check: Callable[[], Any],
    what: str,
    report: Callable[[], str] = str,
    timeout: float = WAIT,
    poll: float = POLL,
) -> defer.Deferred[Any]:
    """
    Poll C{check} (which may return a Deferred) until its result is true.

    @return: A Deferred firing with that result, or failing the test with
        C{what} and C{report()} after C{timeout} seconds.
    """
    deadline = reactor.seconds() + timeout

    @defer.inlineCallbacks
    def poll_until_true() -> Any:
        while True:
            result = yield defer.maybeDeferred(check)
            if result:
                return result
            if reactor.seconds() >= deadline:
                raise unittest.FailTest(
                    f"Gave up after {timeout:g} s waiting for {what}\n{report()}"
                )
            yield sleep(poll)

    return poll_until_true()


class Cluster:
    """
    Real C{twistd -n picluster-*} processes of one test, in one temp dir,
    running the checkout's code.
    """

    def __init__(self, case: unittest.TestCase):
        self.case = case
        self.cwd = temp_dir(case)
        self.port = free_port()
        self.children: list[Child] = []
        #: Whether the master runs in plain mode (C{--insecure}).
        self.insecure = False
        # The cluster's trust, made as the master would on its first start:
        # the tokens are known before any process starts.
        self.state_dir = os.path.join(self.cwd, "state")
        self.trust = ClusterTrust.open(self.state_dir)
        self.slave_token_file = os.path.join(self.cwd, "slave.token")
        with open(self.slave_token_file, "w", encoding="utf-8") as out:
            out.write(f"{self.trust.token('slave')}\n")

    def twistd(self, name: str, *arguments: str, checkout: bool = True,
               env: dict[str, str] | None = None) -> Child:
        """A C{twistd -n} child, with C{env} added to its environment."""
        argv = [*twistd_command(), "-n", "--pidfile=", "--logfile=-", *arguments]
        child = Child(self.case, name, argv, cwd=self.cwd, env={**child_env(checkout), **(env or {})})
        self.children.append(child)
        return child

    def master(self, name: str = "master", *arguments: str, env: dict[str, str] | None = None) -> Child:
        """
        A master on 127.0.0.1:C{self.port}, pinging every second; without a
        web server unless C{arguments} ask for one (its default port is
        one for the whole machine, and tests run side by side).
        """
        web = () if "--web" in arguments else ("--web", "none")
        self.insecure = "--insecure" in arguments
        state = () if self.insecure or "--state-dir" in arguments else ("--state-dir", self.state_dir)
        return self.twistd(
            name, "picluster-master", "--port", f"tcp:{self.port}:interface=127.0.0.1",
            "--keepalive", "1", *web, *state, *arguments, env=env,
        )

    def slave(self, name: str = "slave", *arguments: str) -> Child:
        """A slave of L{master} that retries and reports quickly."""
        plain = {"--insecure", "--token", "--token-file", "--config"} & set(arguments)
        token = () if plain else ("--token-file", self.slave_token_file)
        if "--state-dir" not in arguments:
            # Each slave its own identity, as each Pi has.
            token += ("--state-dir", os.path.join(self.cwd, f"{name}-state"))
        return self.twistd(
            name, "picluster-slave", "--master", f"127.0.0.1:{self.port}", "--keepalive", "1",
            "--initial-delay", "0.2", "--max-delay", "1", "--vitals", "1", *token, *arguments,
        )

    def client(self, **settings: Any) -> Client:
        """A client of L{master}, holding the client token unless it is plain."""
        token = None if self.insecure else self.trust.token("client")
        return Client(MasterAddress("127.0.0.1", self.port), token=token,
                      insecure=self.insecure, **settings)

    def report(self) -> str:
        return "\n".join(child.report() for child in self.children)

    def wait_until(self, check: Callable[[], Any], what: str) -> defer.Deferred[Any]:
        return wait_until(check, what, self.report)

    def wait_for_log(self, child: Child, text: str) -> defer.Deferred[Any]:
        return self.wait_until(lambda: text in child.output(), f"{text!r} in {child.name}'s log")

    @defer.inlineCallbacks
    def slave_details(self) -> Any:
        """
        The master's C{slave_details} for real slaves, or C{None} when the
        master cannot be asked right now.

        The query connection is itself listed by the master (with no machine
        facts); it is left out.
        """
        client = self.client(reconnect=False)
        try:
            yield client.connect()
        except DisconnectionException:
            return None
        try:
            reply = yield client.connection.request("info", "slave_details", timeout=5.0)
        except (DisconnectionException, RequestTimeout):
            return None
        finally:
            yield client.close()
        return [slave for slave in reply.payload if slave["computer_details"] is not None]

    @defer.inlineCallbacks
    def wait_for_slaves(self, what: str, accept: Callable[[list[dict]], bool]) -> Any:
        """Poll the master until C{accept} likes its list of real slaves."""

        @defer.inlineCallbacks
        def check() -> Any:
            slaves = yield self.slave_details()
            # A one-item list, so that an accepted empty list counts as true.
            return [slaves] if slaves is not None and accept(slaves) else None

        [slaves] = yield self.wait_until(check, what)
        return slaves

