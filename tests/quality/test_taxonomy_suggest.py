"""Coarser classes where fine ones blur: the merge order follows the confusions, the levels nest, the file is
one ``--taxonomy`` reads, and on real digits the fitted merges beat random merges of the same sizes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from edge_cls.errors import ConfigError
from edge_cls.quality.taxonomy_suggest import grouped_accuracy, suggest, write_taxonomy
from edge_cls.taxonomy import Taxonomy

LABELS = ["cat", "lynx", "dog", "wolf", "car", "bus"]
CLI = [sys.executable, "-m", "edge_cls.cli"]


def confused(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of a model that mixes cat/lynx a lot and dog/wolf a little, on n images."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, len(LABELS), n)
    probabilities = rng.dirichlet(np.ones(len(LABELS)) * 0.3, n) * 0.2
    partner = {0: 1, 1: 0, 2: 3, 3: 2}
    for i, t in enumerate(targets):
        probabilities[i, t] += 0.5
        if t in partner:
            probabilities[i, partner[t]] += 0.45 if t < 2 else 0.25
    return probabilities / probabilities.sum(1, keepdims=True), targets


def test_the_most_confused_classes_merge_first_and_beat_random_merges():
    suggestion = suggest(confused(400, 0), LABELS, confused(400, 1))
    assert [level.groups for level in suggestion.levels] == [6, 5, 4, 3, 2, 1]
    assert [level.merged for level in suggestion.levels[1:3]] == ["cat+lynx", "dog+wolf"]
    four = suggestion.level(4)
    assert four.eval_accuracy > four.random_mean and four.fit_accuracy >= suggestion.level(6).fit_accuracy
    assert suggestion.taxonomy([4]) == {"cat": "cat+lynx", "lynx": "cat+lynx", "dog": "dog+wolf", "wolf": "dog+wolf"}
    nested = suggestion.taxonomy([5, 2])
    assert nested["cat"] == "cat+lynx" and set(nested.values()) <= set(suggestion.names.values())
    roots = {Taxonomy.from_mapping(nested, LABELS).path(label)[0] for label in LABELS}
    assert len(roots) == 2  # the coarsest level asked for: two groups
    assert "| 4 (suggested) | dog+wolf |" in "\n".join(suggestion.markdown([4]))
    with pytest.raises(ConfigError, match="not a level"):
        suggestion.level(7)


def test_grouped_accuracy_sums_probabilities_within_groups():
    probabilities = np.array([[0.4, 0.35, 0.25], [0.1, 0.5, 0.4]])
    assert grouped_accuracy(probabilities, np.array([0, 2]), np.array([0, 1, 1])) == 0.5  # 0.4 < 0.35 + 0.25
    assert grouped_accuracy(probabilities, np.array([2, 2]), np.array([0, 0, 0])) == 1.0


@pytest.mark.parametrize("suffix", [".yaml", ".json", ".csv"])
def test_the_written_file_is_a_taxonomy_file(tmp_path, suffix):
    mapping = suggest(confused(200, 2), LABELS).taxonomy([4, 2])
    path = write_taxonomy(tmp_path / f"tree{suffix}", mapping)
    assert Taxonomy.from_file(path, LABELS).to_dict() == Taxonomy.from_mapping(mapping, LABELS).to_dict()
    with pytest.raises(ConfigError, match="must end in"):
        write_taxonomy(tmp_path / "tree.txt", mapping)


@pytest.mark.slow
def test_suggest_taxonomy_on_digits_beats_random_merges_and_round_trips(artifacts, demo_root, tiny_checkpoint,
                                                                         digits_root, tmp_path, test_images):
    """CLI: fitted on the 500 validation digits, judged on the 500 test digits; the file goes back in through
    ``export --taxonomy`` and the artifact answers up that tree."""
    tree = tmp_path / "suggested.yaml"
    result = subprocess.run([*CLI, "suggest-taxonomy", str(artifacts["onnx-fp32"]), "--data-dir", str(demo_root),
                             "--groups", "5", "--output", str(tree), "--json"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    levels = {row["groups"]: row for row in json.loads(result.stdout)["levels"]}
    print("\n" + "\n".join(f"{g} groups: test {100 * r['eval_accuracy']:.1f}% vs random {100 * r['random_mean']:.1f}"
                           f"% ± {100 * r['random_std']:.1f}" for g, r in sorted(levels.items(), reverse=True)))
    assert levels[5]["eval_accuracy"] > levels[5]["random_mean"]  # like with like: same number and sizes of groups
    mapping = yaml.safe_load(tree.read_text())
    assert len({parent for child, parent in mapping.items() if child in {str(d) for d in range(10)}}) <= 5
    out = tmp_path / "out"
    exported = subprocess.run([*CLI, "export", "--checkpoint", str(tiny_checkpoint), "--calib-data",
                               str(digits_root / "val"), "--formats", "onnx", "--precisions", "fp32",
                               "--embedding-dims", "0", "--taxonomy", str(tree), "--output", str(out)],
                              capture_output=True, text=True, timeout=600)
    assert exported.returncode == 0, exported.stderr[-2000:]
    manifest = json.loads((out / "onnx-fp32" / "manifest.json").read_text())
    assert {k: v for k, v in manifest["taxonomy"].items() if v is not None} == mapping
    answer = json.loads(subprocess.run([*CLI, "predict", str(out / "onnx-fp32"), str(test_images[0]), "--json"],
                                       capture_output=True, text=True, timeout=120).stdout)[0]["predictions"][0]
    assert answer["path"][-1] == answer["label"] and len(answer["path"]) >= 1
