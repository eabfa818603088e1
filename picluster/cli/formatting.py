"""
What the C{picluster} command prints: tables, records, outcomes, progress.

Kept apart from L{picluster.cli} so that the command's logic reads in one
sitting, and so that every line a user sees is shaped in one place.  Every
function here is pure but L{Progress}, which writes to the stream it is given.

All the text here comes from the master (and, through it, from slaves and
other users), so each value is passed through L{printable} (for JSON, with
non-printable characters written as C{\\uXXXX} escapes, which keep the value
as it was): nothing shown can drive the reader's terminal.
"""

from __future__ import annotations

import json
import time
from typing import Any, TextIO

from picluster.text import printable

Record = dict[str, Any]


def _json_escape(char: str) -> str:
    """A character as a JSON string escape (a surrogate pair beyond the BMP)."""
    code = ord(char)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def to_json(value: Any) -> str:
    """
    One line of JSON, as every C{--json} output is; a character a terminal
    would act on is escaped (C{\\u001b}), so the value parses back the same.
    """
    # Outside strings json.dumps writes only printable ASCII: whatever is not
    # printable is inside a string, where an escape means the same.
    return printable(json.dumps(value, ensure_ascii=False), replace=_json_escape)


def duration(seconds: float) -> str:
    """A short human duration: C{4.2s}, C{3m05s}, C{2h03m}, C{1d02h}."""
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def task_time(record: Record, now: float) -> str:
    """How long a task has waited or run so far, or how long it ran."""
    submitted, started, finished = (
        record.get("submitted_at"), record.get("started_at"), record.get("finished_at"))
    if finished is not None:
        begun = started if started is not None else submitted
        return duration(finished - begun) if begun is not None else "-"
    since = started if started is not None else submitted
    return duration(now - since) if since is not None else "-"


def slave_name(record: Record) -> str:
    """The slave's hostname, or the start of its uuid, or C{-}."""
    if record.get("slave_hostname"):
        return printable(str(record["slave_hostname"]))
    if record.get("slave"):
        return printable(str(record["slave"])[:8])
    return "-"


def error_text(error: Any) -> str:
    """C{Type: message} for a task's error."""
    if not isinstance(error, dict):
        return printable(str(error))
    kind, message = error.get("type") or "Error", error.get("message") or ""
    return printable(f"{kind}: {message}" if message else str(kind))


def table(records: list[Record], now: float) -> str:
    """The C{picluster tasks} table, one task a row."""
    if not records:
        return "no tasks\n"
    header = ("ID", "NAME", "STATE", "SLAVE", "TRIES", "TIME", "WAITING")
    rows = [header] + [
        tuple(printable(str(cell)) for cell in (
            record.get("id"), record.get("name"), record.get("state"),
            slave_name(record), record.get("attempts", 0), task_time(record, now),
            record.get("waiting") or "",
        ))
        for record in records
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths)]
        lines.append("  ".join(cells + [row[-1]]).rstrip())
    return "\n".join(lines) + "\n"


def _moment(at: Any, now: float) -> str:
    if at is None:
        return "-"
    local = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
    return f"{local} ({duration(now - at)} ago)"


def _indented(text: str) -> list[str]:
    return ["    " + printable(line) for line in text.rstrip("\n").splitlines()]


def _outcome_lines(record: Record) -> list[tuple[str, str]]:
    fields = []
    if record.get("state") == "done":
        fields.append(("result", to_json(record.get("result"))))
    if record.get("error") is not None:
        error = record["error"]
        kind = error.get("kind") if isinstance(error, dict) else None
        fields.append(("error", error_text(error) + (f" ({kind})" if kind else "")))
    return fields


def _traceback(record: Record) -> list[str]:
    error = record.get("error")
    if isinstance(error, dict) and error.get("traceback"):
        return ["traceback:"] + _indented(str(error["traceback"]))
    return []


def _field_lines(fields: list[tuple[str, str]]) -> list[str]:
    width = max(len(name) for name, _ in fields) + 1
    return [f"{name + ':':<{width}} {printable(value)}" for name, value in fields]


def details(record: Record, now: float) -> str:
    """Every field of one record, for C{picluster task} and C{cancel}."""
    timeout = record.get("timeout")
    slave = slave_name(record)
    if record.get("slave") and record.get("slave_hostname"):
        slave += f" ({record['slave']})"
    fields = [
        ("id", str(record.get("id"))),
        ("name", str(record.get("name"))),
        ("state", str(record.get("state"))),
        ("key", str(record.get("key")) if record.get("key") is not None else "-"),
        ("args", to_json(record.get("args"))),
        ("requirements", to_json(record.get("requirements") or {})),
        ("timeout", f"{timeout:g} s" if isinstance(timeout, (int, float)) else "none"),
        ("retries", str(record.get("retries"))),
        ("attempts", _attempts(record)),
        ("slave", slave),
        ("submitted", _moment(record.get("submitted_at"), now)
         + (f" by {record['submitted_by']}" if record.get("submitted_by") else "")),
        ("started", _moment(record.get("started_at"), now)),
        ("finished", _moment(record.get("finished_at"), now)),
        ("time", task_time(record, now)),
    ]
    if record.get("waiting"):
        fields.append(("waiting", str(record["waiting"])))
    fields += _outcome_lines(record)
    return "\n".join(_field_lines(fields) + _traceback(record)) + "\n"


def _attempts(record: Record) -> str:
    """Its handouts, and how many of them never started (those spent none of its retries)."""
    unstarted = record.get("unstarted")
    never = f" ({unstarted} never started)" if type(unstarted) is int and unstarted > 0 else ""
    return f"{record.get('attempts')}{never}"


def outcome(record: Record) -> str:
    """A finished task as C{submit --wait} shows it."""
    fields = [
        ("task", f"{record.get('id')} ({record.get('name')})"),
        ("state", str(record.get("state"))),
        ("slave", slave_name(record)),
        ("attempts", str(record.get("attempts"))),
    ] + _outcome_lines(record)
    return "\n".join(_field_lines(fields) + _traceback(record)) + "\n"


def map_line(record: Record) -> str:
    """One line of C{map} output: the result's JSON, or what went wrong."""
    if record.get("state") == "done":
        return to_json(record.get("result"))
    if record.get("error") is not None:
        return f"error: {error_text(record['error'])}"
    return printable(f"error: {record.get('state')}")


def map_json(line: int, record: Record) -> str:
    """One line of C{map --json} output."""
    return to_json({
        "line": line,
        "id": record.get("id"),
        "state": record.get("state"),
        "result": record.get("result"),
        "error": record.get("error"),
        "slave": record.get("slave"),
        "slave_hostname": record.get("slave_hostname"),
        "attempts": record.get("attempts"),
    })


class Progress:
    """
    How many of a map's tasks have finished, on stderr.

    On a terminal one line is redrawn with C{\\r}; anywhere else (a log
    file, CI) a line is written each time another tenth is done, so that
    the log stays short.
    """

    BAR_WIDTH = 30

    def __init__(self, total: int, stream: TextIO, tty: bool):
        self.total = total
        self.stream = stream
        self.tty = tty
        self.finished = 0
        self.failed = 0
        self._tenths = 0

    def start(self) -> None:
        if self.tty:
            self._draw()
        else:
            self._write(f"submitted {self.total} tasks; waiting for them\n")

    def update(self, record: Record) -> None:
        """One more task has finished."""
        self.finished += 1
        if record.get("state") != "done":
            self.failed += 1
        if self.tty:
            self._draw()
            return
        tenths = self.finished * 10 // self.total if self.total else 10
        if tenths > self._tenths:
            self._tenths = tenths
            self._write(f"{self._status()} ({self.finished * 100 // self.total}%)\n")

    def note(self, text: str) -> None:
        """Write a line of its own without garbling the bar."""
        if self.tty:
            self._write("\r" + text.ljust(self.BAR_WIDTH + 40) + "\n")
            self._draw()
        else:
            self._write(text + "\n")

    def end(self) -> None:
        if self.tty:
            self._write("\n")

    def _status(self) -> str:
        return f"{self.finished}/{self.total} finished, {self.failed} failed"

    def _draw(self) -> None:
        filled = self.BAR_WIDTH * self.finished // self.total if self.total else self.BAR_WIDTH
        bar = "#" * filled + "-" * (self.BAR_WIDTH - filled)
        self._write(f"\r[{bar}] {self._status()}")

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()
