"""Zero-shot classifiers from a small, randomly initialised open_clip architecture: the mechanics
(text head, exported image tower, predictions through the runtime), not accuracy."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from edge_cls.errors import ConfigError
from edge_cls.training.clip import ZeroShotClassifier, load_clip, spec_for_clip, text_head, zero_shot_classifier

TINY = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}
CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "edgecls-tiny-clip.json"
    path.write_text(json.dumps(TINY))
    return path


def test_the_head_is_the_normalised_mean_of_the_prompt_embeddings(tiny_clip):
    torch.manual_seed(0)
    model, tokenizer = load_clip(str(tiny_clip), None)
    head = text_head(model, tokenizer, CLASSES[:3], templates=("a photo of a {}.", "a {}."))
    assert head.shape == (3, 32)
    torch.testing.assert_close(head.norm(dim=1), torch.ones(3))
    with torch.no_grad():
        one = torch.nn.functional.normalize(model.encode_text(tokenizer(["a photo of a one.", "a one."])), dim=-1)
    torch.testing.assert_close(head[1], torch.nn.functional.normalize(one.mean(0), dim=0))
    with pytest.raises(ConfigError, match="must contain"):
        text_head(model, tokenizer, CLASSES, templates=("no slot",))


def test_logits_are_scaled_cosine_similarities(tiny_clip):
    torch.manual_seed(0)
    classifier, spec = zero_shot_classifier(str(tiny_clip), None, CLASSES)
    assert isinstance(classifier, ZeroShotClassifier) and spec.input_size == (32, 32) and spec.crop_pct == 1.0
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = torch.nn.functional.normalize(classifier.visual(x), dim=-1)
        torch.testing.assert_close(classifier(x), classifier.logit_scale * features @ classifier.head.T)
    assert spec == spec_for_clip(load_clip(str(tiny_clip), None)[0])


@pytest.mark.slow
def test_zero_shot_artifact_end_to_end(tiny_clip, digits_root, tmp_path, test_images):
    """CLI: class names -> head -> exported image tower -> the runtime answers as PyTorch does; a new
    class list rebuilds only the head."""
    labels = tmp_path / "classes.txt"
    labels.write_text("\n".join(CLASSES))
    out = tmp_path / "zs"
    command = [sys.executable, "-m", "edge_cls.cli", "zero-shot", "--clip-model", str(tiny_clip), "--labels",
               str(labels), "--calib-data", str(digits_root / "val"), "--formats", "onnx", "--precisions", "fp32",
               "--output", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    from edge_cls.artifact.manifest import load_manifest
    from edge_cls.runtimes import load

    manifest = load_manifest(out / "onnx-fp32")
    assert manifest.labels == CLASSES and manifest.model_name == "clip:edgecls-tiny-clip"
    torch.manual_seed(0)
    with load(out / "onnx-fp32") as clf:
        batch = np.stack([clf.preprocess(p) for p in test_images])
        logits = clf.logits(batch)
        assert [p.label for p in clf.predict(test_images[0], k=3)] == [CLASSES[i] for i in np.argsort(-logits[0])[:3]]
    assert manifest.parity["top1_agreement"] == 1.0 and manifest.parity["max_abs_logit_error"] < 1e-3


@pytest.mark.slow
def test_a_clip_teacher_labels_unlabelled_images_and_distils(tiny_clip, digits_root, tmp_path):
    """No labels at all: CLIP answers for every image once (its top-1 is the label), the student
    distils from it, and the labels are kept in pseudo_labels.csv."""
    import csv

    from edge_cls.training.config import BuildConfig, TrainConfig
    from edge_cls.training.distill import run_distill

    root = tmp_path / "unlabelled"
    (root / "shots").mkdir(parents=True)
    for i, path in enumerate(sorted((digits_root / "train").rglob("*.png"))[::2]):
        (root / "shots" / f"{i:04d}.png").write_bytes(path.read_bytes())
    (root / "classes.txt").write_text("\n".join(CLASSES))
    torch.manual_seed(0)
    config = BuildConfig(out_dir=tmp_path / "out", data_dir=root, teacher=f"clip:{tiny_clip}",
                         student="test_efficientnet", input_size=32, compare_alone=False,
                         student_train=TrainConfig(epochs=1, batch_size=16, lr=5e-3))
    outcome = run_distill(config)
    rows = list(csv.DictReader((tmp_path / "out" / "pseudo_labels.csv").open()))
    assert len(rows) == 120 and {r["split"] for r in rows} == {"train", "val", "test"}
    assert {r["label"] for r in rows} <= set(CLASSES)
    teacher_eval = outcome.evaluations[0]
    assert teacher_eval.metrics["top1"] == 1.0  # the teacher agrees with its own labels: the figures are agreement
    assert outcome.student.checkpoint.is_file() and outcome.teacher.recipe.name == f"clip:{tiny_clip}"


def test_unlabelled_data_needs_a_teacher_that_knows_the_classes(digits_root, tmp_path):
    from edge_cls.training.config import BuildConfig
    from edge_cls.training.distill import run_distill

    root = tmp_path / "unlabelled"
    root.mkdir()
    for i, path in enumerate(sorted((digits_root / "val").rglob("*.png"))[:12]):
        (root / f"{i}.png").write_bytes(path.read_bytes())
    (root / "classes.txt").write_text("\n".join(CLASSES))
    with pytest.raises(ConfigError, match="has no labels: the teacher must already know its classes"):
        run_distill(BuildConfig(out_dir=tmp_path / "o", data_dir=root, teacher="test_vit", student="test_efficientnet",
                                input_size=32))
