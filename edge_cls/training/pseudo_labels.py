"""Unlabelled data, labelled by the teacher: distillation without ground truth.

An unlabelled dataset root is a folder of images (any layout below it) with a ``classes.txt``.
A teacher that already knows those classes (a CLIP zero-shot classifier built from their names,
``--kd-model-name clip:ViT-B-32``, or an edge-cls checkpoint trained on them) answers for every
image once; its top-1 becomes the image's label, recorded in ``<output>/pseudo_labels.csv``
(path, label, confidence), and the images are split 80/10/10 by a hash of their path (the same
split on every machine and run). The student then distils from the teacher as usual, and every
accuracy figure is agreement with the teacher: the reports say so.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from pathlib import Path

import numpy as np
import torch

from edge_cls._fileio import write_text_atomic
from edge_cls.data import ImageFolderSplit, Split, _read_classes, image_files
from edge_cls.errors import DataError
from edge_cls.preprocess import PreprocessSpec
from edge_cls.training.models import predict_logits

logger = logging.getLogger(__name__)

LABELS_FILE = "pseudo_labels.csv"
SPLIT_SHARES = {"train": 0.8, "val": 0.1, "test": 0.1}


def is_unlabelled_root(root: Path) -> bool:
    """A folder with ``classes.txt`` but neither train/val/test folders nor CSVs."""
    return (root / "classes.txt").is_file() and not (root / "train").is_dir() and not (root / "train.csv").is_file()


def unlabelled_images(root: Path) -> list[Path]:
    files = image_files(root)
    if len(files) < 10:
        raise DataError(f"{root} has {len(files)} images: an unlabelled root needs at least 10 (80/10/10 split)")
    return files


def split_of(path: Path, root: Path) -> str:
    """train, val or test, from a hash of the path relative to the root."""
    digest = hashlib.sha256(str(path.relative_to(root)).encode()).digest()
    position = int.from_bytes(digest[:4], "big") / 2**32
    return "train" if position < SPLIT_SHARES["train"] else "val" if position < 0.9 else "test"


def pseudo_labelled_splits(root: Path, teacher: torch.nn.Module, spec: PreprocessSpec, out_dir: Path,
                           *, batch_size: int = 64, write: bool = True) -> dict[str, Split]:
    """Label every image under ``root`` with the teacher's top-1 (streamed, ``batch_size`` at a
    time) and split them; ``write`` records the labels in ``out_dir/pseudo_labels.csv``."""
    classes = _read_classes(root / "classes.txt")
    files = unlabelled_images(root)
    if getattr(teacher, "num_classes", len(classes)) != len(classes):
        raise DataError(f"the teacher predicts {teacher.num_classes} classes, {root / 'classes.txt'} lists "
                        f"{len(classes)}: they must be the same list")
    labels, confidence = [], []
    for start in range(0, len(files), batch_size):
        batch = np.stack([spec(p) for p in files[start:start + batch_size]])
        probs = torch.softmax(torch.from_numpy(predict_logits(teacher, batch)), -1).numpy()
        labels += probs.argmax(1).tolist()
        confidence += probs.max(1).tolist()
    if write:
        buffer = io.StringIO()
        rows = csv.writer(buffer)
        rows.writerow(["path", "label", "confidence", "split"])
        for path, label, conf in zip(files, labels, confidence):
            rows.writerow([str(path), classes[label], f"{conf:.4f}", split_of(path, root)])
        write_text_atomic(out_dir / LABELS_FILE, buffer.getvalue())
    logger.info("labelled %d unlabelled images with the teacher (mean confidence %.2f): accuracy figures below "
                "are agreement with the teacher", len(files), float(np.mean(confidence)))
    splits = {}
    for name in SPLIT_SHARES:
        chosen = [(p, t) for p, t in zip(files, labels) if split_of(p, root) == name]
        if not chosen:
            raise DataError(f"{root}: no image fell into the {name} split; add images")
        splits[name] = ImageFolderSplit(root, list(classes), [p for p, _ in chosen], [t for _, t in chosen])
    return splits
