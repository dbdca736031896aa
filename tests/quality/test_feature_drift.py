"""Drift from features: the two-sample test alone (exact false-alarm rate, power), and ``check`` on a real
artifact whose drift reference is 500 validation digits: shifted folders (blurred, recoloured, a 20% change
of class mix) are flagged, fresh folders of the same distribution are flagged at most at the stated rate.
Seeds are fixed; the p-values are printed (``pytest -s``)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageFilter

from edge_cls.errors import ConfigError
from edge_cls.quality.feature_drift import ALPHA, mmd_test

FRESH_SIZE, SHIFTED_SIZE, MIX_SIZE = 100, 200, 400


def test_the_test_is_exact_under_the_null_and_sees_a_small_mean_shift():
    rng = np.random.default_rng(0)
    flagged = [mmd_test(rng.standard_normal((200, 8)), rng.standard_normal((100, 8)), permutations=100, seed=s).flagged
               for s in range(40)]
    assert sum(flagged) <= 2  # alpha 0.01: 0.4 expected of 40; P(>= 3) < 0.8%
    shifted = mmd_test(rng.standard_normal((300, 8)), rng.standard_normal((100, 8)) + 0.5)
    assert shifted.flagged and shifted.p_value < ALPHA and shifted.statistic > shifted.threshold
    assert mmd_test(np.eye(4)[:3], np.eye(4)[1:], seed=1).to_dict()["permutations"] == 500
    with pytest.raises(ConfigError, match="same d"):
        mmd_test(np.zeros((5, 3)), np.zeros((5, 4)))


@pytest.fixture(scope="module")
def drift_artifact(tiny_checkpoint, demo_root, digits_root, tmp_path_factory):
    """The tiny student exported with the 500 demo validation digits as check images (and drift reference);
    its PCA basis is fitted on the small training set it learned from."""
    from edge_cls.calibration_data import CalibrationSet
    from edge_cls.data import load_splits, preprocess_split, scan_image_folder
    from edge_cls.export import ReferenceSet, SearchSettings, export_artifacts, resolve_targets
    from edge_cls.training.checkpoints import Checkpoint

    checkpoint = Checkpoint.load(tiny_checkpoint)
    model = checkpoint.build()
    batch, targets = preprocess_split(scan_image_folder(demo_root / "val", classes=checkpoint.labels), checkpoint.spec)
    calibration = CalibrationSet.from_split(load_splits(digits_root)["train"], checkpoint.spec, size=240)
    [artifact] = export_artifacts(model, checkpoint.spec, checkpoint.labels, tmp_path_factory.mktemp("drift"),
                                  resolve_targets(["onnx"], ["fp32"]), reference=ReferenceSet.from_model(
                                      model, batch, targets, name="val"), calibration=calibration,
                                  search=SearchSettings(rounds=1, block=1))
    return artifact.path


def _unseen_training_digits(demo_root, digits_root) -> list:
    """Demo training images the tiny student never saw: fresh images of the validation distribution."""
    seen = {p.name for p in (digits_root / "train").rglob("*.png")}
    return sorted(p for p in (demo_root / "train").rglob("*.png") if p.name not in seen)


def _check(classifier, images) -> tuple[float, str]:
    """The feature test's p-value and the whole check's verdict (confidence and class-share PSI too)."""
    from edge_cls.predictions import softmax
    from edge_cls.quality.drift import compare

    logits, vectors = classifier.logits_and_embeddings(np.stack([classifier.spec(image) for image in images]))
    space = classifier.embedding_space
    report = compare(classifier.manifest.summary, softmax(logits, classifier.decision.temperature), classifier.labels)
    report.features = mmd_test(space.reference, space.drift_features(vectors))
    return report.features.p_value, report.verdict


def _shifted_sets(demo_root, fresh) -> dict[str, list]:
    rng = np.random.default_rng(0)
    test = sorted((demo_root / "test").rglob("*.png"))
    sample = [test[i] for i in rng.choice(len(test), SHIFTED_SIZE, replace=False)]
    ones = [p for p in fresh if p.parent.name == "1"]
    extra = int(0.2 * MIX_SIZE)  # 20% of the images replaced by ones: class 1 goes from ~11% to ~29%
    mix = [test[i] for i in rng.choice(len(test), MIX_SIZE - extra, replace=False)]
    mix += [ones[i] for i in rng.choice(len(ones), extra, replace=False)]
    return {
        "blurred": [Image.open(p).filter(ImageFilter.GaussianBlur(1.2)) for p in sample],
        "recoloured": [Image.fromarray((np.asarray(Image.open(p).convert("RGB")) * [1.0, 0.55, 0.2]).astype(np.uint8))
                       for p in sample],
        "class mix 20%": [str(p) for p in mix],
    }


@pytest.mark.slow
def test_shifted_folders_are_flagged_and_fresh_ones_at_the_stated_rate(drift_artifact, demo_root, digits_root):
    """Each shift is flagged by the feature test itself (the 20% class-mix change on 400 images: on 200 the tiny
    student's features gave p = 0.02) and by the whole check; fresh folders at most at the stated rate."""
    from edge_cls.runtimes import load

    fresh = _unseen_training_digits(demo_root, digits_root)
    rng = np.random.default_rng(1)
    order = rng.permutation(len(fresh))
    draws = [[str(fresh[i]) for i in order[start:start + FRESH_SIZE]]
             for start in range(0, len(order) - FRESH_SIZE + 1, FRESH_SIZE)]
    with load(drift_artifact) as clf:
        null = [_check(clf, images) for images in draws]
        shifted = {name: _check(clf, images) for name, images in _shifted_sets(demo_root, fresh).items()}
    alarms = sum(p < ALPHA for p, _ in null)
    print(f"\nfeature drift: {'; '.join(f'{k} p {p:.4f} ({v})' for k, (p, v) in shifted.items())}; fresh folders of "
          f"{FRESH_SIZE}: {alarms} of {len(null)} flagged at alpha {ALPHA} (min p {min(p for p, _ in null):.3f}, "
          f"median {np.median([p for p, _ in null]):.3f}); PSI verdicts of the fresh folders: "
          f"{sum(v != 'small' for _, v in null)} not small")
    assert len(null) >= 30 and alarms <= 2  # alpha 0.01: 0.37 expected of 37; P(>= 3) = 0.6%
    assert all(p < ALPHA for p, _ in shifted.values()), shifted
    assert all(verdict != "small" for _, verdict in shifted.values()), shifted


@pytest.mark.slow
def test_check_reports_the_feature_shift(drift_artifact, demo_root, tmp_path):
    """CLI: a blurred folder is flagged (verdict at least moderate), a fresh one passes."""
    test = sorted((demo_root / "test").rglob("*.png"))[::2]
    for name, transform in (("blurred", lambda im: im.filter(ImageFilter.GaussianBlur(1.2))), ("fresh", None)):
        folder = tmp_path / name
        folder.mkdir()
        for path in test:
            image = Image.open(path)
            (transform(image) if transform else image).save(folder / path.name)
        result = subprocess.run([sys.executable, "-m", "edge_cls.cli", "check", str(drift_artifact), "--images",
                                 str(folder), "--json"], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        shift = report["feature_shift"]
        print(f"\ncheck {name}: MMD^2 {shift['statistic']:.4f}, threshold {shift['threshold']:.4f}, "
              f"p {shift['p_value']:.4f}, verdict {report['verdict']}")
        assert shift["images"] == len(test) and shift["reference_images"] == 500
        assert shift["flagged"] == (name == "blurred")
        assert (report["verdict"] != "small") if name == "blurred" else shift["p_value"] >= ALPHA
