"""
The C{picluster} command line: its sub-commands and options.

Twisted's L{usage.Options} with C{subCommands}, as twistd's, with two
changes: options may follow positional arguments (C{submit primes --wait}),
and C{--help} and C{--version} raise L{ShowText} instead of printing and
exiting, so that L{picluster.cli.main} writes them to the stream it was
given.  Every check of a value is here, raising L{usage.UsageError}.
"""

from __future__ import annotations

import getopt
from collections.abc import Mapping
from typing import Any

from twisted.python import usage

from picluster import config, wire
from picluster._version import __version__
from picluster.address import parse_master
from picluster.trust.cluster import ClusterTrust, TrustError
from picluster.trust.token import CLIENT, READ_ONLY, SLAVE, TOKEN_ENV, JoinToken
from picluster.wire.messages import MAX_SEARCH_LENGTH, SLAVE_ORDERS, SLAVE_STATES, TASK_STATES

DEFAULT_MASTER = "tcp:host=127.0.0.1:port=12345"
MASTER_ENV = "PICLUSTER_MASTER"
STATE_DIR_ENV = "PICLUSTER_STATE_DIR"
#: Where a master's state directory is looked for, on its own machine: the
#: systemd unit's, then here (where a hand-started twistd keeps it).
STATE_DIRS = ("/var/lib/picluster", ".")
STATES = TASK_STATES

MAX_DEMO_SLAVES = 64

#: The shortest wait between two looks of C{picluster status --watch}, in
#: seconds: each look costs the master a summary of every slave.
SHORTEST_WATCH_INTERVAL = 0.5



class ShowText(Exception):
    """C{--help} or C{--version}: print this on stdout and exit 0."""


class _ShowsText:
    """C{--help}/C{-h} and C{--version}, printed by the caller, not by usage (which would exit)."""

    def opt_help(self) -> None:
        """Display this help and exit."""
        raise ShowText(str(self))

    opt_h = opt_help

    def opt_version(self) -> None:
        """Display the version and exit."""
        raise ShowText(f"picluster {__version__}\n")


def strict_json(text: str) -> Any:
    """
    Parse JSON as the wire carries it: NaN, Infinity and numbers such as
    1e400 are refused here, where the user can be told which line.
    """
    return wire.loads(text)


def _size(text: str) -> int:
    try:
        return config.byte_size(text)
    except ValueError:
        raise usage.UsageError(
            f"min_ram must be bytes such as 536870912, 512M or 1G, not {text!r}") from None


def _positive_int(text: str, what: str, minimum: int = 1) -> int:
    try:
        value = int(text)
    except ValueError:
        raise usage.UsageError(f"{what} must be a whole number, not {text!r}") from None
    if value < minimum:
        raise usage.UsageError(f"{what} must be at least {minimum}, not {value}")
    return value


def _tcp_server(text: str, option: str) -> str:
    """
    A TCP server endpoint description, checked as the master checks its own.
    TCP only: the demo's slaves connect over TCP, and its dashboard is
    reached by a URL.
    """
    try:
        config.server_endpoint(text)
    except ValueError as e:
        raise usage.UsageError(f"{option}: {e}") from None
    if text.split(":", 1)[0].strip().lower() not in ("tcp", "tcp6"):
        raise usage.UsageError(f"{option} must be a tcp: or tcp6: endpoint, not {text!r}")
    return text


def _requirement(text: str) -> tuple[str, Any]:
    """Parse one C{--requires KEY=VALUE}."""
    key, equals, value = text.partition("=")
    key = key.strip().replace("-", "_")
    if not equals:
        raise usage.UsageError(f"--requires takes KEY=VALUE, not {text!r}")
    if key == "min_ram":
        return key, _size(value)
    if key == "min_cores":
        return key, _positive_int(value, "min_cores")
    if key == "tags":
        tags = [tag.strip() for tag in value.split(",") if tag.strip()]
        if not tags:
            raise usage.UsageError("tags needs at least one tag, e.g. tags=gpu,camera")
        return key, tags
    if key == "hostname":
        if not value.strip():
            raise usage.UsageError("hostname must not be empty")
        return key, value.strip()
    raise usage.UsageError(
        f"unknown requirement {key!r} (known: min_ram, min_cores, tags, hostname)")


def _options_first(argv: list[str], short: str, long: list[str]) -> list[str]:
    """
    Move options before positional arguments.

    Twisted's parser stops at the first positional argument; people type
    C{picluster submit primes --wait} and expect C{--wait} to count.
    """
    try:
        options, arguments = getopt.gnu_getopt(argv, short, long)
    except getopt.GetoptError as e:
        raise usage.UsageError(str(e)) from None
    ordered: list[str] = []
    for option, value in options:
        if option.startswith("--"):
            ordered.append(f"{option}={value}" if option[2:] + "=" in long else option)
        else:
            ordered += [option, value] if option[1] + ":" in short else [option]
    return ordered + ["--"] + arguments


class _CommandOptions(_ShowsText, usage.Options):
    """What every sub-command takes: where the master is, and --json."""

    # Without one, usage.Options shows the __main__ module's docstring.
    longdesc = ""
    #: What follows the command's name in its usage line: each command says.
    synopsis: str

    optFlags = [
        ["json", None, "Print machine-readable JSON on stdout."],
        ["insecure", None, "Plain mode: no TLS, no token, for a master run with --insecure."],
    ]
    optParameters = [
        ["master", "m", None,
         f"The master: tcp:host=HOST:port=PORT or HOST:PORT"
         f" [default: ${MASTER_ENV}, or {DEFAULT_MASTER}]"],
        ["token", None, None,
         f"The client (or read-only) token, as 'picluster token --client' prints it"
         f" [default: ${TOKEN_ENV}, or the token of the master's --state-dir on this machine]"],
        ["token-file", None, None, "A file holding the token."],
        ["state-dir", None, None,
         f"The master's state directory, to take the client token from on the master's machine"
         f" [default: ${STATE_DIR_ENV}, then {', then '.join(STATE_DIRS)}]"],
    ]

    def getSynopsis(self) -> str:
        # Parsed only as a sub-command of PiClusterOptions, which names it.
        assert self.parent is not None
        return f"Usage: picluster {self.parent.subCommand} {self.synopsis}"

    def parseOptions(self, options: list[str] | None = None) -> None:
        super().parseOptions(_options_first(list(options or []), self.shortOpt, self.longOpt))

    def postOptions(self) -> None:
        environ = getattr(self.parent, "environ", {})
        description = self["master"] or environ.get(MASTER_ENV) or DEFAULT_MASTER
        try:
            self["master"] = parse_master(description)
        except ValueError as e:
            raise usage.UsageError(f"--master: {e}") from None
        self["join-token"] = client_token(self, environ)


def client_token(options: Mapping[str, Any], environ: Mapping[str, str]) -> JoinToken | None:
    """
    The token the command joins with: C{--token}, C{--token-file},
    C{$PICLUSTER_TOKEN}, or, on the master's own machine, the client token
    of its state directory; C{None} with C{--insecure}.
    """
    text = options["token"] or (None if options["token-file"] else environ.get(TOKEN_ENV))
    if options["insecure"] or text or options["token-file"]:
        token = config.join_token(text, options["token-file"], options["insecure"],
                                  credential=CLIENT)
        return token
    state_dir = options["state-dir"] or environ.get(STATE_DIR_ENV)
    for candidate in [state_dir] if state_dir else STATE_DIRS:
        try:
            return ClusterTrust.open(candidate, create=False).token(CLIENT)
        except TrustError as e:
            if state_dir:
                raise usage.UsageError(f"--state-dir: {e}") from None
    raise usage.UsageError(
        "a token is needed to reach the master: --token-file FILE, --token TOKEN or"
        f" ${TOKEN_ENV}, as 'picluster token --client' prints it on the master"
        " (or --insecure for a master run with --insecure)"
    )


class TokenOptions(_ShowsText, usage.Options):
    synopsis = "[--client | --read-only] [--rotate] [--state-dir DIR]"
    longdesc = (
        "Print a join token of the cluster whose master keeps its state in --state-dir:"
        " the slaves' (paste it into each slave's --token-file), or with --client the"
        " users' (for picluster and the Python client), or with --read-only one that may"
        " only look.  --rotate makes new secrets for all three first: every token given"
        " out so far stops working at its next connection."
    )
    optFlags = [
        ["client", "c", "Print the token for users of the picluster command."],
        ["read-only", None, "Print a token that may list tasks and see the cluster, nothing more."],
        ["rotate", None, "Make new secrets first; the old tokens are refused from then on."],
    ]
    optParameters = [[
        "state-dir", "d", None,
        f"The master's state directory [default: ${STATE_DIR_ENV}, then {', then '.join(STATE_DIRS)}]",
    ]]

    def getSynopsis(self) -> str:
        return f"Usage: picluster token {self.synopsis}"

    def parseArgs(self, *arguments: str) -> None:
        if arguments:
            raise usage.UsageError(f"unexpected argument {arguments[0]!r}")

    def postOptions(self) -> None:
        if self["client"] and self["read-only"]:
            raise usage.UsageError("--client or --read-only, not both")
        self["credential"] = CLIENT if self["client"] else READ_ONLY if self["read-only"] else SLAVE
        environ = getattr(self.parent, "environ", {})
        given = self["state-dir"] or environ.get(STATE_DIR_ENV)
        candidates = [given] if given else STATE_DIRS
        problems = []
        for candidate in candidates:
            try:
                self["trust"] = ClusterTrust.open(candidate, create=False)
                return
            except TrustError as e:
                problems.append(str(e))
        raise usage.UsageError(problems[0] if given else (
            f"no cluster found in {' or '.join(STATE_DIRS)}: name the master's --state-dir"))


class _TaskIdOptions(_CommandOptions):
    synopsis = "ID [options]"

    def parseArgs(self, *arguments: str) -> None:
        if len(arguments) != 1:
            raise usage.UsageError("expected one task ID")
        self["id"] = _positive_int(arguments[0], "the task ID")


class _SpecOptions(_CommandOptions):
    """How tasks are to run: requirements, timeout, retries."""

    optParameters = [
        ["timeout", "t", None, "Seconds a run may take before it is stopped [default: none]."],
        ["retries", "r", None, "Runs after the first one, if a slave crashes [master's default: 3]."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self.requirements: dict[str, Any] = {}

    def opt_requires(self, value: str) -> None:
        """KEY=VALUE, repeatable: min_ram=512M min_cores=2 tags=gpu,camera hostname=pi-3"""
        key, parsed = _requirement(value)
        if key == "tags":
            parsed = self.requirements.get("tags", []) + parsed
        self.requirements[key] = parsed

    def parseArgs(self, *arguments: str) -> None:
        if len(arguments) != 1:
            raise usage.UsageError("expected one task NAME")
        self["name"] = arguments[0]

    def postOptions(self) -> None:
        super().postOptions()
        if self["timeout"] is not None:
            try:
                self["timeout"] = float(self["timeout"])
            except ValueError:
                raise usage.UsageError(f"--timeout must be seconds, not {self['timeout']!r}") from None
            if not 0 < self["timeout"] < float("inf"):
                raise usage.UsageError("--timeout must be a positive number of seconds")
        if self["retries"] is not None:
            self["retries"] = _positive_int(self["retries"], "--retries", minimum=0)

    def spec(self, args: dict[str, Any]) -> dict[str, Any]:
        """A task spec for these options and C{args}."""
        spec: dict[str, Any] = {"name": self["name"], "args": args}
        if self.requirements:
            spec["requirements"] = dict(self.requirements)
        for option in ("timeout", "retries"):
            if self[option] is not None:
                spec[option] = self[option]
        return spec


class SubmitOptions(_SpecOptions):
    synopsis = "NAME [options]"
    longdesc = "Submit one task and print its id; with --wait, wait and print how it ended."
    optFlags = [["wait", "w", "Wait for the task and print how it ended; exit 1 unless done."]]
    optParameters = [
        ["args", "a", "{}", "The task's arguments: a JSON object."],
        ["key", "k", None, "An idempotency key: submitting it again answers the same task."],
    ]

    def postOptions(self) -> None:
        super().postOptions()
        try:
            self["args"] = strict_json(self["args"])
        except ValueError as e:
            raise usage.UsageError(f"--args is not valid JSON: {e}") from None
        if not isinstance(self["args"], dict):
            raise usage.UsageError("--args must be a JSON object, such as '{\"stop\": 100}'")


class MapOptions(_SpecOptions):
    synopsis = "NAME --args-file FILE [options]"
    longdesc = (
        "Submit one task per line of FILE (a JSON object of arguments a line), wait for"
        " them all, and print one result a line in the order of FILE.  Exit 0 only if"
        " every task is done."
    )
    optParameters = [[
        "args-file", "f", None,
        "One JSON object of arguments per line, a task each ('-' reads stdin).",
    ]]

    def postOptions(self) -> None:
        super().postOptions()
        if not self["args-file"]:
            raise usage.UsageError("--args-file is required")


class TasksOptions(_CommandOptions):
    synopsis = "[options]"
    optParameters = [
        ["state", "s", None, f"Only tasks in this state: {', '.join(STATES)}."],
        ["limit", "n", None, "At most this many tasks [master's default: 100, at most 1000]."],
        ["after", None, None, "Only tasks past this id: smaller ids, or greater ones with --oldest."],
    ]
    optFlags = [
        ["oldest", None, "The oldest tasks first [default: the newest first]."],
    ]

    def postOptions(self) -> None:
        super().postOptions()
        if self["state"] is not None and self["state"] not in STATES:
            raise usage.UsageError(f"--state must be one of {', '.join(STATES)}")
        if self["limit"] is not None:
            self["limit"] = _positive_int(self["limit"], "--limit")
        if self["after"] is not None:
            self["after"] = _positive_int(self["after"], "--after", minimum=0)


class TaskOptions(_TaskIdOptions):
    pass


class CancelOptions(_TaskIdOptions):
    pass


class StatusOptions(_CommandOptions):
    synopsis = "[options]"
    longdesc = (
        "Show the master (version, uptime, task counts), a summary of its slaves (how many,"
        " the hottest, how many in each trouble) and a table of the slaves in trouble:"
        " throttled, short of power, hot, silent, cloned or gone.  --all shows every slave,"
        " --state and --search some of them: their machine, vitals, tasks and when they"
        " were last heard from.  Slaves that left are listed, dimmed, until the master"
        " forgets them."
    )
    optFlags = [
        ["all", "a", "A row for every slave, not only those in trouble."],
        ["watch", "w", "Show it again every --interval seconds, in place, until Ctrl-C."],
    ]
    optParameters = [
        ["state", None, None, f"Only slaves in this state: {', '.join(SLAVE_STATES)}."],
        ["search", None, None, "Only slaves whose hostname, address or uuid holds this text."],
        ["order", None, "hostname",
         f"The order of what --all, --state or --search list: {', '.join(SLAVE_ORDERS)}"
         " (newest: the newest first)."],
        ["interval", None, "2", "Seconds between two looks with --watch."],
    ]

    def postOptions(self) -> None:
        super().postOptions()
        if self["state"] is not None and self["state"] not in SLAVE_STATES:
            raise usage.UsageError(f"--state must be one of {', '.join(SLAVE_STATES)}")
        if self["order"] not in SLAVE_ORDERS:
            raise usage.UsageError(f"--order must be one of {', '.join(SLAVE_ORDERS)}")
        if self["search"] is not None and not 0 < len(self["search"]) <= MAX_SEARCH_LENGTH:
            raise usage.UsageError(f"--search must be 1 to {MAX_SEARCH_LENGTH} characters")
        try:
            self["interval"] = max(config.seconds(self["interval"]), SHORTEST_WATCH_INTERVAL)
        except ValueError as e:
            raise usage.UsageError(f"--interval: {e}") from None
        if self["json"] and self["watch"]:
            raise usage.UsageError("--watch shows a screen: it does not go with --json")


class DemoOptions(_ShowsText, usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run a whole cluster in this one process, on this machine: a master with its"
        " web dashboard and --slaves slaves, each running one task at a time, kept"
        " busy counting primes unless --no-tasks.  Open the printed URL; Ctrl-C stops it."
    )
    optParameters = [
        ["slaves", "n", "3", f"How many slaves to run (1 to {MAX_DEMO_SLAVES})."],
        ["port", "p", config.LOOPBACK_ANY_PORT, "The endpoint the slaves connect to."],
        ["web", "w", config.DEFAULT_WEB, "The endpoint of the web dashboard (tcp:0 picks a free port)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["tasks"] = True

    def opt_tasks(self) -> None:
        """Keep the slaves busy with a trickle of primes tasks [default]."""
        self["tasks"] = True

    def opt_no_tasks(self) -> None:
        """Submit no tasks: the slaves only report their vitals."""
        self["tasks"] = False

    def getSynopsis(self) -> str:
        return f"Usage: picluster demo {self.synopsis}"

    def parseOptions(self, options: list[str] | None = None) -> None:
        super().parseOptions(_options_first(list(options or []), self.shortOpt, self.longOpt))

    def parseArgs(self, *arguments: str) -> None:
        if arguments:
            raise usage.UsageError(f"unexpected argument {arguments[0]!r}")

    def postOptions(self) -> None:
        self["slaves"] = _positive_int(self["slaves"], "--slaves")
        if self["slaves"] > MAX_DEMO_SLAVES:
            raise usage.UsageError(f"--slaves must be at most {MAX_DEMO_SLAVES}, not {self['slaves']}")
        for option in ("port", "web"):
            self[option] = _tcp_server(self[option], f"--{option}")


class PiClusterOptions(_ShowsText, usage.Options):
    synopsis = "Usage: picluster COMMAND [options]"
    longdesc = (
        "Submit tasks to a picluster master, list, cancel and wait for them; see the"
        " cluster at a glance, or try one out on this machine with 'picluster demo'."
        "  'picluster COMMAND --help' lists a command's options."
    )
    subCommands = [
        ["submit", None, SubmitOptions, "Submit a task; with --wait, wait for it."],
        ["map", None, MapOptions, "Run a task once per line of arguments, and wait."],
        ["tasks", None, TasksOptions, "List tasks."],
        ["task", None, TaskOptions, "Show one task."],
        ["cancel", None, CancelOptions, "Cancel a task."],
        ["status", None, StatusOptions, "Show the master and its slaves."],
        ["demo", None, DemoOptions, "Run a master and slaves here, with the dashboard."],
        ["token", None, TokenOptions, "Print a join token (on the master's machine)."],
    ]

    def __init__(self, environ: Mapping[str, str]):
        super().__init__()
        self.environ = environ

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("no command given")
