"""Coarser classes where fine ones blur: merge the classes a model confuses most, step by step.

From a single-label model's probabilities on labelled images (the validation split), the soft
confusion between two classes is the probability mass images of one put on the other, both ways,
per image of the two: r(i, j) = (C[i, j] + C[j, i]) / (n_i + n_j). Agglomerative clustering with
average linkage on the distance 1 - r (SciPy's ``linkage``) merges the most-confused pair first,
then the most-confused groups, down to one. Each level is a partition of the classes; its accuracy
is top-1 over groups with probabilities summed within a group (what an artifact with that taxonomy
answers at that depth).

A coarser level is always at least as accurate, so a level is judged against random merges with
the same group sizes (the mean of :data:`RANDOM_DRAWS` draws) on held-out images (the test split):
merges that follow the model's confusions should gain more. :meth:`Suggestion.taxonomy` writes
chosen levels as a ``{class: parent}`` tree that ``--taxonomy`` reads. numpy (and SciPy) only.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edge_cls.errors import ConfigError

RANDOM_DRAWS = 20
MAX_SHOWN = 30  # levels compared with random merges and printed (the first merges: the most confused)
MAX_NAME = 60


@dataclass(frozen=True)
class Level:
    """One cut of the merge tree: ``groups`` groups, made by merging ``merged`` into one."""

    groups: int
    group_of: np.ndarray  # (classes,) group index of each class
    merged: str  # the new group's name ("" for the finest level)
    fit_accuracy: float
    eval_accuracy: float | None = None
    random_mean: float | None = None  # on the eval images (or the fit images without them)
    random_std: float | None = None


@dataclass
class Suggestion:
    labels: list[str]
    levels: list[Level]  # finest (every class its own group) first
    fit_name: str = "val"
    eval_name: str | None = "test"
    names: dict[frozenset[int], str] = field(default_factory=dict)

    def level(self, groups: int) -> Level:
        for level in self.levels:
            if level.groups == groups:
                return level
        raise ConfigError(f"{groups} groups is not a level of the suggestion (1..{len(self.labels)})")

    def taxonomy(self, groups: Sequence[int]) -> dict[str, str | None]:
        """The levels with ``groups`` groups (finer first), nested, as ``{child: parent}``."""
        nodes = [frozenset([i]) for i in range(len(self.labels))]
        parents: dict[str, str | None] = {}
        for count in sorted(set(groups), reverse=True):
            level = self.level(count)
            members = [frozenset(np.flatnonzero(level.group_of == g).tolist()) for g in range(level.groups)]
            for node in nodes:
                group = next(m for m in members if node <= m)
                if group != node:
                    parents[self._name(node)] = self._name(group)
            nodes = list(dict.fromkeys(m for m in members))
        return parents

    def _name(self, members: frozenset[int]) -> str:
        if len(members) == 1:
            return self.labels[next(iter(members))]
        return self.names[members]

    def rows(self) -> list[dict[str, Any]]:
        return [{"groups": lv.groups, "merged": lv.merged, "fit_accuracy": lv.fit_accuracy,
                 "eval_accuracy": lv.eval_accuracy, "random_mean": lv.random_mean, "random_std": lv.random_std}
                for lv in self.levels]

    def markdown(self, chosen: Sequence[int] = ()) -> list[str]:
        """A table of the first merges: accuracy per level on both splits, gained per merge, and random merges."""
        where = self.eval_name or self.fit_name
        lines = [f"| groups | merged | top-1 {self.fit_name} | gained | top-1 {where} | random merges, same sizes "
                 f"({RANDOM_DRAWS} draws) |", "|---|---|---|---|---|---|"]
        shown = [lv for lv in self.levels if lv.random_mean is not None]
        for previous, level in zip([None, *shown], shown):
            gained = "" if previous is None else f"+{100 * (level.fit_accuracy - previous.fit_accuracy):.1f}"
            test = "" if level.eval_accuracy is None else f"{100 * level.eval_accuracy:.1f}%"
            mark = " (suggested)" if level.groups in chosen else ""
            lines.append(f"| {level.groups}{mark} | {level.merged or '-'} | {100 * level.fit_accuracy:.1f}% | "
                         f"{gained} | {test} | {100 * level.random_mean:.1f}% ± {100 * level.random_std:.1f} |")
        return lines


def soft_confusion_rate(probabilities: np.ndarray, targets: np.ndarray, classes: int) -> np.ndarray:
    """(classes, classes) symmetric r(i, j): probability mass exchanged between i and j, per image of the two."""
    confusion = np.zeros((classes, classes))
    np.add.at(confusion, targets, probabilities)
    counts = np.bincount(targets, minlength=classes).astype(np.float64)
    rate = (confusion + confusion.T) / np.maximum(counts[:, None] + counts[None, :], 1.0)
    np.fill_diagonal(rate, 0.0)
    return np.clip(rate, 0.0, 1.0)


def grouped_accuracy(probabilities: np.ndarray, targets: np.ndarray, group_of: np.ndarray) -> float:
    """Top-1 over groups, with each group's probability the sum of its classes'."""
    membership = np.zeros((len(group_of), int(group_of.max()) + 1))
    membership[np.arange(len(group_of)), group_of] = 1.0
    return float(((probabilities @ membership).argmax(1) == group_of[targets]).mean())


def suggest(fit: tuple[np.ndarray, np.ndarray], labels: Sequence[str], evaluate: tuple[np.ndarray, np.ndarray] | None
            = None, *, fit_name: str = "val", eval_name: str = "test", seed: int = 0) -> Suggestion:
    """Merge the classes of ``labels`` fitted on ``fit`` (probabilities, class indices), scored on ``evaluate``."""
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import squareform

    probabilities, targets = _checked(fit, len(labels))
    if len(labels) < 2:
        raise ConfigError("merging classes needs at least 2 classes")
    distance = 1.0 - soft_confusion_rate(probabilities, targets, len(labels))
    np.fill_diagonal(distance, 0.0)
    merges = linkage(squareform(distance, checks=False), method="average")
    held_out = _checked(evaluate, len(labels)) if evaluate is not None else None
    suggestion = Suggestion(list(labels), [], fit_name, eval_name if held_out is not None else None)
    clusters = {i: frozenset([i]) for i in range(len(labels))}
    group_of = np.arange(len(labels))
    rng = np.random.default_rng(seed)
    for step in range(len(labels)):
        name = ""
        if step:
            a, b = int(merges[step - 1, 0]), int(merges[step - 1, 1])
            members = clusters.pop(a) | clusters.pop(b)
            clusters[len(labels) + step - 1] = members
            name = suggestion.names[members] = _group_name(members, labels, suggestion.names)
            group_of = _relabel(clusters, len(labels))
        suggestion.levels.append(_level(group_of, name, (probabilities, targets), held_out, step < MAX_SHOWN, rng))
    return suggestion


def _level(group_of: np.ndarray, name: str, fit: tuple[np.ndarray, np.ndarray],
           held_out: tuple[np.ndarray, np.ndarray] | None, compare: bool, rng: np.random.Generator) -> Level:
    scored = held_out if held_out is not None else fit
    level = Level(groups=int(group_of.max()) + 1, group_of=group_of, merged=name,
                  fit_accuracy=grouped_accuracy(*fit, group_of),
                  eval_accuracy=None if held_out is None else grouped_accuracy(*held_out, group_of))
    if not compare:
        return level
    draws = [grouped_accuracy(*scored, rng.permutation(group_of)) for _ in range(RANDOM_DRAWS)]
    return replace(level, random_mean=float(np.mean(draws)), random_std=float(np.std(draws)))


def _relabel(clusters: dict[int, frozenset[int]], classes: int) -> np.ndarray:
    group_of = np.empty(classes, dtype=np.int64)
    for g, members in enumerate(sorted(clusters.values(), key=min)):
        group_of[list(members)] = g
    return group_of


def _group_name(members: frozenset[int], labels: Sequence[str], taken: dict[frozenset[int], str]) -> str:
    names = [labels[i] for i in sorted(members)]
    name = "+".join(names)
    if len(name) > MAX_NAME:
        name = f"{names[0]}+{len(names) - 1} more"
    used = set(labels) | set(taken.values())
    base, n = name, 2
    while name in used:
        name, n = f"{base} ({n})", n + 1
    return name


def _checked(data: tuple[np.ndarray, np.ndarray], classes: int) -> tuple[np.ndarray, np.ndarray]:
    probabilities, targets = np.asarray(data[0], dtype=np.float64), np.asarray(data[1])
    if probabilities.ndim != 2 or probabilities.shape[1] != classes or targets.ndim != 1 or \
            len(targets) != len(probabilities) or not len(targets):
        raise ConfigError(f"expected (N, {classes}) probabilities and N class indices (N > 0), got "
                          f"{probabilities.shape} and {targets.shape}")
    if not math.isfinite(float(probabilities.sum())):
        raise ConfigError("the probabilities are not finite")
    return probabilities, targets.astype(np.int64)


def default_groups(classes: int) -> int:
    """The level suggested when none is asked for: half the classes (rounded up)."""
    return max(1, math.ceil(classes / 2))


def artifact_probabilities(classifier: Any, split: Any) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated probabilities of a single-label artifact on a labelled split, and the class indices."""
    from edge_cls.data import iter_split_batches
    from edge_cls.predictions import softmax

    if classifier.manifest.task != "single_label":
        raise ConfigError(f"{classifier.path} is a multi-label artifact: merging classes needs exclusive classes")
    parts, targets = [], []
    for batch, target in iter_split_batches(split, classifier.spec, placement=classifier.manifest.placement):
        parts.append(softmax(classifier.logits(batch), classifier.decision.temperature))
        targets.append(target)
    if not parts:
        raise ConfigError("the labelled images to fit the merges on are empty")
    return np.concatenate(parts), np.concatenate(targets)


def write_taxonomy(path: Path, mapping: dict[str, str | None]) -> Path:
    """Write ``{class: parent}`` as the file's suffix says (YAML, JSON or CSV): what ``--taxonomy`` reads."""
    import json

    from edge_cls._fileio import write_text_atomic

    suffix = path.suffix.lower()
    if suffix == ".json":
        text = json.dumps(mapping, indent=2) + "\n"
    elif suffix in (".yaml", ".yml"):
        import yaml

        text = yaml.safe_dump(mapping, sort_keys=False, allow_unicode=True)
    elif suffix == ".csv":
        import csv
        import io

        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerows([("class", "parent"), *mapping.items()])
        text = buffer.getvalue()
    else:
        raise ConfigError(f"taxonomy file {path} must end in .yaml, .yml, .json or .csv")
    write_text_atomic(path, text)
    return path


def build_report_section(out_dir: Path, artifact: Path, splits: dict[str, Any]) -> list[str]:
    """The build report's suggested tree: merges fitted on the validation split with the first shipped
    artifact, judged on the test split; writes ``<out_dir>/suggested_taxonomy.yaml``."""
    import time

    from edge_cls.runtimes import load

    started = time.perf_counter()
    with load(artifact) as classifier:
        if classifier.manifest.task != "single_label":
            return []
        labels = classifier.labels
        fit, held_out = (artifact_probabilities(classifier, splits[name]) for name in ("val", "test"))
    try:
        suggestion = suggest(fit, labels, held_out)
    except ImportError as e:  # SciPy is the taxonomy extra's: the report says how to get the section
        logging.getLogger(__name__).warning("no suggested taxonomy in the report (%s): pip install "
                                            "'edge-cls[taxonomy]'", e)
        return []
    groups = default_groups(len(labels))
    path = write_taxonomy(out_dir / "suggested_taxonomy.yaml", suggestion.taxonomy([groups]))
    logging.getLogger(__name__).info("suggested taxonomy: %d groups, %.1fs", groups, time.perf_counter() - started)
    return ["## Suggested coarser classes", "",
            f"The classes `{artifact.name}` confuses most on the validation split, merged step by step "
            "(agglomerative, average linkage on the symmetric soft confusion); top-1 over groups on both splits, "
            "against the mean of random merges with the same group sizes on the test split. "
            f"`{path.name}` holds the tree at {groups} groups: `--taxonomy {path.name}` stores it in artifacts.", "",
            *suggestion.markdown([groups]), ""]
