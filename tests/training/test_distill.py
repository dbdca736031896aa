"""The distillation stage end to end on tiny models: teacher handling, multi-label, caching, resume."""

import numpy as np
import pytest
import torch

from edge_cls.errors import CheckpointError, ConfigError
from edge_cls.training.checkpoints import Checkpoint
from edge_cls.training.config import BuildConfig, DistillConfig, TrainConfig
from edge_cls.training.distill import run_distill
from edge_cls.training.models import ModelRecipe, create_model

TINY = dict(teacher="test_vit", student="test_efficientnet", input_size=32,
            teacher_train=TrainConfig(epochs=1, batch_size=32, lr=5e-3),
            student_train=TrainConfig(epochs=1, batch_size=32, lr=5e-3))


def test_distill_writes_checkpoints_runs_and_a_side_by_side_evaluation(digits_root, tmp_path):
    out = tmp_path / "b"
    outcome = run_distill(BuildConfig(out_dir=out, data_dir=digits_root, **TINY))
    assert [e.name.split(" ")[0] for e in outcome.evaluations] == ["teacher", "student_alone", "student"]
    assert {"top1", "top5", "ece", "mean_class_recall"} <= set(outcome.evaluations[0].metrics)
    for name in ("teacher", "student_alone", "student"):
        assert (out / "checkpoints" / f"{name}.pt").is_file()
        assert (out / "runs" / name / "metrics.csv").is_file()
        assert (out / f"confusion_{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert "| top1 |" in (out / "evaluation.md").read_text()
    assert "student_train:" in (out / "config.yaml").read_text()
    # both students started from the same weights, and the distilled one differs from the label-only one
    alone, kd = (
        Checkpoint.load(out / "checkpoints" / "student_alone.pt"),
        Checkpoint.load(out / "checkpoints" / "student.pt"),
    )
    assert not torch.equal(alone.state_dict["classifier.weight"], kd.state_dict["classifier.weight"])


def test_multi_label_csv_distils_and_reports_map_and_f1(multilabel_root, tmp_path):
    outcome = run_distill(
        BuildConfig(
            out_dir=tmp_path / "ml",
            data_dir=multilabel_root,
            compare_alone=False,
            **{**TINY, "student_train": TrainConfig(epochs=2, batch_size=32, lr=5e-3, mixup=0.2)},
        )
    )
    assert outcome.multi_label
    for evaluation in outcome.evaluations:
        assert {"mAP", "f1_micro", "f1_macro"} <= set(evaluation.metrics)
        assert 0 < evaluation.metrics["mAP"] <= 1
    assert "Per-class ap" in (tmp_path / "ml" / "evaluation.md").read_text()


def test_cached_teacher_logits_with_progressive_sizes(digits_root, tmp_path):
    out = tmp_path / "cached"
    config = BuildConfig(
        out_dir=out,
        data_dir=digits_root,
        compare_alone=False,
        distill=DistillConfig(cache_teacher=True),
        **{**TINY, "student_train": TrainConfig(epochs=2, batch_size=32, lr=5e-3, sizes=(24, 32))},
    )
    outcome = run_distill(config)
    logits = np.load(out / "runs" / "student" / "teacher_logits.npy")
    assert logits.shape == (240, 10)
    history = Checkpoint.load(outcome.student.checkpoint).metrics["history"]
    assert [h["size"] for h in history] == [24, 32]


def test_resume_loads_finished_stages_instead_of_retraining(digits_root, tmp_path, monkeypatch):
    config = BuildConfig(out_dir=tmp_path / "r", data_dir=digits_root, compare_alone=False, **TINY)
    first = run_distill(config)
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "r" / "checkpoints").iterdir()}
    from dataclasses import replace

    import edge_cls.training.stage as stage

    def no_training(*args, **kwargs):
        raise AssertionError("a finished stage was trained again")

    monkeypatch.setattr(stage, "fit", no_training)
    outcome = run_distill(replace(config, resume=True))
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "r" / "checkpoints").iterdir()} == stamps
    assert outcome.evaluations[-1].metrics == first.evaluations[-1].metrics


def test_teacher_weights_for_other_classes_get_a_new_head_and_fine_tuning(digits_root, tmp_path):
    torch.manual_seed(123)  # not the seed the stage creates its own model with
    hub_like = create_model(ModelRecipe(name="test_vit", num_classes=1000, kwargs={"img_size": 32}))
    weights = tmp_path / "test_vit_in1k.pth"
    torch.save(hub_like.state_dict(), weights)
    config = BuildConfig(out_dir=tmp_path / "ft", data_dir=digits_root, teacher_weights=weights, compare_alone=False,
                         **{**TINY, "teacher_train": TrainConfig(epochs=1, batch_size=32, lr=1e-9, warmup_epochs=0)})
    outcome = run_distill(config)
    teacher = Checkpoint.load(outcome.teacher.checkpoint)
    assert teacher.recipe.num_classes == 10 and len(teacher.metrics["history"]) == 1  # it was fine-tuned
    # lr ~0: the backbone is the file's (not a fresh init), the head is new and sized to the 10 classes
    torch.testing.assert_close(
        teacher.state_dict["blocks.0.attn.qkv.weight"], hub_like.state_dict()["blocks.0.attn.qkv.weight"]
    )
    assert teacher.state_dict["head.weight"].shape == (10, hub_like.embed_dim)
    from dataclasses import replace

    with pytest.raises(ConfigError, match="need fine-tuning"):
        run_distill(replace(config, teacher_finetune=False, out_dir=tmp_path / "ft2"))


def test_teacher_weights_that_do_not_fit_name_the_keys_and_shapes(digits_root, tmp_path):
    other = create_model(ModelRecipe(name="test_efficientnet", num_classes=10))
    weights = tmp_path / "wrong.pth"
    torch.save(other.state_dict(), weights)
    with pytest.raises(CheckpointError, match=r"do not fit VisionTransformer: .*keys missing from the file \(e\.g\. "):
        run_distill(BuildConfig(out_dir=tmp_path / "w", data_dir=digits_root, teacher_weights=weights, **TINY))


def test_a_dataset_directory_that_does_not_exist(tmp_path):
    with pytest.raises(ConfigError, match="is not a directory"):
        run_distill(BuildConfig(out_dir=tmp_path / "x", data_dir=tmp_path / "nope", **TINY))


def test_student_from_a_local_weights_file_for_other_classes(digits_root, tmp_path):
    imagenet_like = create_model(ModelRecipe(name="test_efficientnet", num_classes=1000))
    weights = tmp_path / "student_in1k.pth"
    torch.save(imagenet_like.state_dict(), weights)
    config = BuildConfig(out_dir=tmp_path / "s", data_dir=digits_root, student_weights=weights, compare_alone=False,
                         **{**TINY, "student_train": TrainConfig(epochs=1, batch_size=32, lr=1e-9, warmup_epochs=0)})
    outcome = run_distill(config)
    student = Checkpoint.load(outcome.student.checkpoint)
    # lr ~0: the backbone is still the file's, the head is new and sized to the 10 classes
    torch.testing.assert_close(student.state_dict["conv_stem.weight"], imagenet_like.state_dict()["conv_stem.weight"])
    assert student.state_dict["classifier.weight"].shape[0] == 10
    assert student.metrics["config"]["student_weights"] == str(weights)
