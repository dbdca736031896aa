"""The two steps every PNG of edge-cls shares: pyplot on the file-only Agg backend (None where
matplotlib is not installed), and a figure written atomically, then closed; and the accuracy-latency plot."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_cls._fileio import atomic_path

if TYPE_CHECKING:
    from edge_cls.measure.latency import BenchResult

logger = logging.getLogger(__name__)


def pyplot() -> Any | None:
    """``matplotlib.pyplot`` drawing to files only, or None (logged) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib is not installed; skipping the plot")
        return None
    return plt


def save_figure(fig: Any, path: str | os.PathLike[str], dpi: int = 110) -> Path:
    """Write ``fig`` as a PNG through a temporary file and rename, then close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return path


def plot_accuracy_latency(rows: Sequence[BenchResult], path: str | os.PathLike[str], title: str = "") -> Path | None:
    """Top-1 against p50 latency, one labelled point per row; needs matplotlib."""
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
