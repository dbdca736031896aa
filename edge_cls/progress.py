"""Progress that suits where it goes: a redrawn bar on a terminal, sparse log lines elsewhere.

On a terminal (stderr is a TTY) long loops show a tqdm bar. When stderr is a file or a CI log,
redrawn frames would fill it with carriage-return noise, so instead a loop logs at most one line
every ``LINE_SECONDS`` (and the caller logs one line per epoch or stage). ``EDGE_CLS_PROGRESS``
overrides the choice: ``bar``, ``lines`` or ``off``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from typing import Any, Generic, TypeVar

logger = logging.getLogger("edge_cls.progress")

T = TypeVar("T")
LINE_SECONDS = 30.0
MODES = ("bar", "lines", "off")


def progress_mode() -> str:
    """``bar`` on a terminal with tqdm installed, else ``lines``; ``EDGE_CLS_PROGRESS`` overrides."""
    forced = os.environ.get("EDGE_CLS_PROGRESS", "").strip().lower()
    if forced in MODES:
        return forced
    try:
        interactive = sys.stderr.isatty()
    except (AttributeError, ValueError):
        interactive = False
    if not interactive:
        return "lines"
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return "lines"
    return "bar"


class _Lines(Generic[T]):
    """Iterates ``iterable``, logging ``desc: done/total`` at most every LINE_SECONDS."""

    def __init__(self, iterable: Iterable[T] | None, desc: str, total: int | None, unit: str, enabled: bool) -> None:
        self._iterable = iterable
        self.desc, self.total, self.unit, self.enabled = desc, total, unit, enabled
        self.n = 0
        self._postfix = ""
        self._next_line = time.monotonic() + LINE_SECONDS

    def __iter__(self) -> Iterator[T]:
        for item in self._iterable or ():
            yield item
            self.update(1)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.enabled and time.monotonic() >= self._next_line:
            self._next_line = time.monotonic() + LINE_SECONDS
            of = f"/{self.total}" if self.total else ""
            logger.info("%s: %d%s %s%s", self.desc, self.n, of, self.unit, self._postfix)

    def set_postfix(self, **values: Any) -> None:
        self._postfix = " (" + ", ".join(f"{k} {v}" for k, v in values.items()) + ")"

    def close(self) -> None:
        pass

    def __enter__(self) -> _Lines[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def library_output() -> Iterator[None]:
    """Around a library call that draws its own progress on stdout (NNCF's rich bars, ORT's
    calibrators): keep stdout for the command's own output; show the bars on stderr in ``bar``
    mode, drop them otherwise. The libraries' Python warnings (the tracer's, torch's) are about their
    own internals, not the user's input: they are silenced here, so an error stays one line."""
    target = sys.stderr if progress_mode() == "bar" else io.StringIO()
    with contextlib.redirect_stdout(target), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def progress(
    iterable: Iterable[T] | None = None, *, desc: str = "", total: int | None = None, unit: str = "it",
    enabled: bool = True,
) -> Any:
    """Wrap ``iterable`` (or count ``update()`` calls) with progress suited to stderr.

    The result iterates like ``iterable`` and has ``update(n)``, ``set_postfix(**values)`` and
    ``close()`` in every mode; ``enabled=False`` (e.g. ranks other than 0) shows nothing.
    """
    mode = progress_mode() if enabled else "off"
    if mode == "bar":
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, mininterval=1.0, dynamic_ncols=True)
    return _Lines(iterable, desc, total, unit, enabled=mode == "lines")
