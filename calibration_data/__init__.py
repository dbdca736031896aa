"""Representative calibration data for post-training quantization.

Images come from a folder (flat or ImageFolder) or a dataset split, are sampled reproducibly
(class-balanced when the classes are known), and are preprocessed by the artifact's own
:class:`~edge_cls.preprocess.PreprocessSpec`, so calibration sees exactly what the device sees.
Only numpy and pillow are needed here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from edge_cls.data import IMAGE_SUFFIXES, Split
from edge_cls.errors import DataError, InvalidImageError
from edge_cls.preprocess import PreprocessSpec

logger = logging.getLogger(__name__)

DEFAULT_SIZE = 300  # NNCF's default subset size


class CalibrationSet:
    """A fixed, preprocessed sample of images for quantization calibration."""

    def __init__(self, images: Sequence[str | os.PathLike[str]], spec: PreprocessSpec) -> None:
        if not images:
            raise DataError("a calibration set needs at least one image")
        tensors, skipped = [], []
        for image in images:
            try:
                tensors.append(spec(image))
            except InvalidImageError as e:
                skipped.append(str(image))
                logger.warning("calibration: skipping %s", e)
        if not tensors:
            raise DataError(f"none of the {len(images)} calibration images could be read")
        self.array = np.stack(tensors)
        self.skipped = skipped
        self.spec = spec

    @classmethod
    def from_folder(
        cls, folder: str | os.PathLike[str], spec: PreprocessSpec, *, size: int = DEFAULT_SIZE, seed: int = 0
    ) -> CalibrationSet:
        """Up to ``size`` images found anywhere under ``folder``, sampled with ``seed``."""
        folder = Path(folder)
        if not folder.is_dir():
            raise DataError(f"calibration folder {folder} does not exist or is not a directory")
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise DataError(f"calibration folder {folder} has no images")
        rng = np.random.default_rng(seed)
        chosen = [files[i] for i in sorted(rng.permutation(len(files))[:size])]
        return cls(chosen, spec)

    @classmethod
    def from_split(
        cls, split: Split, spec: PreprocessSpec, *, size: int = DEFAULT_SIZE, seed: int = 0
    ) -> CalibrationSet:
        """Up to ``size`` images of a dataset split, the same number from each class where possible
        (a multi-label image counts for its rarest label)."""
        rng = np.random.default_rng(seed)
        targets = stratum(split)
        per_class = [rng.permutation(np.flatnonzero(targets == c)) for c in range(len(split.classes))]
        chosen: list[int] = []
        depth = 0
        while len(chosen) < min(size, len(split)):
            for indices in per_class:
                if depth < len(indices) and len(chosen) < size:
                    chosen.append(int(indices[depth]))
            depth += 1
        return cls([split.paths[i] for i in sorted(chosen)], spec)

    def __len__(self) -> int:
        return len(self.array)

    def batches(self, batch_size: int = 1) -> Iterator[np.ndarray]:
        """Float32 batches in the spec's layout."""
        for start in range(0, len(self.array), batch_size):
            yield self.array[start:start + batch_size]


def stratum(split: Split) -> np.ndarray:
    """One class index per image to stratify by: the label, or a multi-label image's rarest label."""
    if not split.multi_label:
        return np.asarray(split.targets, dtype=np.int64)
    positives = split.targets > 0
    counts = positives.sum(0)
    rarity = np.where(positives, counts[None, :], np.iinfo(np.int64).max)
    return rarity.argmin(1)


__all__ = ["CalibrationSet", "DEFAULT_SIZE", "stratum"]
