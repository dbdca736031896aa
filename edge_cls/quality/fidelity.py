"""How much a changed answer costs: the fidelity of a candidate (a lower precision, another image
path) against a reference, judged under the reference's own probabilities.

Top-1 agreement alone counts a flip between two near-tied classes as a whole image lost, and such
flips measure the images (crops where the reference itself hesitates), not the candidate. The
expected drop weighs each flip by what the reference thought of the two answers (Guillory et al.
2021, "difference of confidences"): an image whose top-1 moves from a class the reference gave 0.31
to one it gave 0.30 costs 0.01 of an image; a confident flip costs almost a whole one. Agreement
where the reference is confident (p >= 0.5) is reported beside it, since that is where a flip is
a real change of answer.

Torch-free (numpy only). The cost of one changed answer is :func:`edge_cls.quality.acceptance.change_costs`,
the precision search's own; this module judges an image path with it (no interval: every path sees the
same pictures, and the bar is a fixed 0.05 points).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edge_cls.errors import ConfigError
from edge_cls.quality.acceptance import CONFIDENT, change_costs


def expected_drop(reference_probabilities: np.ndarray, candidate_top1: np.ndarray) -> float:
    """Expected top-1 loss in points: the mean over images of p_ref(reference's top-1) minus
    p_ref(candidate's top-1), under the reference's probabilities ``(N, classes)``.

    0 when every answer agrees; at most 100 (every image flipped away from a certain reference).
    """
    probabilities, top1 = _checked(reference_probabilities, candidate_top1)
    return float(100.0 * change_costs(probabilities, top1).mean())


def confident_agreement(
    reference_probabilities: np.ndarray, candidate_top1: np.ndarray, *, threshold: float = CONFIDENT
) -> tuple[float | None, int]:
    """Top-1 agreement on the images where the reference's top-1 probability is at least
    ``threshold``, and how many such images there are (None when there are none)."""
    probabilities, top1 = _checked(reference_probabilities, candidate_top1)
    confident = probabilities.max(1) >= threshold
    count = int(confident.sum())
    if not count:
        return None, 0
    return float((probabilities.argmax(1)[confident] == top1[confident]).mean()), count


@dataclass(frozen=True, kw_only=True)
class Fidelity:
    """A candidate against its reference on one image set."""

    images: int
    expected_drop_points: float
    agreement: float  # top-1 agreement on every image
    confident_agreement: float | None  # where the reference's top-1 probability >= CONFIDENT
    confident_images: int
    max_abs_tensor_error: float | None = None  # of the model inputs, where both are float tensors

    @classmethod
    def measure(cls, reference_probabilities: np.ndarray, candidate_top1: np.ndarray, *,
                max_abs_tensor_error: float | None = None) -> Fidelity:
        probabilities, top1 = _checked(reference_probabilities, candidate_top1)
        confident, count = confident_agreement(probabilities, top1)
        return cls(images=len(top1), expected_drop_points=expected_drop(probabilities, top1),
                   agreement=float((probabilities.argmax(1) == top1).mean()), confident_agreement=confident,
                   confident_images=count, max_abs_tensor_error=max_abs_tensor_error)

    def keeps(self, *, max_drop_points: float, min_confident_agreement: float) -> bool:
        """Within both bars (no confident image at all counts as agreeing)."""
        confident = 1.0 if self.confident_agreement is None else self.confident_agreement
        return self.expected_drop_points <= max_drop_points + 1e-12 and confident >= min_confident_agreement - 1e-12

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _checked(probabilities: np.ndarray, top1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probabilities, top1 = np.asarray(probabilities), np.asarray(top1)
    if probabilities.ndim != 2 or top1.shape != (len(probabilities),) or not len(top1):
        raise ConfigError(
            f"expected reference probabilities (N, classes) and N candidate top-1 indices, got "
            f"{probabilities.shape} and {top1.shape}"
        )
    if top1.min() < 0 or top1.max() >= probabilities.shape[1]:
        raise ConfigError(f"candidate top-1 indices must lie in 0..{probabilities.shape[1] - 1}")
    return probabilities, top1.astype(np.int64, copy=False)
