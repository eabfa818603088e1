"""
The processes of a benchmark: masters, baselines and load generators.

Everything runs as a child of the invocation (so a whole run shares one
machine state), with its output in files of the run's own folder, and every
child is killed when the L{Processes} block ends, whatever happened.  Waits
are bounded: a benchmark that cannot get going says what it waited for and
shows the child's output, rather than hang.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import psutil

#: The checkout: children find C{bench} (and this checkout's picluster) here.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: The longest any one wait for a child may take, in seconds.
WAIT = 60.0


class BenchError(Exception):
    """A benchmark could not run (a child failed, a wait ran out)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def raise_file_limit(wanted: int) -> int:
    """
    Raise this process's open-file limit towards C{wanted} (children inherit
    it); return the limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft
    return target


def twistd_command() -> list[str]:
    """This interpreter's C{twistd} (C{python -m twisted} would be C{twist})."""
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.isfile(script):
        return [sys.executable, script]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT
    env["PYTHONUNBUFFERED"] = "1"
    return env


def wait_until(check: Callable[[], Any], what: str, timeout: float = WAIT,
               poll: float = 0.05, report: Callable[[], str] = str) -> Any:
    """Poll C{check} until it returns something true; return that."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise BenchError(f"gave up after {timeout:g} s waiting for {what}\n{report()}")
        time.sleep(poll)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class Child:
    """One child process, its output in C{NAME.out} of the run's folder."""

    def __init__(self, name: str, argv: list[str], cwd: str, env: dict[str, str] | None = None):
        self.name = name
        self.argv = argv
        self.output_path = os.path.join(cwd, f"{name}.out")
        with open(self.output_path, "wb") as out:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=cwd, env=env or child_env(), start_new_session=True,
            )
        self.ps = psutil.Process(self.process.pid)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        with open(self.output_path, encoding="utf-8", errors="replace") as out:
            return out.read()

    def report(self) -> str:
        state = "running" if self.running else f"exited with {self.process.returncode}"
        tail = self.output()[-4000:]
        return f"--- {self.name} ({state}): {' '.join(self.argv)}\n{tail}"

    def rss(self) -> int:
        """Resident memory now, in bytes."""
        return self.ps.memory_info().rss

    def cpu_seconds(self) -> float:
        """User plus system CPU time used so far, in the kernel's clock ticks (10 ms)."""
        times = self.ps.cpu_times()
        return times.user + times.system

    def busy_seconds(self) -> float:
        """
        CPU time of the process's live threads, to the nanosecond: the
        scheduler's own account (C{/proc/PID/task/*/schedstat}), for
        windows in which an idle server spends less than a clock tick.
        Where there is none, L{cpu_seconds}.
        """
        total = 0
        try:
            for task in os.listdir(f"/proc/{self.pid}/task"):
                try:
                    with open(f"/proc/{self.pid}/task/{task}/schedstat", "rb") as stat:
                        total += int(stat.read().split()[0])
                except (FileNotFoundError, ProcessLookupError):
                    continue  # a thread that just ended
        except OSError:
            return self.cpu_seconds()
        return total / 1e9

    def signal(self, number: int) -> None:
        if self.running:
            self.process.send_signal(number)

    def kill(self) -> None:
        """SIGKILL the child and its whole process group (a slave's task
        processes, a Dask cluster's workers) and reap it."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait()

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL if it has not gone in C{timeout} seconds."""
        self.signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.process.returncode

    def wait(self, timeout: float = WAIT) -> int:
        """Wait for it to exit by itself; its exit status."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise BenchError(f"{self.name} did not finish in {timeout:g} s\n{self.report()}") from None

    def wait_for_output(self, text: str, timeout: float = WAIT) -> None:
        def seen() -> bool:
            if text in self.output():
                return True
            if not self.running:
                raise BenchError(f"{self.name} exited before printing {text!r}\n{self.report()}")
            return False

        wait_until(seen, f"{text!r} from {self.name}", timeout, report=self.report)


class Processes:
    """
    The children of one benchmark, in a folder of their own.

    Use as a context manager: on leaving, every child still running is
    killed and the folder removed (kept, and named, when C{keep} is set or
    the block raised).
    """

    def __init__(self, name: str, keep: bool = False):
        self.cwd = tempfile.mkdtemp(prefix=f"picluster-bench-{name}-")
        self.keep = keep
        self.children: list[Child] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> None:
        for child in self.children:
            child.kill()
        if self.keep or kind is not None:
            print(f"(children's output kept in {self.cwd})", file=sys.stderr)
        else:
            shutil.rmtree(self.cwd, ignore_errors=True)

    def path(self, name: str) -> str:
        return os.path.join(self.cwd, name)

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        child = Child(name, argv, self.cwd, env)
        self.children.append(child)
        return child

    def python(self, name: str, module: str, *args: str) -> Child:
        """C{python -m MODULE ARGS}, with the checkout on its path."""
        return self.spawn(name, [sys.executable, "-m", module, *args])

    def twistd(self, name: str, plugin: str, *args: str) -> Child:
        """C{twistd -n PLUGIN ARGS}: a real master or slave, as users run it."""
        argv = [*twistd_command(), "-n", "--pidfile=", "--logfile=-", plugin, *args]
        return self.spawn(name, argv)

    def master(self, name: str, port: int, *args: str, db: str | None = None,
               secure: bool = True, cluster: str | None = None) -> Child:
        """
        A real C{twistd -n picluster-master} on 127.0.0.1:C{port}, without a
        web server unless C{args} ask for one; returns once it listens.

        Secure, as installed, unless C{secure} is false (C{--insecure}): its
        state directory and the token files of its credentials are made
        first, named by L{token_file}: those of C{cluster}, the name of an
        earlier master whose state it takes over (a restart), or its own.
        """
        web = () if "--web" in args else ("--web", "none")
        database = db if db is not None else self.path(f"{name}.db")
        mode = ("--state-dir", self.cluster(cluster or name)) if secure else ("--insecure",)
        child = self.twistd(
            name, "picluster-master", "--port", f"tcp:{port}:interface=127.0.0.1",
            "--db", database, *mode, *web, *args,
        )
        wait_until(lambda: port_open(port) or _exited(child), f"{name} to listen on {port}",
                   report=child.report)
        if not child.running:
            raise BenchError(f"{name} did not start\n{child.report()}")
        return child

    def cluster(self, master: str) -> str:
        """
        The state directory of the master called C{master}, made as its
        first start would, with a token file per credential beside it.
        """
        from picluster.trust.cluster import ClusterTrust
        from picluster.trust.token import CREDENTIALS

        state_dir = self.path(f"{master}-state")
        if not os.path.isdir(state_dir):
            trust = ClusterTrust.open(state_dir)
            for credential in CREDENTIALS:
                with open(self.token_file(master, credential), "w", encoding="utf-8") as out:
                    out.write(f"{trust.token(credential)}\n")
        return state_dir

    def token_file(self, master: str, credential: str) -> str:
        """Where the token of C{credential} for the master called C{master} is."""
        return self.path(f"{master}-{credential}.token")

    def slave(self, name: str, port: int, *args: str, master: str | None = "master") -> Child:
        """
        A real C{twistd -n picluster-slave} of the master on C{port}: with the
        slave token of the master called C{master}, or plain for C{None}.
        """
        token = (("--token-file", self.token_file(master, "slave"),
                  "--state-dir", self.path(f"{name}-state")) if master is not None
                 else ("--insecure",))
        return self.twistd(name, "picluster-slave", "--master", f"127.0.0.1:{port}", *token,
                           *args)


def _exited(child: Child) -> bool:
    return not child.running
