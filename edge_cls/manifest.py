"""The artifact manifest: one schema-versioned JSON file that describes an artifact directory.

It holds the preprocessing spec, the labels, the backend and precision, the input shape, every
file with its sha256, the parity and accuracy figures, and the versions of the tools that made
the artifact. It is validated on load: a missing field, a wrong type, an unknown schema version
or a file whose hash does not match is an :class:`ArtifactError` that says what to do.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ._fileio import sha256_file, write_json_atomic
from .backends import BACKEND_NAMES
from .errors import ArtifactError, ConfigError
from .predictions import TASKS
from .preprocess import PreprocessSpec

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1
FORMAT_NAME = "edge-cls-artifact"
PRECISIONS = ("fp32", "fp16", "bf16", "int8")


@dataclass(frozen=True, kw_only=True)
class ArtifactFile:
    """One file of an artifact, relative to the artifact directory."""

    path: str
    sha256: str
    bytes: int


@dataclass(kw_only=True)
class Manifest:
    """Everything a runtime needs to know about an artifact, and how it was checked."""

    backend: str
    precision: str
    model_file: str
    spec: PreprocessSpec
    labels: list[str]
    files: list[ArtifactFile]
    task: str = "single_label"
    model_name: str = ""
    input_name: str = "input"
    output_name: str = "logits"
    runtime_options: dict[str, Any] = field(default_factory=dict)
    runtime_precision: str = ""
    parity: dict[str, Any] | None = None
    accuracy: dict[str, Any] | None = None
    recipe: str = ""  # how the model file was made, e.g. "ort-qdq-u8s8" (see edge_cls.export.recipes)
    search: dict[str, Any] | None = None  # the precision search that chose this artifact: bar, candidates, verdicts
    accepted_drop: bool = False  # shipped although it missed the accuracy bar, because the user said so
    tools: dict[str, str] = field(default_factory=dict)
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    schema_version: int = SCHEMA_VERSION

    @property
    def input_shape(self) -> list[int]:
        """Model input shape with a dynamic batch axis (-1)."""
        return [-1, *self.spec.input_shape]

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "schema_version": self.schema_version,
            "backend": self.backend,
            "precision": self.precision,
            "runtime_precision": self.runtime_precision,
            "runtime_options": self.runtime_options,
            "task": self.task,
            "model_name": self.model_name,
            "model_file": self.model_file,
            "input": {"name": self.input_name, "shape": self.input_shape, "dtype": "float32"},
            "output": {"name": self.output_name, "shape": [-1, self.num_classes], "dtype": "float32"},
            "preprocess": self.spec.to_dict(),
            "labels": list(self.labels),
            "files": [{"path": f.path, "sha256": f.sha256, "bytes": f.bytes} for f in self.files],
            "parity": self.parity,
            "accuracy": self.accuracy,
            "recipe": self.recipe,
            "search": self.search,
            "accepted_drop": self.accepted_drop,
            "tools": self.tools,
            "created_at": self.created_at,
        }

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "manifest") -> Manifest:
        """Validate and parse a manifest dict; every problem is an :class:`ArtifactError`."""
        if not isinstance(data, dict):
            raise ArtifactError(f"{source}: expected a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT_NAME:
            raise ArtifactError(f"{source}: not an edge-cls manifest (format is {data.get('format')!r})")
        version = _field(data, "schema_version", int, source)
        if version != SCHEMA_VERSION:
            raise ArtifactError(
                f"{source}: unknown schema_version {version} (this edge-cls reads {SCHEMA_VERSION}); "
                "upgrade edge-cls or rebuild the artifact"
            )
        backend = _choice(data, "backend", BACKEND_NAMES, source)
        precision = _choice(data, "precision", PRECISIONS, source)
        task = _choice(data, "task", TASKS, source)
        labels = _field(data, "labels", list, source)
        if not labels or not all(isinstance(v, str) for v in labels):
            raise ArtifactError(f"{source}: 'labels' must be a non-empty list of strings")
        input_ = _field(data, "input", dict, source)
        output = _field(data, "output", dict, source)
        try:
            spec = PreprocessSpec.from_dict(_field(data, "preprocess", dict, source))
        except ConfigError as e:
            raise ArtifactError(f"{source}: invalid 'preprocess': {e}") from e
        files = []
        for i, entry in enumerate(_field(data, "files", list, source)):
            where = f"{source} files[{i}]"
            if not isinstance(entry, dict):
                raise ArtifactError(f"{where}: expected an object with path, sha256, bytes")
            relative = _field(entry, "path", str, where)
            if Path(relative).is_absolute() or ".." in Path(relative).parts:
                raise ArtifactError(f"{where}: path {relative!r} must stay inside the artifact directory")
            files.append(ArtifactFile(
                path=relative,
                sha256=_field(entry, "sha256", str, where),
                bytes=_field(entry, "bytes", int, where),
            ))
        model_file = _field(data, "model_file", str, source)
        if model_file not in {f.path for f in files}:
            raise ArtifactError(f"{source}: model_file {model_file!r} is not listed in 'files'")
        manifest = cls(
            backend=backend,
            precision=precision,
            model_file=model_file,
            spec=spec,
            labels=list(labels),
            files=files,
            task=task,
            model_name=_field(data, "model_name", str, source),
            input_name=_field(input_, "name", str, f"{source} input"),
            output_name=_field(output, "name", str, f"{source} output"),
            runtime_options=_field(data, "runtime_options", dict, source),
            runtime_precision=_field(data, "runtime_precision", str, source),
            parity=_optional(data, "parity", dict, source),
            accuracy=_optional(data, "accuracy", dict, source),
            recipe=_optional(data, "recipe", str, source) or "",
            search=_optional(data, "search", dict, source),
            accepted_drop=bool(_optional(data, "accepted_drop", bool, source)),
            tools=_field(data, "tools", dict, source),
            created_at=_field(data, "created_at", str, source),
            schema_version=version,
        )
        if input_.get("shape") != manifest.input_shape:
            raise ArtifactError(
                f"{source}: input shape {input_.get('shape')} does not match the preprocessing spec "
                f"({manifest.input_shape})"
            )
        return manifest

    def save(self, directory: str | os.PathLike[str]) -> Path:
        path = Path(directory) / MANIFEST_NAME
        write_json_atomic(path, self.to_dict())
        return path


def describe_files(directory: str | os.PathLike[str], names: list[str]) -> list[ArtifactFile]:
    """Hash the named files of an artifact directory for its manifest."""
    directory = Path(directory)
    return [
        ArtifactFile(path=name, sha256=sha256_file(directory / name), bytes=(directory / name).stat().st_size)
        for name in names
    ]


def load_manifest(directory: str | os.PathLike[str], *, verify: bool = True) -> Manifest:
    """Read and validate ``directory/manifest.json``; with ``verify``, check every file's sha256."""
    directory = Path(directory)
    if not directory.exists():
        raise ArtifactError(
            f"{directory} does not exist: pass an artifact directory made by 'edge-cls build' or 'edge-cls export'"
        )
    if not directory.is_dir():
        raise ArtifactError(
            f"{directory} is a file, not an artifact directory: pass the directory that holds {MANIFEST_NAME}"
        )
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise ArtifactError(
            f"{directory} is not an artifact: it has no {MANIFEST_NAME} "
            "(build one with 'edge-cls build' or 'edge-cls export')"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path} is not valid JSON ({e}): rebuild the artifact") from e
    manifest = Manifest.from_dict(data, source=str(path))
    if verify:
        verify_files(directory, manifest)
    return manifest


def verify_files(directory: Path, manifest: Manifest) -> None:
    for entry in manifest.files:
        file = directory / entry.path
        if not file.is_file():
            raise ArtifactError(f"{file} is listed in the manifest but missing: copy the whole artifact directory")
        if sha256_file(file) != entry.sha256:
            raise ArtifactError(
                f"{file} does not match the sha256 in its manifest: the file was changed or corrupted; "
                "rebuild or re-copy the artifact"
            )


def _field(data: Mapping[str, Any], key: str, kind: type, source: str) -> Any:
    if key not in data:
        raise ArtifactError(f"{source}: missing field {key!r}")
    value = data[key]
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise ArtifactError(f"{source}: field {key!r} must be {kind.__name__}, got {type(value).__name__}")
    return value


def _optional(data: Mapping[str, Any], key: str, kind: type, source: str) -> Any:
    if data.get(key) is None:
        return None
    return _field(data, key, kind, source)


def _choice(data: Mapping[str, Any], key: str, choices: tuple[str, ...], source: str) -> str:
    value = _field(data, key, str, source)
    if value not in choices:
        raise ArtifactError(f"{source}: field {key!r} is {value!r}, expected one of {choices}")
    return value
