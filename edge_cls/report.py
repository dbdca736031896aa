"""Benchmark tables for the terminal and Markdown, and the accuracy-latency plot."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .benchmark import BenchResult

COLUMNS = (
    ("model", "{name}"),
    ("backend", "{backend}"),
    ("precision", "{precision}"),
    ("ran as", "{runtime_precision}"),
    ("top-1", "{top1}"),
    ("agree", "{top1_agreement}"),
    ("p50 ms", "{p50_ms:.2f}"),
    ("p90 ms", "{p90_ms:.2f}"),
    ("img/s @8", "{throughput_ips:.0f}"),
    ("size MB", "{size_mb:.2f}"),
)


def _cells(row: BenchResult) -> list[str]:
    values = row.to_dict()
    values["size_mb"] = row.size_bytes / 1e6
    values["top1"] = "-" if row.top1 is None else f"{100 * row.top1:.1f}%"
    values["top1_agreement"] = "-" if row.top1_agreement is None else f"{100 * row.top1_agreement:.1f}%"
    return [fmt.format(**values) for _, fmt in COLUMNS]


def text_table(rows: Sequence[BenchResult]) -> str:
    """An aligned plain-text table."""
    header = [name for name, _ in COLUMNS]
    body = [_cells(r) for r in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)) for line in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: Sequence[BenchResult]) -> str:
    header = [name for name, _ in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(lines)


# The instruction sets that decide which precision is fastest here (INT8 dot products, bf16, AMX).
SPEED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "asimddp", "bf16")


def machine_description() -> str:
    """The CPU model, its speed-relevant instruction sets, core count, OS and Python: beside every figure."""
    cpu = platform.processor() or platform.machine()
    flags: list[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and cpu == (platform.processor() or platform.machine()):
                cpu = value.strip()
            elif key in ("flags", "Features") and not flags:  # x86 / ARM (Jetson)
                present = set(value.split())
                flags = [f for f in SPEED_FLAGS if f in present]
    except OSError:
        pass
    if flags:
        x86_without_amx = "avx2" in flags and not any(f.startswith("amx") for f in flags)
        cpu += f" ({' '.join(flags)}{'; no AMX' if x86_without_amx else ''})"
    system = f"{platform.system()} {platform.release()}"
    return f"{cpu}, {os.cpu_count()} logical CPUs, {system}, Python {platform.python_version()}"


def plot_accuracy_latency(rows: Sequence[BenchResult], path: str | os.PathLike[str], title: str = "") -> Path | None:
    """Top-1 against p50 latency, one labelled point per row; needs matplotlib."""
    from .plots import pyplot, save_figure

    plt = pyplot()
    points = [r for r in rows if r.top1 is not None]
    if plt is None or not points:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    _draw(ax, points, title)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def _draw(ax: Any, points: Sequence[BenchResult], title: str) -> None:
    for r in points:
        ax.scatter(r.p50_ms, 100 * r.top1, s=40)
        ax.annotate(r.name, (r.p50_ms, 100 * r.top1), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("p50 latency, batch 1 (ms, log scale)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title or "accuracy vs latency")
    ax.grid(True, which="both", alpha=0.3)
