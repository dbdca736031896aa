"""Class hierarchies: a parent for each class, probabilities rolled up to every ancestor.

A taxonomy file names a parent per class (and, optionally, a parent per parent): YAML or JSON
``{"husky": "dog", "beagle": "dog", "dog": "animal"}``, or a CSV with columns ``class,parent``.
Training stays flat; at prediction time a single-label model's probabilities are summed up the
tree, so an artifact can answer "dog" when it cannot tell the breed (see
:func:`edge_cls.predictions.decide`). Only numpy: this runs on the device.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_cls._fileio import read_user_text
from edge_cls.errors import ConfigError

MAX_DEPTH = 32


@dataclass(frozen=True)
class Taxonomy:
    """The tree over a model's labels. ``parents`` maps every node to its parent (None: a root)."""

    labels: tuple[str, ...]
    parents: Mapping[str, str | None]
    nodes: tuple[str, ...] = field(init=False)  # every node: the labels first, then the inner nodes
    _index: dict[str, int] = field(init=False, repr=False, compare=False)
    _membership: np.ndarray = field(init=False, repr=False, compare=False)  # (labels, nodes) 0/1: label under node

    def __post_init__(self) -> None:
        labels = tuple(self.labels)
        parents = {str(k): (None if v in (None, "") else str(v)) for k, v in dict(self.parents).items()}
        for label in labels:
            parents.setdefault(label, None)
        inner = [p for p in parents.values() if p is not None and p not in parents]
        for node in inner:
            parents[node] = None
        nodes = labels + tuple(sorted(n for n in parents if n not in set(labels)))
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "parents", parents)
        object.__setattr__(self, "nodes", nodes)
        index = {n: i for i, n in enumerate(nodes)}
        object.__setattr__(self, "_index", index)
        membership = np.zeros((len(labels), len(nodes)), dtype=np.float64)
        for i, label in enumerate(labels):
            for node in (label, *self.ancestors(label)):
                membership[i, index[node]] = 1.0
        object.__setattr__(self, "_membership", membership)

    @classmethod
    def from_mapping(
        cls, mapping: Mapping[str, object], labels: Sequence[str], *, source: str = "taxonomy"
    ) -> Taxonomy:
        """``{child: parent}``; every key and value must be a string (a parent may be null: a root)."""
        if not isinstance(mapping, Mapping):
            raise ConfigError(f"{source} must map each class to its parent, got {type(mapping).__name__}")
        for child, parent in mapping.items():
            if not isinstance(child, str) or not (parent is None or isinstance(parent, str)):
                raise ConfigError(f"{source}: {child!r}: {parent!r} - classes and parents must be strings")
            if child == parent:
                raise ConfigError(f"{source}: {child!r} is its own parent")
        unknown = [c for c in mapping if c not in set(labels) and c not in set(mapping.values())]
        if unknown:
            raise ConfigError(f"{source}: {unknown[:5]} are neither classes of the model nor parents of one; "
                              f"classes: {list(labels)[:10]}...")
        return cls(tuple(labels), dict(mapping))  # type: ignore[arg-type]

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], labels: Sequence[str]) -> Taxonomy:
        """Read a YAML, JSON or CSV (``class,parent``) taxonomy file."""
        path = Path(path)
        text = read_user_text(path, "taxonomy file", ConfigError)
        suffix = path.suffix.lower()
        try:
            if suffix == ".json":
                mapping = json.loads(text)
            elif suffix in (".yaml", ".yml"):
                import yaml

                mapping = yaml.safe_load(text) or {}
            elif suffix == ".csv":
                rows = list(csv.DictReader(io.StringIO(text)))
                if not rows or not {"class", "parent"} <= set(rows[0]):
                    raise ConfigError(f"{path} needs a header 'class,parent'")
                mapping = {row["class"].strip(): (row["parent"] or "").strip() or None for row in rows}
            else:
                raise ConfigError(f"taxonomy file {path} must be .yaml, .yml, .json or .csv")
        except ConfigError:
            raise
        except Exception as e:  # json and yaml raise their own types
            raise ConfigError(f"taxonomy file {path} is not valid {suffix[1:].upper()}: {e}") from e
        return cls.from_mapping(mapping, labels, source=str(path))

    def to_dict(self) -> dict[str, str | None]:
        """Every node's parent: what the manifest stores."""
        return dict(self.parents)

    def ancestors(self, node: str) -> list[str]:
        """Parent, grandparent, ... of ``node``; a cycle is a ConfigError."""
        chain: list[str] = []
        parent = self.parents.get(node)
        while parent is not None:
            if parent in chain or parent == node or len(chain) >= MAX_DEPTH:
                raise ConfigError(f"the taxonomy has a cycle (or is deeper than {MAX_DEPTH}) above {node!r}: "
                                  f"{' -> '.join([node, *chain, parent])}")
            chain.append(parent)
            parent = self.parents.get(parent)
        return chain

    def path(self, node: str) -> tuple[str, ...]:
        """Root ... node."""
        return tuple(reversed([node, *self.ancestors(node)]))

    def depth(self, node: str) -> int:
        return len(self.ancestors(node))

    def roll_up(self, probabilities: np.ndarray, *, multi_label: bool = False) -> np.ndarray:
        """(N, labels) probabilities -> (N, nodes): a node's probability is the sum over the labels
        under it (single-label: exclusive classes), or their maximum (multi-label, a lower bound)."""
        probabilities = np.asarray(probabilities, dtype=np.float64)
        if probabilities.ndim != 2 or probabilities.shape[1] != len(self.labels):
            raise ConfigError(f"expected (N, {len(self.labels)}) probabilities, got {probabilities.shape}")
        if not multi_label:
            return np.clip(probabilities @ self._membership, 0.0, 1.0)
        return (probabilities[:, :, None] * self._membership[None]).max(1)

    def index(self, node: str) -> int:
        return self._index[node]

    def at_depth(self, node: str, depth: int) -> str | None:
        """The ancestor of ``node`` (or the node) at ``depth`` below the root; None if it is shallower."""
        path = self.path(node)
        return path[depth] if depth < len(path) else None

    def level_accuracy(self, probabilities: np.ndarray, targets: np.ndarray) -> dict[int, dict[str, float]]:
        """Top-1 accuracy at every depth of the tree: the most probable node at that depth (by
        rolled-up probability) against the true class's ancestor at that depth. Images whose class
        sits above a depth do not count there."""
        rolled = self.roll_up(probabilities)
        depth_of = {node: self.depth(node) for node in self.nodes}
        results: dict[int, dict[str, float]] = {}
        for depth in range(max(depth_of.values()) + 1):
            columns = [i for i, node in enumerate(self.nodes) if depth_of[node] == depth]
            truth = [self.at_depth(self.labels[t], depth) for t in targets]
            keep = np.array([t is not None for t in truth])
            if not keep.any():
                continue
            predicted = np.asarray(columns)[rolled[:, columns].argmax(1)]
            hits = [self.nodes[p] == t for p, t, k in zip(predicted, truth, keep) if k]
            results[depth] = {"accuracy": float(np.mean(hits)), "images": int(keep.sum()), "nodes": len(columns)}
        return results
