"""The training-side dataset: an edge-cls split read through timm's transforms, for torch's DataLoader."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from timm.data import create_transform

from edge_cls.data import Split
from edge_cls.errors import DataError, InvalidImageError
from edge_cls.preprocess import PreprocessSpec, load_image
from edge_cls.training.config import TrainConfig

logger = logging.getLogger(__name__)


def train_transform(spec: PreprocessSpec, config: TrainConfig, size: int | None = None) -> Any:
    """timm's training transform (RandomResizedCrop, flips, normalise) at ``size`` (default: the spec's)."""
    size_hw = (size, size) if size else spec.input_size
    return create_transform(
        input_size=(3, *size_hw), is_training=True, scale=config.scale, hflip=config.hflip, color_jitter=None,
        interpolation=spec.interpolation, mean=spec.mean, std=spec.std,
    )


class ImageDataset:
    """A torch-style dataset over an ImageFolder split; ``transform`` maps a PIL RGB image to a tensor.

    An image that cannot be decoded is skipped (a neighbour is returned) and counted; too many
    skips stop the run, since the data set is then not what the user thinks.
    """

    max_bad_fraction = 0.05

    def __init__(
        self, split: Split, transform: Callable[[Image.Image], Any], extra_targets: np.ndarray | None = None
    ) -> None:
        self.split = split
        self.transform = transform
        self.extra_targets = extra_targets  # e.g. cached teacher logits, one row per image
        self.bad: set[Path] = set()

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        for offset in range(len(self.split)):
            i = (index + offset) % len(self.split)
            path = self.split.paths[i]
            try:
                image = self.transform(load_image(path))
                target = self.split.targets[i]
                if self.extra_targets is not None:
                    return image, (target, self.extra_targets[i])
                return image, target
            except InvalidImageError as e:
                if path not in self.bad:
                    self.bad.add(path)
                    logger.warning("skipping unreadable image: %s", e)
                if len(self.bad) > self.max_bad_fraction * len(self.split):
                    raise DataError(
                        f"{len(self.bad)} of {len(self.split)} images in {self.split.root} cannot be decoded; "
                        "fix or remove them"
                    ) from e
        raise DataError(f"no image in {self.split.root} can be decoded")
