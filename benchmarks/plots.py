"""PNG plots from results.json's rows: latency distributions, throughput vs batch size, cold start and size bars."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt


def _name(row: dict[str, Any]) -> str:
    return f"{row['system']}/{row['variant']}"


def _ok(results: dict[str, Any], figure: str) -> list[dict[str, Any]]:
    return [row for row in results["rows"] if row["figure"] == figure and row["status"] == "ok"]


def latency(results: dict[str, Any], path: Path) -> bool:
    panels = [(figure, title) for figure, title in (("latency_e2e", "end to end: file -> label, batch 1"),
                                                   ("latency_model", "model only, batch 1"))
              if any(row.get("samples_ms") for row in _ok(results, figure))]
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.8), squeeze=False)
    for axis, (figure, title) in zip(axes[0], panels):
        rows = [row for row in _ok(results, figure) if row.get("samples_ms")]
        axis.boxplot([row["samples_ms"] for row in rows], whis=(1, 99), showfliers=True)
        axis.set_xticks(range(1, len(rows) + 1), [_name(row) for row in rows], rotation=30, ha="right", fontsize=8)
        axis.set_yscale("log")
        axis.set_ylabel("ms per image (log)")
        axis.set_title(title, fontsize=10)
        axis.grid(axis="y", alpha=0.3, which="both")
    fig.suptitle("Latency distribution (box: p25-p75, whiskers: p1-p99)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def throughput(results: dict[str, Any], path: Path) -> bool:
    rows = _ok(results, "throughput")
    if not rows:
        return False
    thread_counts = sorted({row["threads"] for row in rows})
    fig, axes = plt.subplots(1, len(thread_counts), figsize=(6.5 * len(thread_counts), 4.5), squeeze=False)
    for axis, threads in zip(axes[0], thread_counts):
        for name in dict.fromkeys(_name(row) for row in rows):
            points = sorted((row["batch_size"], row["images_per_s"]) for row in rows
                            if _name(row) == name and row["threads"] == threads)
            axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
        axis.set_xscale("log", base=2)
        axis.set_xlabel("batch size")
        axis.set_ylabel("images / s (end to end)")
        axis.set_title(f"{threads} thread(s)")
        axis.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.suptitle("Throughput vs batch size")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def startup(results: dict[str, Any], path: Path) -> bool:
    cold = _ok(results, "coldstart")
    sizes = _ok(results, "footprint")
    if not cold and not sizes:
        return False
    panels = [(cold, "first_label_s", "cold start: exec -> first label (s)"),
              (cold, "peak_rss_mib", "peak RSS of that process (MiB)"),
              (sizes, "total_mb", "install footprint (MB)")]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    for axis, (rows, key, title) in zip(axes, panels):
        names = [_name(row) for row in rows]
        values = [row[key] for row in rows]
        bars = axis.barh(names, values, color=["tab:green" if row["system"] == "fastvit-detect" else "tab:gray"
                                               for row in rows])
        axis.bar_label(bars, fmt="%.1f" if key == "first_label_s" else "%.0f", fontsize=7)
        axis.invert_yaxis()
        axis.set_title(title, fontsize=10)
        axis.tick_params(axis="y", labelsize=8)
        axis.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def draw(results: dict[str, Any], output: Path) -> list[str]:
    """Write the plots that have data; return their file names."""
    made = []
    for name, function in (("latency.png", latency), ("throughput.png", throughput), ("coldstart_memory.png", startup)):
        if function(results, output / name):
            made.append(name)
    return made
