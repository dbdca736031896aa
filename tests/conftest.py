"""Shared fixtures: real image files, a tiny trained model, and artifacts built from it once."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TINY_STUDENT = "test_efficientnet"  # timm's 0.1M-parameter test model
TINY_TEACHER = "test_vit"  # mean/std 0.5: differs from the student's ImageNet stats
TINY_SIZE = 32
PER_CLASS = {"train": 24, "val": 6, "test": 6}


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Calibration caches go to a temporary directory, for this process and the CLI subprocesses."""
    import os

    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if previous is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = previous


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """The full bundled demo set (5,000 MNIST PNGs), written once per session."""
    from edge_cls.data import write_demo_dataset

    return write_demo_dataset(tmp_path_factory.mktemp("demo") / "data")


@pytest.fixture(scope="session")
def digits_root(demo_root, tmp_path_factory) -> Path:
    """A small train/val/test ImageFolder copied from the demo set."""
    root = tmp_path_factory.mktemp("digits")
    for split, count in PER_CLASS.items():
        for class_dir in sorted((demo_root / split).iterdir()):
            target = root / split / class_dir.name
            target.mkdir(parents=True)
            for path in sorted(class_dir.iterdir())[:count]:
                shutil.copy(path, target / path.name)
    return root


@pytest.fixture(scope="session")
def tiny_checkpoint(digits_root, tmp_path_factory):
    """A tiny student trained for one epoch on the small digit set, saved as an edge-cls checkpoint."""
    import torch

    from edge_cls.data import load_splits
    from edge_cls.training.checkpoints import Checkpoint
    from edge_cls.training.config import TrainConfig
    from edge_cls.training.loop import criterion_for, fit
    from edge_cls.training.models import ModelRecipe, create_model, spec_for_model
    from edge_cls.training.tasks import classification_task

    splits = load_splits(digits_root)
    recipe = ModelRecipe(name=TINY_STUDENT, num_classes=10)
    torch.manual_seed(0)  # the same tiny student whichever tests ran first
    model = create_model(recipe)
    spec = spec_for_model(model, input_size=TINY_SIZE)
    config = TrainConfig(epochs=2, batch_size=32, lr=5e-3)
    fit(classification_task(model, criterion_for(splits["train"], config)), splits["train"], spec, config)
    path = tmp_path_factory.mktemp("ckpt") / "student.pt"
    Checkpoint.from_model(model.eval(), recipe, spec, splits["train"].classes).save(path)
    return path


@pytest.fixture(scope="session")
def artifacts(tiny_checkpoint, digits_root, tmp_path_factory) -> dict[str, Path]:
    """ONNX and OpenVINO artifacts, FP32 and INT8, of the tiny student, checked on the test split.

    A 2-epoch 32-px student is no INT8 showcase: the drop is accepted (``--accept-drop``) so the
    runtime tests get an INT8 artifact whatever its accuracy, from one recipe per backend."""
    from edge_cls.calibration_data import CalibrationSet
    from edge_cls.data import load_splits, preprocess_split
    from edge_cls.export import ReferenceSet, export_artifacts, resolve_targets
    from edge_cls.training.checkpoints import Checkpoint

    checkpoint = Checkpoint.load(tiny_checkpoint)
    model = checkpoint.build()
    splits = load_splits(digits_root)
    batch, targets = preprocess_split(splits["test"], checkpoint.spec)
    out = tmp_path_factory.mktemp("artifacts")
    exported = export_artifacts(
        model, checkpoint.spec, checkpoint.labels, out, resolve_targets(["onnx", "openvino"], ["fp32", "int8"]),
        reference=ReferenceSet.from_model(model, batch, targets),
        calibration=CalibrationSet.from_split(splits["train"], checkpoint.spec, size=32),
        model_name=TINY_STUDENT, search=quick_search_settings(accept_drop=True),
    )
    return {a.target.name: a.path for a in exported}


def quick_search_settings(**kwargs):
    """Search settings for tests: one INT8 recipe per backend, short timing."""
    from edge_cls.export import SearchSettings

    return SearchSettings(only=("ort-qdq-u8s8", "ov-nncf-mixed"), rounds=3, block=3, restore="never", **kwargs)


@pytest.fixture(scope="session")
def quick_search():
    return quick_search_settings


@pytest.fixture
def artifact_copy(artifacts, tmp_path):
    """A private copy of an artifact, for tests that tamper with it."""

    def copy(name: str) -> Path:
        target = tmp_path / name
        shutil.copytree(artifacts[name], target)
        return target

    return copy


@pytest.fixture(scope="session")
def test_images(digits_root) -> list[Path]:
    return sorted((digits_root / "test").rglob("*.png"))[::6][:8]


@pytest.fixture(scope="session")
def pytorch_logits(tiny_checkpoint):
    """Logits of the tiny student in PyTorch for a list of images: the reference."""
    import torch

    from edge_cls.training.checkpoints import Checkpoint

    checkpoint = Checkpoint.load(tiny_checkpoint)
    model = checkpoint.build()

    def run(images) -> np.ndarray:
        batch = np.stack([checkpoint.spec(image) for image in images])
        with torch.inference_mode():
            return model(torch.from_numpy(batch)).numpy()

    return run


@pytest.fixture(scope="session")
def multilabel_root(digits_root, tmp_path_factory) -> Path:
    """A multi-label CSV dataset over the small digit set: each image is its digit, and even or odd."""
    root = tmp_path_factory.mktemp("multilabel")
    for split in PER_CLASS:
        rows = ["path,labels"]
        for path in sorted((digits_root / split).rglob("*.png")):
            digit = int(path.parent.name)
            rows.append(f"{path},d{digit} {'even' if digit % 2 == 0 else 'odd'}")
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def small_disk(tmp_path):
    """A real 256 KiB tmpfs, to fill the disk for real (needs root and mount(2); where it cannot be
    mounted the test skips, and the fault-injection tests in tests/test_fileio.py and
    tests/training/test_state.py cover ENOSPC instead)."""
    import subprocess

    mount_point = tmp_path / "small"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({result.stderr.strip()})")
    yield mount_point
    subprocess.run(["umount", "--lazy", str(mount_point)], check=True)  # lazy: even if a file is still open


def _class_folders(root: Path, layout: dict[str, int]) -> Path:
    for cls, count in layout.items():
        (root / cls).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(root / cls / f"{i}.png")
    return root


@pytest.fixture
def make_folder():
    """``make_folder(root, {"class": n_images})``: an ImageFolder of tiny distinct PNGs; returns ``root``."""
    return _class_folders
