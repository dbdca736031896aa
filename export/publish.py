"""Publishing artifacts: every target swapped into place together, nothing of the user's replaced.

The export builds everything in a work directory inside the output directory (same file system,
so renames are atomic). Only when every target has been built and chosen are they swapped in; if
one swap fails, the earlier ones are undone and the previous artifacts put back. A directory that
is not an edge-cls artifact is never replaced, and work left by a killed export is removed once its
process is gone.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from edge_cls._fileio import fsync_directory, fsync_tree
from edge_cls.artifact.manifest import MANIFEST_NAME
from edge_cls.errors import ExportError

from .formats import ExportTarget

logger = logging.getLogger(__name__)

WORK_PREFIX = ".edge-cls-export-"  # the work directory inside the output directory (same file system: renames)
OWNER_FILE = "owner.pid"


def publish_all(items: list[tuple[Path, Path]], work: Path) -> None:
    """Swap every built artifact into place together: if one swap fails, every earlier one is undone
    and the previous artifacts are put back, so the output is all new or all old."""
    for staging, _ in items:
        fsync_tree(staging)
    moved_old: list[tuple[Path, Path]] = []
    placed: list[Path] = []
    try:
        for i, (staging, dest) in enumerate(items):
            if dest.exists():
                backup = work / f"previous-{i}"
                os.replace(dest, backup)
                moved_old.append((backup, dest))
            os.replace(staging, dest)
            placed.append(dest)
        fsync_directory(items[0][1].parent if items else work)
    except OSError:
        for i, dest in enumerate(placed):
            os.replace(dest, work / f"undone-{i}")
        for backup, dest in moved_old:
            os.replace(backup, dest)
        raise


def remove_abandoned_work(out_dir: Path) -> None:
    """A killed export leaves its work directory behind: remove those whose process is gone (ours
    by name and by the owner file; a live export's is left alone)."""
    for work in out_dir.glob(f"{WORK_PREFIX}*"):
        try:
            owner = int((work / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # not clearly ours: leave it
        try:
            os.kill(owner, 0)
        except ProcessLookupError:
            logger.info("removing %s, left by an export that did not finish", work)
            shutil.rmtree(work, ignore_errors=True)
        except PermissionError:
            continue  # someone else's live process


def refuse_foreign_destinations(out_dir: Path, targets: list[ExportTarget]) -> None:
    """Never replace a directory edge-cls did not make: a destination must be absent or an artifact."""
    for target in targets:
        dest = out_dir / target.directory
        if dest.exists() and not (dest / MANIFEST_NAME).is_file():
            raise ExportError(f"{dest} exists and is not an edge-cls artifact: it was left untouched; choose another "
                              "--output or move it away")
