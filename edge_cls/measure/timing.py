"""Fair latency comparisons on a shared, noisy machine: round-robin timing.

Timing candidates one after another lets drift (another process, a thermal change, a frequency
step) decide which is faster: the demo once measured the same OpenVINO INT8 file at 0.68x its FP32
in one build and 1.07x in an interleaved re-measurement. :func:`round_robin` interleaves: every
round times a block of calls of each candidate in turn, so drift hits all of them alike, and the
spread over rounds says how far to trust a difference.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from edge_cls.errors import ConfigError


@dataclass(frozen=True)
class RoundRobinTiming:
    """Per-call milliseconds of one candidate: the median of each round's block, over rounds."""

    rounds_ms: tuple[float, ...]  # one value per round: the median call time of that round's block

    @property
    def p50_ms(self) -> float:
        return float(np.median(self.rounds_ms))

    @property
    def spread(self) -> float:
        """Interquartile range over rounds / median: 0.05 means the middle rounds agreed within 5%."""
        q1, q3 = np.percentile(self.rounds_ms, [25, 75])
        return float((q3 - q1) / self.p50_ms) if self.p50_ms > 0 else 0.0

    def rounds_faster_than(self, other: RoundRobinTiming) -> int:
        """In how many rounds this candidate was faster than ``other`` (paired by round)."""
        return sum(a < b for a, b in zip(self.rounds_ms, other.rounds_ms))

    def to_dict(self) -> dict[str, object]:
        return {"p50_ms": self.p50_ms, "spread": self.spread, "rounds_ms": list(self.rounds_ms)}


def round_robin(
    calls: Mapping[str, Callable[[], object]], *, rounds: int = 7, block: int = 20, warmup: int = 5,
    max_seconds: float = 60.0,
) -> dict[str, RoundRobinTiming]:
    """Time every callable in ``calls`` in interleaved rounds of ``block`` calls each.

    Each callable is warmed up ``warmup`` times first. If the whole comparison would exceed
    ``max_seconds``, the block shrinks (down to 3 calls) so large models stay bounded.
    """
    if rounds < 1 or block < 1 or warmup < 0:
        raise ConfigError("rounds and block must be >= 1 and warmup >= 0")
    if not calls:
        return {}
    one_call = {}
    for name, fn in calls.items():
        for _ in range(warmup):
            fn()
        started = time.perf_counter()
        fn()
        one_call[name] = time.perf_counter() - started
    budget_block = int(max_seconds / max(rounds * sum(one_call.values()), 1e-9))
    block = max(3, min(block, budget_block))
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            durations = []
            for _ in range(block):
                started = time.perf_counter()
                fn()
                durations.append(time.perf_counter() - started)
            times[name].append(1e3 * float(np.median(durations)))
    return {name: RoundRobinTiming(tuple(values)) for name, values in times.items()}
