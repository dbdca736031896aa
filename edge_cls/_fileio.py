"""Atomic and durable writes: nothing already written is lost, left half-written, or removed
unless edge-cls made it.

Every write goes to a temporary file (or staging directory) beside its target, is flushed to
disk (``fsync`` of the file, then of the directory that holds it), and only then renamed over
the target. A crash or a full disk at any point leaves either the old file or the new one.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edge_cls.errors import EdgeClsError

_FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(EdgeClsError, OSError):
    """The disk (or quota) filled up during a write; what was there before is unchanged."""


@contextmanager
def _disk_full_is_an_error(path: Path) -> Iterator[None]:
    """ENOSPC/EDQUOT, or any failure of a writer while the disk is full (torch.save's zip writer
    raises RuntimeError), becomes a :class:`DiskFullError`."""
    try:
        yield
    except Exception as e:
        full = isinstance(e, OSError) and e.errno in _FULL
        if isinstance(e, DiskFullError) or not (full or _no_space_left(path.parent)):
            raise
        error = DiskFullError(f"no space left on the device while writing {path} ({e}); what was there before "
                              "is unchanged: free some space and run again")
        error.errno = errno.ENOSPC
        raise error from e


def _no_space_left(directory: Path) -> bool:
    try:
        stats = os.statvfs(directory)
    except OSError:
        return False
    return stats.f_bavail == 0 or stats.f_bfree == 0


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's contents."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush a written file's data and metadata to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(path: str | os.PathLike[str]) -> None:
    """Flush a directory's entries (a rename or a new file in it) to disk; a no-op where the
    platform cannot open directories (Windows)."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(path, flags)
    except (IsADirectoryError, PermissionError):  # pragma: no cover - Windows
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike[str]) -> None:
    """fsync every file and directory under ``root`` (deepest first), then ``root`` itself."""
    for directory, _, files in os.walk(root, topdown=False):
        for name in files:
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                fsync_file(path)
        fsync_directory(directory)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publishable(path: Path, directory: bool) -> None:
    """Give a temp file/dir the mode a plain open()/mkdir() would have (mkstemp makes it 0600)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success flush it to disk and rename it over ``path``.

    On error the temporary file is removed and ``path`` keeps its previous contents; a full disk
    is a :class:`DiskFullError` that says so.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        with _disk_full_is_an_error(path):
            yield tmp_path
            fsync_file(tmp_path)
            _publishable(tmp_path, directory=False)
            os.replace(tmp_path, path)
            fsync_directory(path.parent)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


class NotOursError(FileExistsError):
    """A directory edge-cls was asked to replace holds something edge-cls did not write."""


def check_replaceable(path: str | os.PathLike[str], marker: str) -> None:
    """Raise :class:`NotOursError` unless ``path`` is absent, an empty directory, or a directory
    holding ``marker`` (the file edge-cls writes last into the directories it makes)."""
    path = Path(path)
    if not os.path.lexists(path):
        return
    if path.is_symlink() or not path.is_dir():
        raise NotOursError(errno.EEXIST, f"{path} exists and is not a directory edge-cls made; it was left as it is")
    if (path / marker).is_file() or not any(path.iterdir()):
        return
    raise NotOursError(
        errno.EEXIST, f"{path} exists, is not empty and has no {marker}: edge-cls did not make it, so it was left "
        "as it is"
    )


@contextmanager
def atomic_directory(path: str | os.PathLike[str], *, marker: str | None = None) -> Iterator[Path]:
    """Yield an empty staging directory; on success it is flushed to disk and replaces ``path``
    as a whole.

    An existing ``path`` is kept until the new one is complete, then removed; if the swap itself
    fails, the old directory is put back. With ``marker``, an existing ``path`` is replaced only
    if it is empty or holds that file (see :func:`check_replaceable`): a directory edge-cls did
    not make is never removed, and :class:`NotOursError` is raised before any work.
    """
    path = Path(path)
    if marker is not None:
        check_replaceable(path, marker)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".staging", dir=path.parent))
    try:
        with _disk_full_is_an_error(path):
            yield staging
            fsync_tree(staging)
            _publishable(staging, directory=True)
            if marker is not None:
                check_replaceable(path, marker)  # again: something may have appeared while we worked
            if os.path.lexists(path):
                _swap(staging, path)
            else:
                os.replace(staging, path)
            fsync_directory(path.parent)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _swap(staging: Path, path: Path) -> None:
    retired = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
    os.replace(path, retired / path.name)
    try:
        os.replace(staging, path)
    except OSError:
        os.replace(retired / path.name, path)  # if even this fails, the old directory stays in `retired`
        os.rmdir(retired)
        raise
    shutil.rmtree(retired, ignore_errors=True)


def read_user_text(path: str | os.PathLike[str], what: str, error: type[EdgeClsError], hint: str = "") -> str:
    """A user's text file (a config, labels, a taxonomy, ...) as a string, or one ``error`` that names
    the file as ``what`` and, after ``hint``, says what to do."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path} does not exist")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{what} {path} is not readable UTF-8 text ({e}){hint}") from e
