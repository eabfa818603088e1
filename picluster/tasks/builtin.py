"""
The tasks every slave offers, with or without package metadata.

Harmless ones (an echo, the time, the code revision, a sleep, counting
primes) always run.  C{shell} runs only commands on the slave's allow-list, and the admin
tasks (C{reboot}, C{shutdown}, C{update}) only on a slave started with
C{--allow-admin}: the master is not trusted with the node unless its owner
says so.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from datetime import datetime
from typing import Any

from twisted.internet import defer
from twisted.internet import task as _task
from twisted.logger import Logger
from twisted.python.failure import Failure

import picluster
from picluster.tasks.catalog import Node, ProcessResult, Task, node_bound
from picluster.tasks.errors import BadArguments, CommandFailed, NotPermitted, admin_refusal
from picluster.tasks.primes import primes
from picluster.timebase import wall_time

log = Logger()

_AS_ROOT: list[str] = [] if os.geteuid() == 0 else ["sudo", "-n"]

#: What the admin tasks run, in order (prefixed with C{sudo -n} unless the
#: slave runs as root).  L{TaskRunner} takes this as a parameter only so that
#: tests can substitute harmless commands: do not change it otherwise.
ADMIN_COMMANDS: dict[str, list[list[str]]] = {
    "reboot": [_AS_ROOT + ["systemctl", "reboot"]],
    "shutdown": [_AS_ROOT + ["systemctl", "poweroff"]],
    "update": [
        _AS_ROOT + ["apt-get", "update"],
        # sudo resets the environment, so the frontend is set through it too.
        _AS_ROOT + (["DEBIAN_FRONTEND=noninteractive"] if _AS_ROOT else []) + [
            "apt-get", "-y", "-o", "Dpkg::Options::=--force-confdef",
            "-o", "Dpkg::Options::=--force-confold", "upgrade",
        ],
    ],
}

#: Seconds between answering a reboot or shutdown and doing it: long enough for
#: the result to reach the master, which would otherwise see the run lost,
#: re-queue it, and reboot the node again.
POWER_DELAY = 5

#: Seconds a node must have been up before it reboots again.
REBOOT_MIN_UPTIME = 600.0

#: How much of each output stream C{shell} returns.
SHELL_OUTPUT_LIMIT = 64 * 1024

#: How much of each output stream C{update} returns (the tail).
UPDATE_TAIL = 4 * 1024


# -- echo, node_time, codebase_revision, sleep --------------------------------


def echo(**args: Any) -> dict[str, Any]:
    """Answer with the arguments given: a check that a node's task path works."""
    return args


def node_time() -> dict[str, Any]:
    """The node's clock: Unix time, ISO-8601 with offset, and time zone name."""
    now = datetime.now().astimezone()
    return {"time": now.timestamp(), "iso": now.isoformat(), "timezone": _timezone_name(now)}


def _timezone_name(now: datetime) -> str:
    # An IANA name ("Europe/Berlin") says more than an abbreviation ("CET").
    if os.environ.get("TZ"):
        return os.environ["TZ"].lstrip(":")
    try:
        target = os.path.realpath("/etc/localtime")
    except OSError:
        target = ""
    if "zoneinfo/" in target:
        return target.split("zoneinfo/", 1)[1]
    return now.tzname() or "UTC"


def codebase_revision() -> dict[str, Any]:
    """The picluster version this slave runs, where from, and its git revision."""
    path = os.path.dirname(os.path.abspath(picluster.__file__))
    revision = revision_time = None
    # Only when the package itself is tracked: a venv inside some other
    # checkout must not report that checkout's revision.
    if _git(path, "ls-files", "--error-unmatch", "--", "__init__.py") is not None:
        revision = _git(path, "rev-parse", "HEAD")
        revision_time = revision and _git(path, "log", "-1", "--format=%cI")
    return {
        "version": picluster.__version__,
        "path": path,
        "revision": revision,
        "revision_time": revision_time,
    }


def _git(path: str, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", path, *args], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    output = done.stdout.strip()
    return output if done.returncode == 0 and output else None


@node_bound()
def sleep(node: Node, seconds: float) -> defer.Deferred[dict[str, float]]:
    """Wait on the slave's clock and answer (a demo that can be cancelled)."""
    if type(seconds) not in (int, float) or seconds < 0:
        raise BadArguments(f"sleep: seconds must be a number >= 0, not {seconds!r}")
    return _task.deferLater(node.clock, seconds, lambda: {"slept": seconds})


# -- shell ---------------------------------------------------------------------


#: In an allow-list entry: any one word here; any words from here on (last only).
ANY_WORD = "*"
ANY_WORDS = "..."


def parse_allowed_command(entry: str) -> list[str]:
    """
    The words of one C{--allow-shell} entry.

    @raise ValueError: it is empty, cannot be split, starts with a wildcard,
        or has C{...} before its end.
    """
    try:
        words = shlex.split(entry)
    except ValueError as e:
        raise ValueError(f"cannot split {entry!r}: {e}") from None
    if not words:
        raise ValueError("an allowed command cannot be empty")
    if words[0] in (ANY_WORD, ANY_WORDS):
        raise ValueError(f"{entry!r}: the command itself must be named, not {words[0]!r}")
    if ANY_WORDS in words[:-1]:
        raise ValueError(f"{entry!r}: {ANY_WORDS!r} may only end an entry")
    return words


def command_matches(entry: str, argv: list[str]) -> bool:
    """
    Whether C{argv} is allowed by the allow-list C{entry}: the same words in
    the same order, where a C{*} word allows any one word and a final C{...}
    any number of further words.  C{vcgencmd measure_temp} allows exactly
    that; C{vcgencmd measure_clock *} one more word of any kind;
    C{journalctl -u picluster-slave ...} any arguments after those.
    """
    words = parse_allowed_command(entry)
    if words[-1] == ANY_WORDS:
        words = words[:-1]
        if len(argv) < len(words):
            return False
        argv = argv[: len(words)]
    elif len(argv) != len(words):
        return False
    return all(word == ANY_WORD or word == given for word, given in zip(words, argv))


def _shell_refusal(node: Node) -> str | None:
    if not node.allowed_commands:
        return "shell is refused: this slave allows no commands"
    return None


@node_bound(_shell_refusal)
def shell(node: Node, command: list[str] | str) -> defer.Deferred[dict[str, Any]]:
    """
    Run one allowed command (no shell) and return its exit code and output.

    C{command} is an argv list, or a string split as a POSIX shell would
    (C{shlex.split}) though no shell runs it.  It must match an entry of the
    slave's allow-list (L{command_matches}) word for word: allowing
    C{uptime} allows C{uptime} alone, neither C{uptime -p} nor
    C{/usr/bin/uptime}.
    """
    if isinstance(command, str):
        try:
            argv = shlex.split(command)
        except ValueError as e:
            raise BadArguments(f"shell: cannot split the command: {e}") from None
    elif isinstance(command, list) and all(isinstance(word, str) for word in command):
        argv = list(command)
    else:
        raise BadArguments("shell: command must be a list of strings or a string")
    if not argv:
        raise BadArguments("shell: command is empty")
    refusal = _shell_refusal(node)
    if refusal is not None:
        raise NotPermitted(refusal)
    if not any(command_matches(entry, argv) for entry in node.allowed_commands):
        allowed = "; ".join(sorted(node.allowed_commands))
        raise NotPermitted(
            f"shell is refused: {shlex.join(argv)!r} is not an allowed command (allowed: {allowed})"
        )
    running = node.run_process(argv, env=dict(os.environ), limit=SHELL_OUTPUT_LIMIT)
    return running.addCallback(_shell_outcome)


def _shell_outcome(result: ProcessResult) -> dict[str, Any]:
    stdout = _text(result.stdout, result.stdout_truncated)
    stderr = _text(result.stderr, result.stderr_truncated)
    if result.exit_code != 0:
        raise CommandFailed(_exited("command", result), details=stderr or None)
    return {"exit_code": 0, "stdout": stdout, "stderr": stderr}


def _text(output: bytes, truncated: bool) -> str:
    text = output.decode("utf-8", errors="replace")
    if truncated:
        text += f"\n[... truncated: output exceeded {len(output)} bytes]"
    return text


def _exited(what: str, result: ProcessResult) -> str:
    lines = result.stderr.decode("utf-8", errors="replace").strip().splitlines()
    last = f": {lines[-1]}" if lines else ""
    return f"{what} exited with {result.exit_code}{last}"


# -- admin tasks ------------------------------------------------------------------


def _check_admin(node: Node, name: str) -> list[list[str]]:
    # The runner refuses admin tasks first; this guards direct use of the node.
    if not node.allow_admin:
        raise NotPermitted(admin_refusal(name))
    return [list(argv) for argv in node.admin_commands[name]]


def _power(node: Node, name: str) -> dict[str, Any]:
    commands = _check_admin(node, name)

    def power() -> None:
        for argv in commands:
            log.warn("Running {argv} for the {name} task", argv=argv, name=name)
            running = node.run_process(argv, env=dict(os.environ))
            running.addCallback(_log_power_outcome, argv)
            running.addErrback(_log_power_failure, argv)

    node.clock.callLater(POWER_DELAY, power)
    return {"scheduled": name, "in_seconds": POWER_DELAY}


def _log_power_failure(failure: Failure, argv: list[str]) -> None:
    if not failure.check(defer.CancelledError):  # the slave is stopping
        log.failure("Could not run {argv}", failure, argv=argv)


def _log_power_outcome(result: ProcessResult, argv: list[str]) -> None:
    if result.exit_code != 0:
        log.error("{message}", message=_exited(" ".join(argv), result))


@node_bound()
def reboot(node: Node) -> dict[str, Any]:
    """
    Reboot the node, a few seconds after answering (admin); refused within
    L{REBOOT_MIN_UPTIME} of a boot, so that no master (nor a task queued
    twice) can keep a node rebooting.
    """
    if node.booted_at is not None:
        up = wall_time(node.clock) - node.booted_at
        if up < REBOOT_MIN_UPTIME:
            raise NotPermitted(
                f"reboot is refused: this node booted {max(up, 0):.0f} s ago, and reboots at most"
                f" once per {REBOOT_MIN_UPTIME / 60:g} minutes of uptime"
            )
    return _power(node, "reboot")


@node_bound()
def shutdown(node: Node) -> dict[str, Any]:
    """Power the node off, a few seconds after answering (admin)."""
    return _power(node, "shutdown")


@node_bound()
@defer.inlineCallbacks
def update(node: Node) -> Any:
    """Update the package lists, then upgrade every package (admin)."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    steps = []
    for argv in _check_admin(node, "update"):
        result = yield node.run_process(argv, env=env)
        step = {
            "command": argv,
            "exit_code": result.exit_code,
            "stdout_tail": _tail(result.stdout),
            "stderr_tail": _tail(result.stderr),
        }
        steps.append(step)
        if result.exit_code != 0:
            raise CommandFailed(_exited(" ".join(argv), result), details=step["stderr_tail"])
    return {"steps": steps}


def _tail(output: bytes) -> str:
    return output[-UPDATE_TAIL:].decode("utf-8", errors="replace")


BUILTIN_TASKS: tuple[Task, ...] = (
    Task("echo", echo, "reactor"),
    Task("node_time", node_time, "reactor"),
    Task("codebase_revision", codebase_revision, "thread"),
    Task("sleep", sleep, "reactor"),
    Task("primes", primes, "process"),
    Task("shell", shell, "reactor"),
    Task("reboot", reboot, "reactor", admin=True),
    Task("shutdown", shutdown, "reactor", admin=True),
    Task("update", update, "reactor", admin=True),
)
