"""The check images a candidate is judged on, and the second fold of a cross-fitted check.

A :class:`ReferenceSet` holds the preprocessed check images, the float reference's logits on them,
their labels where there are any, the source picture of each image (crops of one photo, or files
that share a stem, are one picture: the uncertainty resamples pictures) and the reference's fitted
temperature (its probabilities say what a changed answer costs). Check images never served the
calibration of the candidate judged on them.

A small calibration folder cannot spare many images for checking. :class:`CrossFit` is the second
fold of a cross-fitted check: the folder is split in two halves, candidates are calibrated on the
first and checked on the second, then the finalists are calibrated on the second and checked on the
first, so every image is checked and none by a model calibrated on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_cls.calibration_data import CalibrationSet
from edge_cls.quality.acceptance import AcceptanceRule, Evidence, measure


@dataclass(frozen=True)
class ReferenceSet:
    """The check images: preprocessed, the float reference's logits on them, and (optionally) their
    true labels and source pictures."""

    batch: np.ndarray
    logits: np.ndarray
    targets: np.ndarray | None = None
    name: str = "test"
    groups: np.ndarray | None = None  # source picture of each image; None: each image is its own
    temperature: float = 1.0  # the reference's fitted temperature (labelled check sets), else 1
    images: tuple[Any, ...] | None = None  # the files of ``batch``: where preprocessing runs is chosen on them

    @classmethod
    def from_model(cls, model: Any, batch: np.ndarray, targets: np.ndarray | None = None, name: str = "test",
                   groups: np.ndarray | None = None, images: Any = None) -> ReferenceSet:
        """The PyTorch model's logits on ``batch``; with single-label targets, its temperature fitted there."""
        from edge_cls.quality.confidence import fit_temperature
        from edge_cls.training.models import predict_logits

        logits = predict_logits(model, batch)
        labelled = targets is not None and np.asarray(targets).ndim == 1
        temperature = fit_temperature(logits, targets) if labelled else 1.0
        return cls(batch, logits, targets, name, groups, float(temperature),
                   tuple(images) if images is not None else None)

    @property
    def pictures(self) -> int:
        return len(self) if self.groups is None else len(np.unique(self.groups))

    def __len__(self) -> int:
        return len(self.batch)

    def evidence(self, logits: np.ndarray, rule: AcceptanceRule) -> Evidence:
        """A candidate's evidence on these images (see :func:`edge_cls.quality.acceptance.measure`)."""
        return measure(self.logits, logits, temperature=self.temperature, targets=self.targets, groups=self.groups,
                       rule=rule)

    def joined(self, other: ReferenceSet, name: str) -> ReferenceSet:
        """Both folds as one check set (pictures stay apart: the other fold's group ids are shifted)."""
        mine = np.arange(len(self)) if self.groups is None else np.unique(self.groups, return_inverse=True)[1]
        theirs = np.arange(len(other)) if other.groups is None else np.unique(other.groups, return_inverse=True)[1]
        targets = None
        if self.targets is not None and other.targets is not None:
            targets = np.concatenate([self.targets, other.targets])
        images = self.images + other.images if self.images is not None and other.images is not None else None
        return ReferenceSet(np.concatenate([self.batch, other.batch]), np.concatenate([self.logits, other.logits]),
                            targets, name, np.concatenate([mine, theirs + mine.max() + 1]), self.temperature, images)


@dataclass(frozen=True)
class CrossFit:
    """The second fold: calibration images (the first fold's check images) and check images (the first
    fold's calibration images, with the reference's logits on them)."""

    calibration: CalibrationSet
    reference: ReferenceSet
