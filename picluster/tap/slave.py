"""
C{twistd picluster-slave}: join a master and stay joined.
"""

from __future__ import annotations

import psutil  # type: ignore[import-untyped]  # no stubs of its own; types-psutil is no dependency
from twisted.python import usage

from picluster import address, config
from picluster.clockwatch import ClockWatch
from picluster.slave.identity import IdentityError, NodeIdentity
from picluster.slave.pool import RECYCLE_AFTER
from picluster.slave.results import RESULT_ENVELOPE_ROOM
from picluster.slave.session import SlaveFactory, SlaveService
from picluster.tasks.child import TASK_CPU, TASK_MEMORY
from picluster.timebase import monotonic_timers
from picluster.trust.token import SLAVE
from picluster.wire.messages import MAX_PREFETCH, MAX_SLOTS

#: The smallest C{--max-result}: room for a small result and any failure.
SMALLEST_MAX_RESULT = 512

#: The smallest C{--task-memory} but 0 (no limit): a Python child needs some
#: 15 MiB of address space before its task imports anything.
SMALLEST_TASK_MEMORY = 64 * 1024 * 1024


def task_memory(text: str) -> int:
    """C{--task-memory}: a size in bytes, 0 for no limit."""
    value = config.byte_size(text)
    if 0 < value < SMALLEST_TASK_MEMORY:
        raise ValueError(f"must be 0 (no limit) or at least {SMALLEST_TASK_MEMORY} bytes, not {value}")
    return value


def allowed_commands(text: str) -> tuple[str, ...]:
    """The C{--allow-shell} entries, each checked (see L{builtin.command_matches})."""
    from picluster.tasks.builtin import parse_allowed_command

    entries = config.word_list(text)
    for entry in entries:
        parse_allowed_command(entry)
    return entries


class Options(config.Options):
    synopsis = "[options]"
    longdesc = (
        "Run a picluster slave: connect to the master at --master, report this"
        " machine's facts and vitals, run the tasks the master hands out"
        " (--slots at a time), and reconnect whenever the master goes."
    )
    section = "slave"
    settings = [
        config.Setting(
            "master", address.parse_master, "tcp:host=127.0.0.1:port=12345",
            "The master's endpoint: tcp:host=HOST:port=PORT or HOST:PORT",
        ),
        config.Setting(
            "token", config.optional_text, None,
            "The join token for slaves, as 'picluster token' prints it on the master",
        ),
        config.Setting(
            "token-file", config.optional_text, None,
            "A file holding the join token (better than --token: no secret in ps)",
        ),
        config.Setting(
            "insecure", config.boolean, False,
            "Plain mode: no TLS, no token, for a master run with --insecure", flag=True,
        ),
        config.Setting(
            "state-dir", config.directory, ".",
            "Directory keeping this node's identity (node.json) across restarts; one slave each",
        ),
        *config.COMMON_SETTINGS,
        config.Setting("vitals", config.seconds, 10.0, "Seconds between vitals reports"),
        config.Setting(
            "initial-delay", config.seconds, SlaveFactory.initialDelay,
            "Seconds within which the first retry after losing the master comes; the shortest wait"
            " between attempts",
        ),
        config.Setting(
            "max-delay", config.seconds, SlaveFactory.maxDelay,
            f"Longest wait between reconnection attempts ({SlaveFactory.busyDelay:g} s at most while"
            " the master turns us away)",
        ),
        config.Setting(
            "slots", config.whole_number(1, MAX_SLOTS), None,
            "Tasks this slave runs at once (this machine's core count when unset)",
        ),
        config.Setting(
            "prefetch", config.whole_number(0, MAX_PREFETCH), None,
            "Tasks this slave holds ready beyond its slots, to start as slots free without"
            " waiting for the master (--slots when unset; 0: none)",
        ),
        config.Setting(
            "tags", config.word_list, (), "Comma-separated tags that task requirements can ask for"
        ),
        config.Setting(
            "allow-shell", allowed_commands, (),
            "Comma-separated command lines the shell task may run, word for word; * allows"
            " any one word, a final ... any further words (refused when unset)",
        ),
        config.Setting(
            "max-result", config.byte_size, None,
            "Largest task result, in bytes of JSON; a larger one fails its task"
            " (--max-frame less 256 bytes when unset: what one frame carries)",
        ),
        config.Setting(
            "task-memory", task_memory, TASK_MEMORY,
            "Bytes of address space each process task may use, K, M and G allowed; 0: no limit",
        ),
        config.Setting(
            "task-cpu", config.whole_number(0, 10**9), TASK_CPU,
            "Seconds of CPU time each process task may use; 0: no limit",
        ),
        config.Setting(
            "workers-recycle-after", config.whole_number(1, 10**6), RECYCLE_AFTER,
            "Process tasks a warm worker runs before a fresh one replaces it"
            " (1: a process of its own for every task)",
        ),
        config.Setting(
            "allow-admin", config.boolean, False,
            "Run the reboot, shutdown and update tasks (refused otherwise)", flag=True,
        ),
    ]
    optParameters = config.parameters(settings)
    optFlags = config.flags(settings)

    def translate_legacy(self, from_file: dict[str, str]) -> dict[str, str]:
        """Accept the tutorial's C{master_ip} and C{socket_port}."""
        host = from_file.pop("master_ip", None)
        port = from_file.pop("socket_port", None)
        if (host or port) and "master" not in from_file:
            self.file_key_names["master"] = "master_ip/socket_port"
            host = (host or "127.0.0.1").strip().strip("[]")
            host = f"[{host}]" if ":" in host else host
            from_file["master"] = f"{host}:{(port or '12345').strip()}"
        return from_file

    def check(self) -> None:
        super().check()
        if isinstance(self["master"], str):
            self["master"] = address.parse_master(self["master"])
        self["join-token"] = config.join_token(self["token"], self["token-file"], self["insecure"],
                                        credential=SLAVE)
        if self["insecure"] and (self["allow-admin"] or self["allow-shell"]):
            raise usage.UsageError(
                "--allow-admin and --allow-shell need a secure master: in plain mode (--insecure)"
                " anyone who can pose as the master could run commands here"
            )
        largest_result = self["max-frame"] - RESULT_ENVELOPE_ROOM
        if self["max-result"] is None:
            self["max-result"] = largest_result
        elif not SMALLEST_MAX_RESULT <= self["max-result"] <= largest_result:
            raise usage.UsageError(
                f"--max-result ({self['max-result']} bytes) must be from {SMALLEST_MAX_RESULT}"
                f" to {largest_result}: a result and its envelope fit in a frame of --max-frame"
                f" ({self['max-frame']} bytes)"
            )
        if self["max-delay"] < self["initial-delay"]:
            raise usage.UsageError(
                f"--max-delay ({self['max-delay']:g} s) must not be shorter than"
                f" --initial-delay ({self['initial-delay']:g} s)"
            )


def makeService(options: Options) -> SlaveService:
    from twisted.internet import reactor

    from picluster.slave.runner import TaskRunner
    from picluster.tasks.installed import installed_tasks

    # Timers keep to the monotonic clock: a step of the system clock (a Pi's
    # first NTP sync) moves no keepalive, reconnection or task timeout.
    monotonic_timers(reactor)

    # The core count, when unset, held to what an offer may say.
    slots = options["slots"] or min(psutil.cpu_count() or 1, MAX_SLOTS)
    # One run ready a slot: a freed slot starts its next run without a round trip.
    prefetch = min(slots, MAX_PREFETCH) if options["prefetch"] is None else options["prefetch"]
    runner = TaskRunner(
        installed_tasks(), slots=slots, prefetch=prefetch, clock=reactor, reactor=reactor,
        allow_admin=options["allow-admin"], allowed_commands=options["allow-shell"],
        max_result_bytes=options["max-result"], task_memory=options["task-memory"],
        task_cpu=options["task-cpu"], recycle_after=options["workers-recycle-after"],
        booted_at=psutil.boot_time(),
    )
    token = options["join-token"]
    identity = None
    if token is not None:
        try:
            identity = NodeIdentity.open(options["state-dir"], token.fingerprint)
        except IdentityError as e:
            raise SystemExit(f"picluster-slave: {e}") from e
    factory = SlaveFactory(
        options["master"],
        vitals_interval=options["vitals"],
        initial_delay=options["initial-delay"],
        max_delay=options["max-delay"],
        keepalive=options["keepalive"],
        dead_after=options["dead-after"],
        max_frame=options["max-frame"],
        runner=runner,
        tags=options["tags"],
        token=token,
        identity=identity,
    )
    # Said in the log: a step of the system clock (a Pi's first NTP sync).
    return SlaveService(factory, clock_watch=ClockWatch(reactor))
