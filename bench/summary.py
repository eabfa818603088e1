"""
What C{python -m bench all} leaves behind besides each benchmark's record:
C{summary.json} and C{summary.txt} with every ratio beside its goal, and
plots where a curve says more than a number (RSS against slave count,
latency percentiles).
"""

from __future__ import annotations

import json
import os
from typing import Any

from bench.report import Report, machine


def summarise(reports: list[Report], failed: list[str], out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    ratios = [ratio for report in reports for ratio in report.ratios]
    met = sum(1 for ratio in ratios if ratio.met)
    missed = [ratio for ratio in ratios if ratio.met is False]
    lines = [report.ratio_line() for report in reports]
    lines += [f"{name}: could not run" for name in failed]
    lines.append(f"goals met: {met} of {len(ratios)}" + (
        "; missed: " + ", ".join(ratio.key for ratio in missed) if missed else ""
    ))
    plots = []
    for report in reports:
        plots += draw(report, out_dir)
    with open(os.path.join(out_dir, "summary.txt"), "w", encoding="utf-8") as out:
        out.write("\n".join(lines) + "\n")
    with open(os.path.join(out_dir, "summary.json"), "w", encoding="utf-8") as out:
        json.dump({
            "machine": machine(),
            "quick": any(report.quick for report in reports),
            "benchmarks": {report.name: report.record()["ratios"] for report in reports},
            "failed": failed,
            "plots": plots,
        }, out, indent=1)
    print("== summary")
    for line in lines:
        print(line)
    for plot in plots:
        print(f"plot: {plot}")


def draw(report: Report, out_dir: str) -> list[str]:
    """The plots of one benchmark's figures, if it has a curve to show."""
    if report.name == "scale" and "rss_curve" in report.figures:
        return [_rss_plot(report.figures["rss_curve"], os.path.join(out_dir, "scale-rss.png"))]
    if report.name == "rtt" and "latency_ms" in report.figures:
        return [_latency_plot(report.figures["latency_ms"], os.path.join(out_dir, "rtt-latency.png"))]
    return []


def _pyplot() -> Any:
    # Imported here: matplotlib is slow to import and only `all` draws.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def _rss_plot(curve: dict[str, list[float]], path: str) -> str:
    pyplot = _pyplot()
    figure, (per_slave, total) = pyplot.subplots(1, 2, figsize=(10, 4))
    slaves = curve["slaves"]
    for key, label in (("picluster", "picluster master"), ("threaded", "threaded baseline")):
        per = curve.get(f"{key}_bytes_per_slave") or curve.get(f"{key}_bytes_per_connection")
        if per:
            per_slave.plot(slaves, [value / 1024 for value in per], marker="o", label=label)
        whole = curve.get(f"{key}_total_bytes")
        if whole:
            total.plot(slaves, [value / 2**20 for value in whole], marker="o", label=label)
    per_slave.set(title="RSS per connected slave", xlabel="slaves", ylabel="KiB")
    total.set(title="RSS above the empty server", xlabel="slaves", ylabel="MiB")
    for axes in (per_slave, total):
        axes.set_ylim(bottom=0)
        axes.grid(alpha=0.3)
        axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return path


def _latency_plot(latency: dict[str, dict[str, dict[str, float]]], path: str) -> str:
    pyplot = _pyplot()
    modes = [mode for mode in ("serial", "inflight50") if mode in latency]
    figure, axes_list = pyplot.subplots(1, len(modes), figsize=(5 * len(modes), 4), squeeze=False)
    titles = {"serial": "one request at a time", "inflight50": "50 requests in flight"}
    for axes, mode in zip(axes_list[0], modes):
        systems = latency[mode]
        percentiles = list(next(iter(systems.values())))
        width = 0.8 / len(systems)
        for index, (system, values) in enumerate(systems.items()):
            positions = [p + index * width for p in range(len(percentiles))]
            axes.bar(positions, [values[p] for p in percentiles], width, label=system)
        axes.set_xticks([p + width * (len(systems) - 1) / 2 for p in range(len(percentiles))])
        axes.set_xticklabels(percentiles)
        axes.set(title=f"Round-trip latency, {titles.get(mode, mode)}", ylabel="ms")
        axes.grid(axis="y", alpha=0.3)
        axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return path
