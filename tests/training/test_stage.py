"""A training stage's memory does not grow with the data set: streamed splits, memory-mapped caches."""

import tracemalloc

import numpy as np
import pytest
import torch

import edge_cls.training.stage as stage
from edge_cls.data import load_splits, preprocess_split, scan_image_folder
from edge_cls.training.config import TrainConfig
from edge_cls.training.distributed import DistContext
from edge_cls.training.models import ModelRecipe, create_model, predict_logits, spec_for_model
from edge_cls.training.stage import StageModel, StagePaths, Trained, cache_teacher_logits, train_stage


def peak_traced(work):
    """Peak bytes traced while ``work`` runs (numpy reports its buffers to tracemalloc; torch does not)."""
    tracemalloc.start()
    try:
        result = work()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture
def teacher(tmp_path):
    torch.manual_seed(0)
    model = create_model(ModelRecipe(name="test_vit", num_classes=10, kwargs={"img_size": 32})).eval()
    recipe = ModelRecipe(name="test_vit", num_classes=10, kwargs={"img_size": 32})
    return Trained("teacher", model, recipe, spec_for_model(model, input_size=32), tmp_path / "teacher.pt")


def test_the_teacher_logit_cache_is_streamed_into_a_memory_mapped_file(teacher, digits_root, tmp_path, monkeypatch):
    split = load_splits(digits_root)["train"]
    monkeypatch.setattr(stage, "PREDICT_BATCH", 16)
    path = tmp_path / "run" / "teacher_logits.npy"
    logits, peak = peak_traced(lambda: cache_teacher_logits(teacher, split, path, DistContext()))
    whole_split = len(split) * 3 * 32 * 32 * 4
    assert peak < whole_split / 4, (peak, whole_split)  # before: the whole split, preprocessed, in memory
    assert isinstance(logits, np.memmap) and logits.shape == (len(split), 10)
    batch, _ = preprocess_split(split, teacher.spec)
    np.testing.assert_allclose(logits, predict_logits(teacher.model, batch), atol=1e-5)
    np.testing.assert_array_equal(np.load(path), logits)


def test_a_truncated_teacher_logit_cache_is_computed_again(teacher, digits_root, tmp_path):
    split = load_splits(digits_root)["train"]
    path = tmp_path / "teacher_logits.npy"
    first = np.array(cache_teacher_logits(teacher, split, path, DistContext()))
    path.write_bytes(path.read_bytes()[:200])  # a crash of another tool, a full disk, ...
    again = cache_teacher_logits(teacher, split, path, DistContext(), reuse=True)  # before: ValueError
    np.testing.assert_array_equal(again, first)


def test_a_stage_holds_neither_its_validation_nor_its_test_split_in_memory(demo_root, digits_root, tmp_path):
    """500 validation and 500 test images at 64 px are 24.6 MB each when preprocessed; the stage
    must hold a batch at a time."""
    import torch.utils.tensorboard  # noqa: F401 - imported before measuring: its modules are not data

    demo = load_splits(demo_root)
    train = scan_image_folder(digits_root / "train")
    splits = {"train": train, "val": demo["val"], "test": demo["test"]}
    start = StageModel(recipe=ModelRecipe(name="test_efficientnet", num_classes=10), input_size=64)
    paths = StagePaths(tmp_path / "student.pt", tmp_path / "runs" / "student")
    config = TrainConfig(epochs=1, batch_size=32, lr=5e-3)
    trained, peak = peak_traced(lambda: train_stage("student", start, splits, config, paths, DistContext()))
    one_split = len(demo["val"]) * 3 * 64 * 64 * 4
    assert peak < one_split / 2, (peak, one_split)
    assert trained.checkpoint.is_file() and not (paths.run_dir / "val.npy").exists()
