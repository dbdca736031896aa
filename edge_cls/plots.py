"""The two steps every PNG of edge-cls shares: pyplot on the file-only Agg backend (None where
matplotlib is not installed), and a figure written atomically, then closed."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ._fileio import atomic_path

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
