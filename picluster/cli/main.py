"""
The C{picluster} command: submit tasks to a master, look at them, wait.

    picluster submit NAME [--args JSON] [--requires KEY=VALUE ...] [--wait]
    picluster map NAME --args-file FILE
    picluster tasks [--state STATE] [--limit N] [--after ID] [--oldest]
    picluster task ID
    picluster cancel ID
    picluster status [--all] [--state STATE] [--search TEXT] [--order ORDER] [--watch [--interval S]]
    picluster demo [--slaves N] [--port ENDPOINT] [--web ENDPOINT] [--no-tasks]

The options are L{picluster.cli.options}'; the talking is
L{picluster.client.Client}'s; what is printed is shaped in
L{picluster.cli.formatting} (and, for C{status}, L{picluster.cli.status}).
C{demo} runs a L{picluster.cli.demo.Demo} until the reactor is told to stop
(Ctrl-C, SIGTERM).  Expected failures (a master that cannot be reached
or refuses, a bad file) end in one line on stderr and exit status 1, bad
options in exit status 2; never in a traceback.

Whatever the master says reaches the terminal only through
L{picluster.text.printable}: L{picluster.cli.formatting} and
L{picluster.cli.status} clean each value they show, and L{_Session.emit}
and L{_Session.notice}, which write everything, clean it again.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TextIO

from twisted.internet import defer, task
from twisted.python import usage

from picluster.cli import formatting, status
from picluster.cli.options import MASTER_ENV, PiClusterOptions, ShowText, strict_json
from picluster.client import Client, HandshakeError, UnexpectedReply, UnknownTask
from picluster.text import printable
from picluster.timebase import monotonic_timers, wall_time
from picluster.trust.cluster import TrustError
from picluster.wire.errors import DisconnectionException, RemoteError, RequestTimeout

__all__ = ["CommandFailed", "MASTER_ENV", "main", "run"]

#: Reconnection delays while waiting: a master restarted by hand is usually
#: back within seconds, and a person is watching.
INITIAL_DELAY = 0.5
MAX_DELAY = 10.0

#: Failures a user can act on: told in one line, without a traceback.
EXPECTED_FAILURES = (
    DisconnectionException, RemoteError, RequestTimeout, UnknownTask,
    UnexpectedReply, HandshakeError,
)


class CommandFailed(Exception):
    """A failure of the user's input, told in one line; exit status 1."""


class _Session:
    """One run of one sub-command, and where it writes."""

    def __init__(self, options: PiClusterOptions, reactor: Any, stdout: TextIO,
                 stderr: TextIO, stdin: TextIO):
        # PiClusterOptions.postOptions refuses a command line without one.
        assert options.subCommand is not None
        self.command = options.subCommand
        self.options = options.subOptions
        self.reactor = reactor
        self.stdout = stdout
        self.stderr = stderr
        self.stdin = stdin
        self.client: Client | None = None
        self.progress: formatting.Progress | None = None

    async def run(self) -> int:
        try:
            return await _COMMANDS[self.command](self)
        except (CommandFailed, *EXPECTED_FAILURES) as e:
            self.error(_describe(e))
            return 1
        except BrokenPipeError:
            # Whoever read our output has stopped (picluster tasks | head):
            # that is their choice, not an error worth a word.
            self.stdout = open(os.devnull, "w")
            return 1
        except Exception:
            self.error("internal error (a bug in picluster; please report it)")
            self.stderr.write(traceback.format_exc())
            return 1
        finally:
            if self.client is not None:
                await self.client.close()

    async def connect(self, reconnect: bool) -> Client:
        """A client welcomed by the master; with C{reconnect}, one that rides out its loss."""
        master = self.options["master"]
        token = self.options["join-token"]
        self.client = client = Client(master, reactor=self.reactor, reconnect=reconnect,
                                      token=token, insecure=token is None,
                                      initial_delay=INITIAL_DELAY, max_delay=MAX_DELAY)
        client.on_lost = lambda lost: self.notice(
            f"lost master {master} ({lost.cause}); reconnecting")
        await client.connect()
        return client

    def emit(self, text: str, *, styled: bool = False) -> None:
        """
        Write C{text} on stdout, its control characters (but its line ends)
        made harmless; C{styled} text is L{status.render}'s, cleaned value by
        value and coloured with escapes of its own.
        """
        if not styled:
            text = printable(text, keep="\n")
        self.stdout.write(text if text.endswith("\n") else text + "\n")
        self.stdout.flush()

    def notice(self, line: str) -> None:
        """Write one line on stderr (or through the progress bar), made harmless."""
        line = printable(line)
        if self.progress is not None:
            self.progress.note(line)
        else:
            self.stderr.write(line + "\n")
            self.stderr.flush()

    def error(self, message: str) -> None:
        self.notice(f"picluster {self.command}: error: {message}")

    def warn(self, warnings: list[str]) -> None:
        for warning in dict.fromkeys(warnings):
            self.notice(f"warning: {warning}")

    def show_record(self, record: dict[str, Any]) -> None:
        if self.options["json"]:
            self.emit(formatting.to_json(record))
        else:
            self.emit(formatting.details(record, wall_time(self.reactor)))


def _describe(failure: Exception) -> str:
    """One line saying what went wrong."""
    if isinstance(failure, RemoteError):
        payload = failure.reply.get("payload")
        if isinstance(payload, dict):
            # bad_message is our request's fault; error is the master's own.
            how = "failed" if failure.reply.get("type") == "error" else "refused it"
            extra = ", ".join(f"{key}: {value!r}" for key, value in payload.items()
                              if key not in ("error", "index"))
            return f"the master {how}: {payload.get('error')}" + (f" ({extra})" if extra else "")
    return str(failure)


async def _submit(session: _Session) -> int:
    options = session.options
    spec = options.spec(options["args"])
    if options["key"] is not None:
        spec["key"] = options["key"]
    client = await session.connect(reconnect=options["wait"])
    submitted = await client.submit([spec])
    session.warn(submitted["warnings"])
    [entry] = submitted["tasks"]
    if not options["wait"]:
        session.emit(formatting.to_json(entry) if options["json"] else str(entry["id"]))
        return 0
    records = await client.wait([entry["id"]])
    record = records[entry["id"]]
    session.emit(formatting.to_json(record) if options["json"] else formatting.outcome(record))
    return 0 if record["state"] == "done" else 1


def _read_args(path: str, stdin: TextIO) -> list[dict[str, Any]]:
    """The lines of an args file, each a JSON object; or CommandFailed naming the line."""
    name = "stdin" if path == "-" else path
    try:
        if path == "-":
            text = stdin.read()
        else:
            with open(path, encoding="utf-8") as file:
                text = file.read()
    except OSError as e:
        raise CommandFailed(f"cannot read {name}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise CommandFailed(f"cannot read {name}: not UTF-8 text") from None
    all_args = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            raise CommandFailed(f"{name} line {number}: blank; each line must hold a JSON object")
        try:
            args = strict_json(line)
        except ValueError as e:
            raise CommandFailed(f"{name} line {number}: not valid JSON: {e}") from None
        if not isinstance(args, dict):
            raise CommandFailed(
                f"{name} line {number}: expected a JSON object, not {type(args).__name__}")
        all_args.append(args)
    return all_args


async def _map(session: _Session) -> int:
    options = session.options
    specs = [options.spec(args) for args in _read_args(options["args-file"], session.stdin)]
    if not specs:
        return 0
    client = await session.connect(reconnect=True)
    try:
        submitted = await client.submit(specs)
    except RemoteError as refusal:
        payload = refusal.reply.get("payload")
        index = payload.get("index") if isinstance(payload, dict) else None
        if type(index) is int:
            raise CommandFailed(f"line {index + 1}: {_describe(refusal)}") from None
        raise
    session.warn(submitted["warnings"])
    ids = [entry["id"] for entry in submitted["tasks"]]
    tty = getattr(session.stderr, "isatty", lambda: False)()
    session.progress = formatting.Progress(len(set(ids)), session.stderr, tty)
    session.progress.start()
    try:
        records = await client.wait(ids, on_update=session.progress.update)
    finally:
        session.progress.end()
        session.progress = None
    for line, task_id in enumerate(ids, 1):
        record = records[task_id]
        session.emit(formatting.map_json(line, record) if options["json"]
                     else formatting.map_line(record))
    return 0 if all(record["state"] == "done" for record in records.values()) else 1


async def _tasks(session: _Session) -> int:
    options = session.options
    client = await session.connect(reconnect=False)
    query = {"state": options["state"], "limit": options["limit"], "after": options["after"]}
    try:
        records = await client.tasks(**query, order="oldest" if options["oldest"] else "newest")
    except RemoteError as refusal:
        if _UNKNOWN_ORDER not in str(refusal):
            raise
        # A master from before the order of a list could be chosen: it
        # lists the oldest first, and that is what it is asked for.
        session.notice("this master lists the oldest tasks first (it is older than this command)")
        records = await client.tasks(**query)
    if options["json"]:
        session.emit(formatting.to_json(records))
    else:
        session.emit(formatting.table(records, wall_time(session.reactor)))
    return 0


#: How a master from before C{order} in the tasks query refuses it.
_UNKNOWN_ORDER = "unknown field `order`"


async def _task(session: _Session) -> int:
    client = await session.connect(reconnect=False)
    session.show_record(await client.task(session.options["id"]))
    return 0


async def _cancel(session: _Session) -> int:
    client = await session.connect(reconnect=False)
    session.show_record(await client.cancel(session.options["id"]))
    return 0


async def _status(session: _Session) -> int:
    options = session.options
    client = await session.connect(reconnect=options["watch"])
    page: dict[str, Any] = {}
    for name in ("state", "search"):
        if options[name] is not None:
            page[name] = options[name]
    listing = bool(options["all"] or page)
    if listing and options["order"] != "hostname":
        page["order"] = options["order"]
    while True:
        # The summary and the first page of the slaves asked for; with no
        # page asked for, a plain question, which any master answers.
        cluster = await client.status(**page)
        rows = None
        if listing:
            rows = list(cluster["slaves"])
            if cluster.get("more") and cluster.get("next"):
                rows += await client.all_slaves(**page, after=cluster["next"])
        if options["json"]:
            if rows is not None:
                cluster = {**cluster, "slaves": rows, "more": False, "next": None}
            session.emit(formatting.to_json(cluster))
            return 0
        # Times in the payload are the master's: compare them with its clock.
        now = cluster["master"].get("now")
        if type(now) not in (int, float):
            now = wall_time(session.reactor)
        width = _terminal_width(session.stdout)
        shown = status.render(cluster, now, width=width, terminal=width is not None, rows=rows)
        if not options["watch"]:
            session.emit(shown, styled=True)
            return 0
        # In place on a terminal (home, then clear below); one look after
        # another elsewhere.
        session.emit((_HOME_AND_CLEAR if width is not None else "\n") + shown, styled=True)
        await task.deferLater(session.reactor, options["interval"], lambda: None)


#: Moves the cursor to the top left of the screen and clears it.
_HOME_AND_CLEAR = "\x1b[H\x1b[2J"


def _terminal_width(stream: TextIO) -> int | None:
    """The columns of the terminal C{stream} writes to, or None if it is no terminal."""
    try:
        if not stream.isatty():
            return None
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return None


async def _token(session: _Session) -> int:
    options = session.options
    trust = options["trust"]
    if options["rotate"]:
        try:
            trust.rotate()
        except TrustError as e:
            raise CommandFailed(str(e)) from None
        session.notice(
            "New secrets: every token given out before is refused from its next connection on."
            "  Give each slave the new slave token, and each user the new client token."
        )
    try:
        session.emit(str(trust.token(options["credential"])))
    except TrustError as e:
        raise CommandFailed(str(e)) from None
    return 0


async def _demo(session: _Session) -> int:
    from picluster.cli.demo import TRICKLE_INTERVAL, Demo, ListenFailed

    options = session.options
    demo = Demo(options["slaves"], port=options["port"], web=options["web"],
                trickle_interval=TRICKLE_INTERVAL if options["tasks"] else None,
                reactor=session.reactor)
    stopped: defer.Deferred[None] = defer.Deferred()

    def stop() -> defer.Deferred[None]:
        session.notice("picluster demo: stopping")
        return demo.stopService().addBoth(stopped.callback)

    # The reactor waits for this before it stops, so the slaves say goodbye.
    trigger = session.reactor.addSystemEventTrigger("before", "shutdown", stop)
    demo.startService()
    try:
        where = await demo.when_ready()
    except ListenFailed as e:
        session.reactor.removeSystemEventTrigger(trigger)
        await demo.stopService()
        demo.remove_state()
        hint = f"; try --{e.option} {e.any_port}" if e.cause == "address in use" else ""
        raise CommandFailed(f"{e}{hint}") from None
    noun = "slave" if options["slaves"] == 1 else "slaves"
    session.emit(
        f"picluster demo: a master and {options['slaves']} {noun} on this machine\n"
        f"  dashboard:  {where.dashboard}\n"
        f"  slave port: {where.master}\n"
        f"  status:     picluster status --master {where.master} --state-dir {where.state_dir}\n"
        + (f"  tasks:      a batch of primes every {TRICKLE_INTERVAL:g} s\n"
           if options["tasks"] else "")
        + "Stop it with Ctrl-C."
    )
    await stopped
    demo.remove_state()
    return 0


_COMMANDS: dict[str, Callable[[_Session], Awaitable[int]]] = {
    "submit": _submit, "map": _map, "tasks": _tasks, "task": _task, "cancel": _cancel, "token": _token,
    "status": _status, "demo": _demo,
}


def main(
    argv: list[str] | None = None,
    *,
    reactor: Any = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    stdin: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> defer.Deferred[int]:
    """
    Run one C{picluster} command line on a running reactor.

    @return: A Deferred firing with the exit status: 0 success, 1 a failure
        told on stderr, 2 bad options.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    stdin = sys.stdin if stdin is None else stdin
    options = PiClusterOptions(os.environ if environ is None else environ)
    try:
        options.parseOptions(argv)
    except ShowText as shown:
        text = str(shown)
        stdout.write(text if text.endswith("\n") else text + "\n")
        return defer.succeed(0)
    except usage.UsageError as e:
        command = " ".join(["picluster"] + ([options.subCommand] if options.subCommand else []))
        stderr.write(f"{command}: error: {e}\nTry '{command} --help' for more information.\n")
        return defer.succeed(2)
    if reactor is None:
        from twisted.internet import reactor
    session = _Session(options, reactor, stdout, stderr, stdin)
    return defer.Deferred.fromCoroutine(session.run())


def _exit_with(code: int) -> None:
    if code:
        raise SystemExit(code)


def run() -> None:
    """The console script: run L{main} under L{task.react}, exiting with its status."""
    from twisted.internet import reactor, task

    # As on the nodes: a step of this machine's clock moves no timer
    # (C{status --watch}'s refresh, a request's timeout, a reconnection).
    monotonic_timers(reactor)
    task.react(lambda reactor: main(reactor=reactor).addCallback(_exit_with))
