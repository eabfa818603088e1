"""
What a benchmark prints and records: tables, figures, and ratios with goals.

A benchmark fills one L{Report}; L{Report.finish} prints its tables, then a
last line with every ratio beside its goal, and writes the whole as JSON
(C{NAME.json} in the output folder) for C{python -m bench all} to summarise
and plot.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil


@dataclass
class Ratio:
    """
    One ratio against a baseline of the same run, with its goal.

    @ivar higher: Whether a higher value is better (C{value >= goal} meets
        it); otherwise C{value <= goal} does.
    """

    key: str
    value: float | None
    goal: float
    higher: bool = True
    what: str = ""

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        return self.value >= self.goal if self.higher else self.value <= self.goal

    def render(self) -> str:
        sign = ">=" if self.higher else "<="
        value = "n/a" if self.value is None else f"{self.value:.2f}"
        verdict = {True: "met", False: "MISSED", None: "not measured"}[self.met]
        return f"{self.key} {value} (goal {sign} {self.goal:g}: {verdict})"


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[Any]] = field(default_factory=list)

    def render(self) -> str:
        cells = [[_cell(value) for value in row] for row in self.rows]
        widths = [
            max([len(header), *(len(row[i]) for row in cells)]) for i, header in enumerate(self.headers)
        ]
        lines = [self.title, "  ".join(h.ljust(w) for h, w in zip(self.headers, widths))]
        lines.append("  ".join("-" * w for w in widths))
        for row in cells:
            lines.append("  ".join(
                value.rjust(width) if i else value.ljust(width)
                for i, (value, width) in enumerate(zip(row, widths))
            ))
        return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == 0 or abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


class Report:
    """
    The results of one benchmark run.

    @ivar figures: Every measured number, by name, for the JSON record (the
        tables show the same numbers to a person).
    """

    def __init__(self, name: str, quick: bool):
        self.name = name
        self.quick = quick
        self.started = time.time()
        self.tables: list[Table] = []
        self.ratios: list[Ratio] = []
        self.figures: dict[str, Any] = {}
        self.notes: list[str] = []

    def table(self, title: str, headers: list[str]) -> Table:
        """A new table, printed in the order made; append rows to C{.rows}."""
        made = Table(title, headers)
        self.tables.append(made)
        return made

    def figure(self, key: str, value: Any) -> Any:
        self.figures[key] = value
        return value

    def ratio(self, key: str, value: float | None, goal: float, *, higher: bool = True,
              what: str = "") -> Ratio:
        made = Ratio(key, value, goal, higher, what)
        self.ratios.append(made)
        return made

    def note(self, text: str) -> None:
        """A sentence printed under the tables and kept in the record."""
        self.notes.append(text)

    def ratio_line(self) -> str:
        return f"{self.name} ratios: " + "; ".join(ratio.render() for ratio in self.ratios)

    def record(self) -> dict[str, Any]:
        return {
            "benchmark": self.name,
            "quick": self.quick,
            "started": self.started,
            "seconds": round(time.time() - self.started, 1),
            "machine": machine(),
            "tables": [asdict(table) for table in self.tables],
            "figures": self.figures,
            "ratios": [{**asdict(ratio), "met": ratio.met} for ratio in self.ratios],
            "notes": self.notes,
        }

    def finish(self, out_dir: str) -> str:
        """Print the tables and the ratio line; write C{NAME.json}; return its path."""
        for table in self.tables:
            print(table.render(), end="\n\n")
        for text in self.notes:
            print(f"note: {text}")
        if self.quick:
            print("note: --quick sizes are too small for the goals to mean anything")
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, f"{self.name}.json")
        with open(path, "w", encoding="utf-8") as out:
            json.dump(self.record(), out, indent=1)
        print(f"wrote {path}")
        print(self.ratio_line(), flush=True)
        return path


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": psutil.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
    }
