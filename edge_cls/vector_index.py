"""Scores and embeddings into a search index: one embedded LanceDB table, and the queries a pipeline runs.

``edge-cls predict ARTIFACT DIR -r --jsonl --embeddings`` (or :func:`edge_cls.runtimes.records.records`
with ``embeddings=True``) gives one record per image; :meth:`ImageIndex.add` stores them: the path,
the answer, whether it abstained, the taxonomy path, the top-k labels with their calibrated scores,
the vector, and which artifact and embedding space they came from. Then:

- :meth:`ImageIndex.similar` / :meth:`ImageIndex.like`: images like this vector (or this indexed
  image) whose calibrated score for class X is at least t, e.g. ``min_scores={"cat": 0.9}``;
- text -> images for zero-shot artifacts: embed the text with CLIP's text tower on the indexing host
  (:func:`edge_cls.training.clip.text_embeddings`), project it with the artifact's own embedding
  space, and search with that vector (``edge-cls search --text``).

A class outside an image's top-k has no stored score and fails the filter; with softmax scores that
is exact for thresholds above 1/(k + 1) (a class scoring t >= 1/(k + 1) is always in the top k).

Why LanceDB (``pip install 'edge-cls[index]'``): it is embedded (a directory, no server), stores any
columns beside the vector in Arrow, and applies a SQL ``where`` *before* the nearest-neighbour search
by default (prefiltering: the k answers all pass the filter, LanceDB's filtering docs), on list
columns too. sqlite-vec was the other candidate: smaller, but its Python use needs
``sqlite3.Connection.enable_load_extension``, which this machine's Python (3.11.7, like macOS's
system Python) is built without, and filters on a joined table run after the k-NN, not before.
faiss-cpu has no columns at all. Without an ANN index LanceDB searches exhaustively: exact answers,
fine up to about a million vectors; ``table.create_index`` adds IVF-PQ beyond that.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from edge_cls.errors import BackendUnavailableError, ConfigError, DataError

TABLE = "images"
BATCH = 1024  # records written at a time: memory stays bounded however many there are


def _lancedb() -> Any:
    try:
        import lancedb
    except ImportError as e:
        raise BackendUnavailableError("the search index needs LanceDB: pip install 'edge-cls[index]'") from e
    return lancedb


@dataclass(frozen=True)
class Hit:
    path: str
    distance: float  # cosine distance (1 - cosine similarity)
    answer: str | None
    scores: dict[str, float]  # the image's top-k calibrated scores

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "distance": self.distance, "answer": self.answer, "scores": self.scores}


class ImageIndex:
    """An embedded LanceDB table of image records; one embedding space per table."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._db = _lancedb().connect(str(self.path))
        self._table = self._db.open_table(TABLE) if TABLE in _tables(self._db) else None

    @property
    def count(self) -> int:
        return 0 if self._table is None else int(self._table.count_rows())

    @property
    def space(self) -> str | None:
        """The embedding space of the stored vectors (records of another space are refused)."""
        rows = self._first_rows("", 1)
        return rows[0]["space"] if rows else None

    def add(self, records: Iterable[Mapping[str, Any]]) -> int:
        """Store records that carry an embedding (others, e.g. unreadable images, are skipped); returns how many."""
        import pyarrow as pa

        added = 0
        iterator = iter(records)
        while batch := [row for row in map(_row, islice(iterator, BATCH)) if row is not None]:
            self._check_batch(batch)
            table = pa.Table.from_pylist(batch, schema=_schema(len(batch[0]["vector"])))
            if self._table is None:
                self._table = self._db.create_table(TABLE, table)
            else:
                self._table.add(table)
            added += len(batch)
        return added

    def similar(self, vector: np.ndarray, *, k: int = 10, min_scores: Mapping[str, float] | None = None) -> list[Hit]:
        """The ``k`` nearest images (cosine) among those whose calibrated score for each class in
        ``min_scores`` is at least its value."""
        table = self._require()
        vector = np.asarray(vector, dtype=np.float32).ravel()
        dims = len(self._first_rows("", 1)[0]["vector"])
        if len(vector) != dims:
            raise ConfigError(f"the query vector has {len(vector)} dimensions; the index holds {dims}")
        query = table.search(vector).metric("cosine").limit(k)
        condition = _score_filter(min_scores or {})
        if condition:
            query = query.where(condition, prefilter=True)
        return [Hit(row["path"], float(row["_distance"]), row["answer"], dict(zip(row["labels"], row["scores"])))
                for row in query.to_list()]

    def vector_of(self, path: str) -> np.ndarray:
        """The stored vector of an indexed image."""
        rows = self._first_rows(f"path = {_quote(str(path))}", 1)
        if not rows:
            raise DataError(f"{path} is not in the index {self.path}: index it first, or query with --text")
        return np.asarray(rows[0]["vector"], dtype=np.float32)

    def like(self, path: str, *, k: int = 10, min_scores: Mapping[str, float] | None = None) -> list[Hit]:
        """Images like an indexed one (itself first, at distance 0)."""
        return self.similar(self.vector_of(path), k=k, min_scores=min_scores)

    def _first_rows(self, where: str, limit: int) -> list[dict[str, Any]]:
        if self._table is None:
            return []
        query = self._table.search()
        return (query.where(where) if where else query).limit(limit).to_list()

    def _require(self) -> Any:
        if self._table is None:
            raise DataError(f"the index {self.path} is empty: add records first (edge-cls index)")
        return self._table

    def _check_batch(self, batch: list[dict[str, Any]]) -> None:
        spaces = {row["space"] for row in batch} | ({self.space} if self._table is not None else set())
        if len(spaces) > 1:
            raise DataError(f"records from different embedding spaces ({', '.join(sorted(map(str, spaces)))}) cannot "
                            f"share one index: their vectors are not comparable; use one index per artifact family")
        if len({len(row["vector"]) for row in batch}) > 1:
            raise DataError("records with vectors of different lengths cannot share one index")


def _tables(db: Any) -> list[str]:
    listed = db.list_tables() if hasattr(db, "list_tables") else db.table_names()
    return list(getattr(listed, "tables", listed))


def _schema(dims: int) -> Any:
    import pyarrow as pa

    return pa.schema([
        ("path", pa.string()), ("answer", pa.string()), ("abstained", pa.bool_()),
        ("hierarchy", pa.list_(pa.string())), ("labels", pa.list_(pa.string())), ("scores", pa.list_(pa.float32())),
        ("vector", pa.list_(pa.float32(), dims)), ("artifact", pa.string()), ("space", pa.string()),
    ])


def _row(record: Mapping[str, Any]) -> dict[str, Any] | None:
    """A table row from one record; None for a record without an embedding (an unreadable image)."""
    vector = record.get("embedding")
    if vector is None:
        if "error" in record:
            return None
        raise DataError(f"the record of {record.get('path')!r} has no embedding: write records with "
                        "'edge-cls predict --jsonl --embeddings' (an artifact with an embeddings output)")
    predictions = [p for p in record.get("predictions", []) if p.get("kind", "class") == "class"]
    artifact = record.get("artifact") or {}
    return {"path": str(record["path"]), "answer": record.get("answer"), "abstained": bool(record.get("abstained")),
            "hierarchy": list(record.get("hierarchy") or []), "labels": [str(p["label"]) for p in predictions],
            "scores": [float(p["score"]) for p in predictions], "vector": [float(v) for v in vector],
            "artifact": str(artifact.get("manifest_sha256", "")), "space": str(artifact.get("embedding_space", ""))}


def _score_filter(min_scores: Mapping[str, float]) -> str:
    """SQL for "the score of each class is at least t": labels are quoted, thresholds checked numbers."""
    parts = []
    for label, threshold in min_scores.items():
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
            raise ConfigError(f"the minimum score for {label!r} must be a probability in [0, 1], got {threshold!r}")
        position = f"CAST(array_position(labels, {_quote(label)}) AS BIGINT)"
        parts.append(f"array_element(scores, {position}) >= {float(threshold)!r}")
    return " AND ".join(parts)


def _quote(text: str) -> str:
    """A SQL string literal (standard SQL: a quote is doubled; no other escapes)."""
    if "\x00" in text:
        raise ConfigError("a label or path with a NUL character cannot be queried")
    return "'" + text.replace("'", "''") + "'"


def read_records(paths: Iterable[str | os.PathLike[str]]) -> Iterator[dict[str, Any]]:
    """Records from JSONL files (``-`` is standard input), one at a time."""
    import json
    import sys

    for path in paths:
        handle = sys.stdin if str(path) == "-" else open(path, encoding="utf-8")  # noqa: SIM115 - closed below
        try:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path}:{number} is not a JSON record ({e})") from e
        finally:
            if handle is not sys.stdin:
                handle.close()
