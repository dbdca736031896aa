"""Representative calibration data for post-training quantization, kept apart from check data.

Images come from a folder (flat or ImageFolder) or a dataset split, are sampled reproducibly
(class-balanced when the classes are known), and are preprocessed by the artifact's own
:class:`~edge_cls.preprocess.PreprocessSpec`, so calibration sees exactly what the device sees.
:func:`split_folder` divides one folder into calibration images and check images that never
overlap (stratified by class where the folder is an ImageFolder), so an INT8 artifact is never
judged on the images it was calibrated on. Small folders can be augmented (flips and crops);
preprocessed sets can be cached on disk, keyed by the spec and the files. Only numpy and pillow.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ImageOps

from edge_cls._fileio import atomic_path
from edge_cls.data import Split, image_files
from edge_cls.errors import DataError, InvalidImageError
from edge_cls.preprocess import PreprocessSpec, load_image, transform

logger = logging.getLogger(__name__)

DEFAULT_SIZE = 300  # NNCF's default subset size
FEW_IMAGES = 100  # below this, calibration statistics are noisy: warn
DEFAULT_CHECK_SIZE = 500


class CalibrationSet:
    """A fixed, preprocessed sample of images for quantization calibration."""

    def __init__(self, images: Sequence[str | os.PathLike[str]], spec: PreprocessSpec, *, augment_to: int = 0,
                 seed: int = 0, cache_dir: Path | None = None) -> None:
        if not images:
            raise DataError("a calibration set needs at least one image")
        self.spec = spec
        self.skipped: list[str] = []
        key = _cache_key(images, spec, augment_to, seed)
        cached = cache_dir / f"calibration-{key}.npy" if cache_dir else None
        if cached is not None and cached.is_file():
            self.array = np.load(cached)
            logger.info("calibration: %d preprocessed images from the cache %s", len(self.array), cached)
            return
        tensors = self._read(images)
        if augment_to > len(tensors):
            tensors += _augmented(images, spec, augment_to - len(tensors), seed)
        self.array = np.stack(tensors)
        if len(self.array) < FEW_IMAGES:
            logger.warning("calibrating on only %d images: INT8 statistics from fewer than %d are noisy; add "
                           "images or augment them (--calib-augment)", len(self.array), FEW_IMAGES)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(cached) as tmp, open(tmp, "wb") as f:
                np.save(f, self.array)

    def _read(self, images: Sequence[str | os.PathLike[str]]) -> list[np.ndarray]:
        tensors = []
        for image in images:
            try:
                tensors.append(self.spec(image))
            except InvalidImageError as e:
                self.skipped.append(str(image))
                logger.warning("calibration: skipping %s", e)
        if not tensors:
            raise DataError(f"none of the {len(images)} calibration images could be read")
        return tensors

    @classmethod
    def from_folder(
        cls, folder: str | os.PathLike[str], spec: PreprocessSpec, *, size: int = DEFAULT_SIZE, seed: int = 0,
        **kwargs: object,
    ) -> CalibrationSet:
        """Up to ``size`` images found anywhere under ``folder``, sampled with ``seed``."""
        files = image_files(folder)
        rng = np.random.default_rng(seed)
        chosen = [files[i] for i in sorted(rng.permutation(len(files))[:size])]
        return cls(chosen, spec, seed=seed, **kwargs)  # type: ignore[arg-type]

    @classmethod
    def from_split(cls, split: Split, spec: PreprocessSpec, *, size: int = DEFAULT_SIZE, seed: int = 0,
                   **kwargs: object) -> CalibrationSet:
        """Up to ``size`` images of a dataset split, the same number from each class where possible
        (a multi-label image counts for its rarest label)."""
        chosen = stratified_sample(stratum(split), size, seed)
        return cls([split.paths[i] for i in chosen], spec, seed=seed, **kwargs)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.array)

    def batches(self, batch_size: int = 1) -> Iterator[np.ndarray]:
        """Float32 batches in the spec's layout."""
        for start in range(0, len(self.array), batch_size):
            yield self.array[start:start + batch_size]


@dataclass(frozen=True)
class FolderSplit:
    """One folder divided into calibration and check images that never overlap (nor share a picture)."""

    calibration: list[Path]
    check: list[Path]
    check_targets: np.ndarray | None  # class indices into the labels, when the folder is an ImageFolder
    classes: list[str] | None
    calibration_targets: np.ndarray | None = None


def picture_ids(files: Sequence[str | os.PathLike[str]]) -> np.ndarray:
    """One id per file for the picture it shows: files in one folder whose names agree up to the first
    dot are one picture (``cat.jpg``, ``cat.png``, ``cat.crop2.jpg``: a picture, its other formats, its
    crops). Splits and uncertainties work on pictures, never on files, so one picture is never both
    calibrated on and checked with, nor counted as several pieces of evidence."""
    ids: dict[tuple[str, str], int] = {}
    return np.array([ids.setdefault((str(Path(f).parent), Path(f).name.split(".")[0]), len(ids)) for f in files],
                    dtype=np.int64)


def default_cache_dir() -> Path | None:
    """Where preprocessed calibration sets are cached between exports: ``$XDG_CACHE_HOME/edge-cls``
    (``~/.cache/edge-cls``); ``EDGE_CLS_CACHE`` names another directory, or ``off`` turns caching off."""
    setting = os.environ.get("EDGE_CLS_CACHE", "")
    if setting.lower() in ("off", "0", "no", "false"):
        return None
    if setting:
        return Path(setting)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edge-cls"


def folder_labels(folder: Path, files: list[Path], labels: Sequence[str]) -> np.ndarray | None:
    """Class indices of ``files`` when ``folder`` is an ImageFolder of the model's labels, else None."""
    index = {name: i for i, name in enumerate(labels)}
    parents = [p.relative_to(folder).parts for p in files]
    if any(len(parts) < 2 or parts[0] not in index for parts in parents):
        return None
    return np.array([index[parts[0]] for parts in parents], dtype=np.int64)


def split_folder(folder: str | os.PathLike[str], labels: Sequence[str], *, calibration_size: int = DEFAULT_SIZE,
                 check_size: int = DEFAULT_CHECK_SIZE, check_fraction: float = 0.3, seed: int = 0) -> FolderSplit:
    """Divide one folder into check pictures (``check_fraction`` of them, at most ``check_size`` images)
    and calibration pictures (the rest, at most ``calibration_size`` images), stratified by class when
    the folder is an ImageFolder whose sub-directories are the model's labels. A picture's files
    (:func:`picture_ids`) all go to one side."""
    folder = Path(folder)
    files = image_files(folder)
    pictures = picture_ids(files)
    if pictures.max() < 1:
        raise DataError(f"{folder} holds {len(files)} image(s) of one picture: it cannot give both calibration and "
                        "check images; add images or pass --check-data")
    targets = folder_labels(folder, files, labels)
    first = np.unique(pictures, return_index=True)[1]  # one file per picture, to stratify pictures by class
    strata = targets[first] if targets is not None else np.zeros(len(first), dtype=np.int64)
    n_check = max(1, min(check_size, int(round(check_fraction * len(first))), len(first) - 1))
    check_pictures = stratified_sample(strata, n_check, seed)
    rest = np.setdiff1d(np.arange(len(first)), check_pictures)
    calibration_pictures = rest[stratified_sample(strata[rest], calibration_size, seed + 1)]
    check_index = np.flatnonzero(np.isin(pictures, check_pictures))[:check_size]
    calibration_index = np.flatnonzero(np.isin(pictures, calibration_pictures))[:calibration_size]
    return FolderSplit(
        calibration=[files[i] for i in calibration_index], check=[files[i] for i in check_index],
        check_targets=None if targets is None else targets[check_index],
        classes=None if targets is None else list(labels),
        calibration_targets=None if targets is None else targets[calibration_index],
    )


def stratified_sample(strata: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """Up to ``size`` sorted indices, taking from each stratum in turn (round-robin), seeded."""
    rng = np.random.default_rng(seed)
    strata = np.asarray(strata)
    groups = [rng.permutation(np.flatnonzero(strata == s)) for s in np.unique(strata)]
    chosen: list[int] = []
    depth = 0
    while len(chosen) < min(size, len(strata)):
        for indices in groups:
            if depth < len(indices) and len(chosen) < size:
                chosen.append(int(indices[depth]))
        depth += 1
    return np.array(sorted(chosen), dtype=np.int64)


def stratum(split: Split) -> np.ndarray:
    """One class index per image to stratify by: the label, or a multi-label image's rarest label."""
    if not split.multi_label:
        return np.asarray(split.targets, dtype=np.int64)
    positives = split.targets > 0
    counts = positives.sum(0)
    rarity = np.where(positives, counts[None, :], np.iinfo(np.int64).max)
    return rarity.argmin(1)


def _augmented(
    images: Sequence[str | os.PathLike[str]], spec: PreprocessSpec, count: int, seed: int
) -> list[np.ndarray]:
    """``count`` extra calibration tensors: horizontal flips and random crops (60-100% of the area)
    of the images, seeded. Calibration needs the activation ranges of realistic inputs, not new
    labels, so these simple views widen a small folder's statistics."""
    rng = np.random.default_rng(seed + 7919)
    out: list[np.ndarray] = []
    readable = []
    for path in images:
        try:
            readable.append(load_image(path))
        except InvalidImageError:
            continue
    if not readable:
        return out
    while len(out) < count:
        image = readable[int(rng.integers(len(readable)))]
        w, h = image.size
        scale = float(rng.uniform(0.6, 1.0)) ** 0.5
        cw, ch = max(1, int(w * scale)), max(1, int(h * scale))
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        view = image.crop((left, top, left + cw, top + ch))
        if rng.random() < 0.5:
            view = ImageOps.mirror(view)
        out.append(transform(view.convert("RGB") if view.mode != "RGB" else view, spec))
    return out


def _cache_key(images: Sequence[str | os.PathLike[str]], spec: PreprocessSpec, augment_to: int, seed: int) -> str:
    """What a cached set depends on: the spec, each file (path, size, mtime), augmentation, seed."""
    entries = []
    for image in images:
        try:
            stat = os.stat(image)
            entries.append([str(image), stat.st_size, stat.st_mtime_ns])
        except OSError:
            entries.append([str(image), -1, -1])
    payload = json.dumps({"spec": spec.to_dict(), "files": entries, "augment_to": augment_to, "seed": seed},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


__all__ = ["CalibrationSet", "DEFAULT_CHECK_SIZE", "DEFAULT_SIZE", "FolderSplit", "default_cache_dir", "picture_ids",
           "split_folder", "stratified_sample", "stratum"]
