"""A pool of per-call resources: what makes a backend safe to share between threads.

OpenVINO's ``InferRequest`` and TensorRT's execution context (with its stream and buffers) serve
one call at a time. Instead of one per thread (``threading.local`` leaks one per thread that ever
called, and cannot be released from :meth:`close`), a call borrows an idle one or creates one, and
gives it back: concurrent calls never share one, and at most as many exist as calls ever ran at
once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

from edge_cls.errors import EdgeClsError

T = TypeVar("T")


class PoolClosedError(EdgeClsError, RuntimeError):
    """A pool (and the backend that owns it) was used after ``close()``."""


class ResourcePool(Generic[T]):
    """Lends each caller its own ``T``, created by ``create`` on demand; ``release`` frees one at close."""

    def __init__(self, create: Callable[[], T], release: Callable[[T], None] | None = None) -> None:
        self._create = create
        self._release = release
        self._idle: list[T] = []
        self._every: list[T] = []
        self._lock = threading.Lock()
        self._closed = False

    @contextmanager
    def borrow(self) -> Iterator[T]:
        """Use one resource for the duration of the ``with`` block; no other caller gets it meanwhile."""
        with self._lock:
            if self._closed:
                raise PoolClosedError("the backend is closed")
            item = self._idle.pop() if self._idle else None
        if item is None:
            item = self._create()  # outside the lock: creating one may take a while
            with self._lock:
                closed = self._closed
                if not closed:
                    self._every.append(item)
            if closed:
                if self._release is not None:
                    self._release(item)
                raise PoolClosedError("the backend is closed")
        try:
            yield item
        finally:
            with self._lock:
                if not self._closed:
                    self._idle.append(item)

    @property
    def size(self) -> int:
        """How many resources exist (the most calls that ran at once)."""
        with self._lock:
            return len(self._every)

    def close(self) -> None:
        """Release every resource; idempotent. Callers must have finished (the Classifier waits for them)."""
        with self._lock:
            items, self._every, self._idle = self._every, [], []
            self._closed = True
        if self._release is not None:
            for item in items:
                self._release(item)
