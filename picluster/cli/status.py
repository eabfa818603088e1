"""
What C{picluster status} prints: the master in a line or two, a summary of
its slaves, then a table of the slaves in trouble (or of those asked for),
drawn with C{rich}.

L{render} is pure: the C{info status} payload, the rows to show, the time
and a width go in, text comes out.  It draws on a L{rich.console.Console} writing to a string,
with colours only for a terminal, so that a pipe or a test gets plain text
with the same columns.  Everything shown that a slave reports about itself
(hostnames, models) is stripped of control characters first: a slave must
not be able to drive the terminal of whoever looks at the cluster.
"""

from __future__ import annotations

from io import StringIO
from typing import Any, TypeGuard

from rich.console import Console
from rich.table import Table
from rich.text import Text

from picluster.cli.formatting import duration
from picluster.text import printable
from picluster.wire.messages import TASK_STATES

__all__ = ["UNLIMITED", "render", "size"]

#: The console width used when no width is given (the output is not a
#: terminal): the table then takes the width it needs and a row stays on one
#: line, for C{grep} and C{awk}.
UNLIMITED = 10_000

#: Task states, in the order a person reads them.

Status = dict[str, Any]

_UNITS = ("K", "M", "G", "T", "P")


def size(value: Any) -> str:
    """A byte count as people read it: C{512B}, C{3.4G}, C{812M}, or C{-}."""
    if not _is_number(value) or value < 0:
        return "-"
    if value < 1024:
        return f"{int(value)}B"
    for unit in _UNITS:
        value /= 1024
        if value < 1024 or unit == _UNITS[-1]:
            return f"{value:.1f}{unit}" if value < 10 else f"{value:.0f}{unit}"
    raise AssertionError("unreachable")


def render(status: Status, now: float, *, width: int | None = None, terminal: bool = False,
           rows: list[dict[str, Any]] | None = None) -> str:
    """
    The C{picluster status} text for one C{info status} payload.

    @param now: The time the payload's times are compared with: the
        master's own C{now} when it gives one, so that a client whose clock
        is off still reads "seen 2s ago".
    @param width: The terminal's columns: the least needed columns are left
        out and long names fold to fit.  C{None}: as wide as it takes.
    @param terminal: Whether the text goes to a terminal: only then are
        styles (bold headers, dimmed departed slaves) written as escapes.
    @param rows: The slaves to list (C{--all}, C{--state}, C{--search});
        C{None}: those in trouble that the summary names.
    """
    out = StringIO()
    console = Console(
        file=out, width=width or UNLIMITED, force_terminal=terminal,
        color_system="standard" if terminal else None,
        markup=False, emoji=False, highlight=False, soft_wrap=False,
    )
    master = _object(status.get("master")) or {}
    summary = _object(status.get("summary"))
    if rows is None and summary is None:
        # A master from before summaries: its list is every slave.
        rows = status.get("slaves") if isinstance(status.get("slaves"), list) else []
    listed = rows if rows is not None else (summary or {}).get("in_trouble")
    slaves = [slave for slave in listed or [] if isinstance(slave, dict)]
    console.print(_master_line(master, slaves, now))
    console.print(_tasks_line(status.get("tasks")))
    if summary is not None:
        for line in _summary_lines(summary):
            console.print(line)
    if slaves:
        console.print(_slave_table(slaves if summary is not None else _ordered(slaves), now, width))
    elif rows is not None:
        known = summary is not None and (
            _count(summary, "slaves", "connected") + _count(summary, "slaves", "left") > 0)
        console.print("no slave matches" if known else "no slaves connected")
    if rows is None and summary is not None:
        unnamed = _count(summary, "slaves", "in_trouble") - len(slaves)
        if unnamed > 0:
            console.print(f"and {unnamed} more in trouble: picluster status --state trouble")
    return "".join(line.rstrip(" ") + "\n" for line in out.getvalue().splitlines())


# -- the master ---------------------------------------------------------------


def _master_line(master: dict[str, Any], slaves: list[dict[str, Any]], now: float) -> Text:
    hostname = _clean(master.get("hostname")) or "master"
    version = _clean(master.get("version"))
    uptime = master.get("uptime")
    if not _is_number(uptime) and _is_number(master.get("started_at")):
        uptime = now - master["started_at"]
    counts = _object(master.get("slaves")) or {}
    connected = counts.get("connected")
    left = counts.get("left")
    if type(connected) is not int:
        connected = sum(1 for slave in slaves if slave.get("state") != "left")
    if type(left) is not int:
        left = sum(1 for slave in slaves if slave.get("state") == "left")
    line = Text(hostname, style="bold")
    if version:
        line.append(f" (picluster {version})")
    if _is_number(uptime):
        line.append(f", up {duration(uptime)}")
    noun = "slave" if connected == 1 else "slaves"
    line.append(f": {connected} {noun} connected, {left} left")
    return line


def _summary_lines(summary: dict[str, Any]) -> list[Text]:
    """How busy the slaves are, the hottest, and how many are in each trouble."""
    slots = summary.get("slots")
    running = summary.get("running_tasks")
    line = Text(f"slots: {slots if type(slots) is int else '-'}, "
                f"{running if type(running) is int else '-'} running{_ready(summary, ', {} ready')}")
    hottest = [entry for entry in summary.get("hottest") or [] if isinstance(entry, dict)]
    shown = [f"{_name(entry)} {entry['temperature']:.1f}°C" for entry in hottest[:3]
             if _is_number(entry.get("temperature"))]
    if shown:
        line.append("; hottest: " + ", ".join(shown))
    lines = [line]
    in_trouble = _count(summary, "slaves", "in_trouble")
    if in_trouble == 0:
        lines.append(Text("no slave in trouble", style="green"))
    else:
        troubles = _object(summary.get("troubles")) or {}
        kinds = [f"{count} {_clean(kind)}" for kind, count in troubles.items()
                 if type(count) is int and count > 0]
        lines.append(Text(f"in trouble: {in_trouble} ({', '.join(kinds)})", style="bold red"))
    return lines


def _count(summary: dict[str, Any], group: str, name: str) -> int:
    counts = _object(summary.get(group)) or {}
    value = counts.get(name)
    return value if type(value) is int else 0


def _tasks_line(counts: Any) -> Text:
    counts = counts if isinstance(counts, dict) else {}
    parts = [f"{counts.get(state) if type(counts.get(state)) is int else '-'} {state}"
             for state in TASK_STATES]
    return Text("tasks: " + ", ".join(parts))


# -- the slaves ---------------------------------------------------------------

#: The table's columns: (header, right-aligned).  Numbers never wrap; a name
#: too long for its cell folds, so that it stays whole.
_COLUMNS = (
    ("HOST", False), ("ADDRESS", False), ("MODEL", False), ("UP", True), ("CPU", True),
    ("TEMP", True), ("RAM FREE", True), ("DISK FREE", True), ("TASKS", True), ("SEEN", True),
    ("STATE", False),
)

#: Columns given up, in this order, when the table is wider than the
#: terminal: rather fewer columns than every one cut to a stump.
_DROPPED_FIRST = ("MODEL", "ADDRESS", "DISK FREE", "UP", "TEMP", "SEEN")

#: The fewest columns a long hostname is folded into.
_MIN_HOST_WIDTH = 12

#: Columns between two cells.
_GAP = 2


def _slave_table(slaves: list[dict[str, Any]], now: float, width: int | None) -> Table:
    rows = [(_row(slave, now), slave.get("state") == "left") for slave in slaves]
    headers = [header for header, _ in _COLUMNS]
    shown = _fitting(headers, [cells for cells, _ in rows], width)
    table = Table(box=None, show_edge=False, pad_edge=False, padding=(0, _GAP // 2),
                  header_style="bold", expand=False)
    for header, right in _COLUMNS:
        if header in shown:
            wraps = header in ("HOST", "STATE")
            table.add_column(header, justify="right" if right else "left", no_wrap=not wraps,
                             overflow="fold" if wraps else "ellipsis")
    for cells, left in rows:
        kept = [cell for header, cell in zip(headers, cells) if header in shown]
        table.add_row(*kept, style="dim" if left else None)
    return table


def _fitting(headers: list[str], rows: list[list[Text]], width: int | None) -> set[str]:
    """The columns to show in C{width}: all of them, or all but the least needed."""
    natural = {
        header: max([len(header)] + [cell.cell_len for cell in column])
        for header, *column in zip(headers, *rows)
    }
    shown = set(headers)
    dropping = list(_DROPPED_FIRST)

    def needed() -> int:
        widths = [min(natural[h], _MIN_HOST_WIDTH) if h == "HOST" else natural[h] for h in shown]
        return sum(widths) + _GAP * (len(widths) - 1)

    while width is not None and dropping and needed() > width:
        shown.discard(dropping.pop(0))
    return shown


def _row(slave: dict[str, Any], now: float) -> list[Text]:
    cells = [
        _name(slave),
        _clean(slave.get("address")) or "-",
        _clean(slave.get("model")) or "-",
        duration(slave["uptime"]) if _is_number(slave.get("uptime")) else "-",
        f"{slave['cpu_percent']:.0f}%" if _is_number(slave.get("cpu_percent")) else "-",
        f"{slave['temperature']:.1f}°C" if _is_number(slave.get("temperature")) else "-",
        size(slave.get("ram_free")),
        size(slave.get("disk_free")),
        _tasks(slave),
        _ago(slave.get("last_seen"), now),
    ]
    return [Text(cell) for cell in cells] + [_state(slave, now)]


def _name(slave: dict[str, Any]) -> str:
    """The hostname, or the start of the uuid of a slave that has not said it yet."""
    hostname = _clean(slave.get("hostname"))
    if hostname:
        return hostname
    uuid = _clean(slave.get("uuid"))
    return uuid[:8] if uuid else "-"


def _tasks(slave: dict[str, Any]) -> str:
    running = slave.get("running_tasks")
    slots = slave.get("slots")
    running_text = str(running) if type(running) is int else "-"
    return f"{running_text}/{slots if type(slots) is int else '-'}{_ready(slave, ' +{} ready')}"


def _ready(shown: dict[str, Any], form: str) -> str:
    """
    The runs held ready beyond the slots (prefetch) in C{form}, or nothing
    when there are none: a cluster without prefetch reads as it always did.
    """
    ready = shown.get("ready_tasks")
    return form.format(ready) if type(ready) is int and ready > 0 else ""


def _ago(at: Any, now: float) -> str:
    return f"{duration(now - at)} ago" if _is_number(at) else "-"


def _state(slave: dict[str, Any], now: float) -> Text:
    if slave.get("state") == "left":
        left_at = slave.get("left_at")
        return Text(f"left {duration(now - left_at)} ago" if _is_number(left_at) else "left")
    state = Text(_clean(slave.get("state")) or "connected", style="green")
    troubles = slave.get("troubles")
    if isinstance(troubles, list):
        words = [_clean(trouble) for trouble in troubles if trouble != "left"]
    else:
        # A master from before troubles: what a Pi owner most needs to see,
        # a supply or cooling problem.
        words = [word for flag, word in (("under_voltage", "under-voltage"), ("throttled", "throttled"))
                 if slave.get(flag) is True]
    for word in words:
        state.append(f", {word}", style="bold red")
    return state


def _ordered(slaves: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Connected slaves by name, then those that left, the latest first."""

    def latest_first(slave: dict[str, Any]) -> float:
        return -slave["left_at"] if _is_number(slave.get("left_at")) else 0.0

    connected = [slave for slave in slaves if slave.get("state") != "left"]
    left = [slave for slave in slaves if slave.get("state") == "left"]
    return (sorted(connected, key=lambda slave: (_name(slave), _clean(slave.get("uuid"))))
            + sorted(left, key=latest_first))


# -- values -------------------------------------------------------------------


def _is_number(value: Any) -> TypeGuard[float]:
    return type(value) in (int, float)


def _object(value: Any) -> dict[str, Any] | None:
    """C{value} if it is a JSON object, else C{None}: what a master sends is checked, not trusted."""
    return value if isinstance(value, dict) else None


def _clean(value: Any) -> str:
    """A reported string fit for a terminal: control characters become C{?}."""
    if value is None:
        return ""
    return printable(str(value))
