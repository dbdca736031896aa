"""The artifact manifest: one schema-versioned JSON file that describes an artifact directory.

It holds the preprocessing spec, the labels, the backend and precision, the input shape, every
file with its sha256, the parity and accuracy figures, and the versions of the tools that made
the artifact. It is validated on load: a missing field, a value of the wrong type or range
(:mod:`edge_cls.artifact.schema`), an unknown schema version, or a directory that does not match
it (:mod:`edge_cls.artifact.integrity`: unlisted files, links, sizes, hashes, the optional signature) is
an :class:`ArtifactError` that names the file and the field and says what to do.
:func:`read_artifact` returns the checked bytes for a backend to load.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edge_cls._fileio import sha256_file, write_bytes_atomic, write_text_atomic
from edge_cls.artifact.embeddings import read_embeddings
from edge_cls.artifact.integrity import (
    KEY_SIGNATURE_NAME,
    MANIFEST_NAME,
    SIGNATURE_NAME,
    ArtifactFiles,
    check_signature,
    manifest_key,
    read_bounded,
    read_files,
    signature,
    verify_files,
)
from edge_cls.artifact.schema import (
    MAX_FILES,
    MAX_INPUT_SIDE,
    MAX_MANIFEST_BYTES,
    SCALARS,
    Fields,
    check_range,
    is_kind,
    kind_of,
    label,
    parse_json,
    relative_path,
    scalar_map,
    sha256_hex,
)
from edge_cls.artifact.signatures import trusted_keys, verify_signature
from edge_cls.backends import BACKEND_NAMES
from edge_cls.errors import ArtifactError, ConfigError
from edge_cls.predictions import TASKS
from edge_cls.preprocess import PreprocessSpec
from edge_cls.preprocess.placement import HOST_EXACT, Placement

# The schema's version and its extension rule (tests/artifact/test_manifest.py holds it):
# - ``schema_version`` (the major) changes only when an older reader would misread a manifest: a
#   field that changes meaning or type, or a new field a reader must act on. A reader refuses any
#   other major ("upgrade edge-cls or rebuild the artifact").
# - ``schema_minor`` grows with every new optional field. A reader takes any minor of its major: it
#   validates the fields it knows and ignores those it does not, which a newer edge-cls wrote (an
#   unknown field at a minor the reader knows is refused: a typo or a hand edit, not a newer writer).
# - Anything edge-cls does not define goes under ``extensions`` ({"vendor.name": any JSON}), kept
#   and never acted on. The manifest is hashed and signed whole, so every field is covered.
SCHEMA_VERSION = 1
SCHEMA_MINOR = 2  # 1.1: schema_minor and extensions; 1.2: device (edge-cls choose), preprocess_placement, embeddings
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
    calibration: dict[str, Any] | None = None  # fitted temperature, or per-class thresholds (multi-label)
    taxonomy: dict[str, str | None] | None = None  # parent of every class (and inner node): answers roll up
    summary: dict[str, Any] | None = None  # answers on the validation split, for ``edge-cls check``
    embeddings: dict[str, Any] | None = None  # the second output: see edge_cls.artifact.embeddings (1.2)
    tools: dict[str, str] = field(default_factory=dict)
    device: dict[str, str] | None = None  # the device `edge-cls choose` chose it on (CPU, instruction sets, OS)
    extensions: dict[str, Any] = field(default_factory=dict)  # {"vendor.name": any JSON}: kept, never acted on
    # Where preprocessing runs (host, or in the graph on uint8 pixels) and how that was chosen. An
    # in-graph artifact's ``input`` block says uint8: a reader of minor 1 refuses it on its shape.
    placement: Placement = HOST_EXACT
    placement_choice: dict[str, Any] | None = None
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    schema_version: int = SCHEMA_VERSION
    schema_minor: int = SCHEMA_MINOR

    @property
    def input_shape(self) -> list[int]:
        """Model input shape with a dynamic batch axis (-1) (and dynamic height and width where the graph resizes)."""
        return self.placement.input_shape(self.spec.input_shape, self.spec.input_size)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def to_dict(self) -> dict[str, Any]:
        data = self._fields()
        if self.embeddings is None:  # absent rather than null: a manifest without it reads as schema 1.1
            del data["embeddings"]
        return data

    def _fields(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "schema_version": self.schema_version,
            "schema_minor": self.schema_minor,
            "backend": self.backend,
            "precision": self.precision,
            "runtime_precision": self.runtime_precision,
            "runtime_options": self.runtime_options,
            "task": self.task,
            "model_name": self.model_name,
            "model_file": self.model_file,
            "input": {"name": self.input_name, "shape": self.input_shape, "dtype": self.placement.input_dtype},
            "output": {"name": self.output_name, "shape": [-1, self.num_classes], "dtype": "float32"},
            "preprocess": self.spec.to_dict(),
            "labels": list(self.labels),
            "files": [{"path": f.path, "sha256": f.sha256, "bytes": f.bytes} for f in self.files],
            "parity": self.parity,
            "accuracy": self.accuracy,
            "recipe": self.recipe,
            "search": self.search,
            "accepted_drop": self.accepted_drop,
            "calibration": self.calibration,
            "taxonomy": self.taxonomy,
            "summary": self.summary,
            "embeddings": self.embeddings,
            "tools": self.tools,
            "device": self.device,
            "extensions": self.extensions,
            "preprocess_placement": {**self.placement.to_dict(), "choice": self.placement_choice},
            "created_at": self.created_at,
        }

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "manifest") -> Manifest:
        """Validate and parse a manifest dict; every problem is an :class:`ArtifactError` naming the field."""
        top = Fields(data, source)
        if data.get("format") != FORMAT_NAME:
            raise ArtifactError(f"{source}: not an edge-cls manifest (format is {str(data.get('format'))[:100]!r})")
        version = top.integer("schema_version")
        if version != SCHEMA_VERSION:
            raise ArtifactError(
                f"{source}: unknown schema_version {version} (this edge-cls reads {SCHEMA_VERSION}); "
                "upgrade edge-cls or rebuild the artifact"
            )
        minor = _check_known_fields(top, version)
        placement, placement_choice = _read_placement(top)
        labels = top.items("labels", limit=1_000_000)
        if not labels:
            raise ArtifactError(f"{source}: field 'labels' must be a non-empty list of strings")
        labels = top.each("labels", labels, lambda name, value: label(top, name, value))
        files = _read_files(top)
        model_file = top.text("model_file", limit=1024)
        if model_file not in {f.path for f in files}:
            raise ArtifactError(f"{source}: model_file {model_file!r} is not listed in 'files'")
        manifest = cls(
            backend=top.choice("backend", BACKEND_NAMES),
            precision=top.choice("precision", PRECISIONS),
            model_file=model_file,
            spec=_read_spec(top),
            labels=labels,
            files=files,
            task=top.choice("task", TASKS),
            model_name=top.text("model_name", limit=1000),
            input_name=_read_io(top, "input", len(labels), placement.input_dtype),
            output_name=_read_io(top, "output", len(labels)),
            runtime_options=scalar_map(top, "runtime_options", top.get("runtime_options", dict), SCALARS),
            runtime_precision=top.text("runtime_precision", limit=100),
            parity=_read_block(top, "parity", PARITY_FIELDS),
            accuracy=_read_block(top, "accuracy", ACCURACY_FIELDS),
            recipe=top.text("recipe", optional=True, limit=1000),
            search=_read_search(top),
            accepted_drop=bool(top.get("accepted_drop", bool, optional=True, default=False)),
            calibration=_read_calibration(top, len(labels)),
            taxonomy=_read_taxonomy(top, labels),
            summary=_read_summary(top, len(labels)),
            embeddings=read_embeddings(top, {f.path for f in files}),
            tools=scalar_map(top, "tools", top.get("tools", dict), (str,)),
            device=_read_device(top),
            extensions=_read_extensions(top),
            placement=placement,
            placement_choice=placement_choice,
            created_at=top.text("created_at", limit=100),
            schema_version=version,
            schema_minor=minor,
        )
        shape = top.block("input").data.get("shape")
        if shape != manifest.input_shape:
            raise ArtifactError(
                f"{source}: input shape {str(shape)[:100]} does not match the preprocessing spec "
                f"({manifest.input_shape})"
            )
        return manifest

    def to_json(self) -> bytes:
        """The manifest file's bytes."""
        return (json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n").encode("utf-8")

    def save(self, directory: str | os.PathLike[str], *, key: bytes | str | None = None) -> Path:
        """Write ``directory/manifest.json`` (atomically, durably); with a key (``key`` or the
        environment, see :func:`edge_cls.artifact.integrity.manifest_key`) also its HMAC signature."""
        directory = Path(directory)
        raw = self.to_json()
        write_bytes_atomic(directory / MANIFEST_NAME, raw)
        secret = manifest_key(key)
        if secret is not None:
            write_text_atomic(directory / SIGNATURE_NAME, signature(raw, secret))
        else:
            (directory / SIGNATURE_NAME).unlink(missing_ok=True)  # a stale one would no longer match
        return directory / MANIFEST_NAME


def describe_files(directory: str | os.PathLike[str], names: list[str]) -> list[ArtifactFile]:
    """Hash the named files of an artifact directory for its manifest."""
    directory = Path(directory)
    return [
        ArtifactFile(path=name, sha256=sha256_file(directory / name), bytes=(directory / name).stat().st_size)
        for name in names
    ]


def load_manifest(
    directory: str | os.PathLike[str], *, verify: bool = True, key: bytes | str | None = None,
    trusted_keys: Any = None,
) -> Manifest:
    """Read and validate ``directory/manifest.json``; with ``verify``, check the directory against it:
    nothing unlisted, no symlinks, every file's size and sha256. ``key``, ``trusted_keys``: see
    :func:`read_artifact`."""
    directory, manifest = _read_manifest(directory, key, trusted_keys)
    if verify:
        verify_files(directory, manifest.files)
    return manifest


def read_artifact(
    directory: str | os.PathLike[str], *, verify: bool = True, key: bytes | str | None = None,
    trusted_keys: Any = None,
) -> tuple[Manifest, ArtifactFiles]:
    """The manifest and the bytes of every file it lists, each file read once and (with ``verify``)
    checked as :func:`load_manifest` does: hand these bytes to a backend, not the paths.

    ``key``: the manifest HMAC key; by default ``$EDGE_CLS_MANIFEST_KEY_FILE`` or
    ``$EDGE_CLS_MANIFEST_KEY``. With a key, an unsigned or wrongly signed manifest is refused.
    ``trusted_keys``: public keys (PEM files, PEM bytes or key objects); by default
    ``$EDGE_CLS_TRUSTED_KEYS``. With them, an artifact without a valid ``model.sig`` by one of them
    is refused. When both are configured, both checks apply: each must pass.
    """
    directory, manifest = _read_manifest(directory, key, trusted_keys)
    return manifest, read_files(directory, manifest.files, manifest.model_file, verify=verify)


def _read_manifest(directory: str | os.PathLike[str], key: bytes | str | None, trusted: Any = None
                   ) -> tuple[Path, Manifest]:
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
    if not os.path.lexists(path):
        raise ArtifactError(
            f"{directory} is not an artifact: it has no {MANIFEST_NAME} "
            "(build one with 'edge-cls build' or 'edge-cls export')"
        )
    raw = read_bounded(path, MAX_MANIFEST_BYTES, "a manifest")
    secret = manifest_key(key)
    if secret is not None:
        check_signature(directory, raw, secret)
    keys = trusted_keys(trusted)
    manifest = Manifest.from_dict(parse_json(raw, str(path)), source=str(path))
    if keys is not None:  # the files' own hashes are compared with the manifest by the integrity check
        verify_signature(directory, raw, manifest.files, keys)
    return directory, manifest


FIELDS_OF_MINOR = {  # the top-level fields each minor of schema 1 defines
    0: {"format", "schema_version", "backend", "precision", "runtime_precision", "runtime_options", "task",
        "model_name", "model_file", "input", "output", "preprocess", "labels", "files", "parity", "accuracy", "recipe",
        "search", "accepted_drop", "calibration", "taxonomy", "summary", "tools", "created_at"},
    1: {"schema_minor", "extensions"},
    2: {"device", "preprocess_placement", "embeddings"},
}


def known_fields(minor: int) -> set[str]:
    """The top-level fields a manifest of ``schema_minor`` may hold."""
    return set().union(*(fields for m, fields in FIELDS_OF_MINOR.items() if m <= minor))


def _check_known_fields(top: Fields, version: int) -> int:
    """The manifest's minor; an unknown field is refused only at a minor this reader knows (see the rule above)."""
    minor = top.integer("schema_minor", minimum=0, optional=True)
    minor = 0 if minor is None else minor
    if minor <= SCHEMA_MINOR:
        unknown = sorted(set(top.data) - known_fields(minor))
        if unknown:
            raise ArtifactError(
                f"{top.source}: field {unknown[0][:100]!r} is not part of manifest schema {version}.{minor}; put "
                "other data under 'extensions', or rebuild the artifact"
            )
    return minor


def _read_device(top: Fields) -> dict[str, str] | None:
    value = top.get("device", dict, optional=True)
    return None if value is None else scalar_map(top, "device", value, (str,))


def _read_placement(top: Fields) -> tuple[Placement, dict[str, Any] | None]:
    """``preprocess_placement``: where preprocessing runs (absent: all on the host, in float32) and
    the record of how it was chosen (``choice``: scalars, rows of scalars under ``candidates``)."""
    block = top.optional_block("preprocess_placement")
    if block is None:
        return HOST_EXACT, None
    settings = {k: v for k, v in block.data.items() if k != "choice"}
    try:
        placement = Placement.from_dict(settings)
    except (ConfigError, TypeError) as e:
        raise top.fail("preprocess_placement", f"is not a valid placement ({e}): rebuild the artifact") from None
    choice = block.optional_block("choice")
    if choice is None:
        return placement, None
    for name, value in choice.data.items():
        if isinstance(value, list):
            choice.each(name, choice.items(name, limit=100) or [],
                        lambda row_name, row: scalar_map(choice, row_name, row, SCALARS))
        elif isinstance(value, dict):
            scalar_map(choice, name, value, SCALARS)
        elif not any(is_kind(value, kind) for kind in SCALARS):
            raise choice.fail(name, f"must be a scalar, a list of rows or an object of scalars, got {kind_of(value)}")
    return placement, dict(choice.data)


def _read_extensions(top: Fields) -> dict[str, Any]:
    """``extensions``: a mapping of names to any JSON (depth and size are bounded by the manifest's own limits)."""
    value = top.get("extensions", dict, optional=True, default={})
    return dict(value)


def _read_files(top: Fields) -> list[ArtifactFile]:
    entries = top.items("files", limit=MAX_FILES)
    if not entries:
        raise ArtifactError(f"{top.source}: field 'files' must list the artifact's files")
    files = top.each("files", entries, lambda name, value: _read_file_entry(Fields(value, top.source, f"{name}.")))
    paths = [f.path for f in files]
    duplicate = next((p for p in paths if paths.count(p) > 1), None)
    if duplicate is not None:
        raise ArtifactError(f"{top.source}: field 'files' lists {duplicate!r} twice")
    reserved = sorted({MANIFEST_NAME, SIGNATURE_NAME, KEY_SIGNATURE_NAME} & set(paths))
    if reserved:
        raise ArtifactError(f"{top.source}: field 'files' lists {reserved[0]!r}, which describes the artifact itself")
    return files


def _read_file_entry(entry: Fields) -> ArtifactFile:
    return ArtifactFile(
        path=relative_path(entry, "path", entry.get("path", str)),
        sha256=sha256_hex(entry, "sha256", entry.get("sha256", str)),
        bytes=entry.integer("bytes", minimum=0),  # type: ignore[arg-type]
    )


def _read_spec(top: Fields) -> PreprocessSpec:
    spec = top.block("preprocess")
    size = spec.items("input_size", limit=2) or []
    if len(size) != 2:
        raise spec.fail("input_size", f"must be [height, width], got {len(size)} values")
    for i, side in enumerate(size):
        spec.check(f"input_size[{i}]", side, int)
        check_range(spec, f"input_size[{i}]", side, 1, MAX_INPUT_SIDE)
    for name in ("mean", "std"):
        values = spec.items(name, limit=3, optional=True)
        for i, value in enumerate(values or []):
            spec.check(f"{name}[{i}]", value, float)
            if not math.isfinite(value):
                raise spec.fail(f"{name}[{i}]", f"must be a finite number, got {value}")
    spec.number("crop_pct", optional=True)
    for name in ("crop_mode", "interpolation", "channel_order", "layout"):
        spec.text(name, optional=True, limit=100)
    try:
        return PreprocessSpec.from_dict(spec.data)
    except (ConfigError, TypeError, ValueError) as e:
        raise ArtifactError(f"{top.source}: invalid 'preprocess': {e}") from e


def _read_io(top: Fields, key: str, num_classes: int, dtype: str = "float32") -> str:
    block = top.block(key)
    name = block.text("name", limit=1000)
    if block.get("dtype", str, optional=True, default="float32") != dtype:
        raise block.fail("dtype", f"is {str(block.data['dtype'])[:50]!r}; this artifact's {key} is {dtype} "
                                  "(see preprocess_placement)")
    shape = block.items("shape", limit=8)
    if key == "output" and shape != [-1, num_classes]:
        raise block.fail("shape", f"is {str(shape)[:100]}, expected [-1, {num_classes}] (one logit per label)")
    return name


# Known keys of the parity and accuracy blocks, and how to read them; other keys may hold any JSON
# scalar (later versions add figures, and a block is information, not something load acts on).
_FRACTION = {"minimum": 0.0, "maximum": 1.0}
PARITY_FIELDS: dict[str, tuple[str, dict[str, Any]]] = {
    "reference": ("text", {}), "split": ("text", {}), "runtime_precision": ("text", {}),
    "images": ("integer", {"minimum": 0}), "disagreements": ("integer", {"minimum": 0}),
    "top1_agreement": ("number", _FRACTION),
    "max_abs_logit_error": ("number", {"minimum": 0.0, "finite": False}),
    "mean_abs_logit_error": ("number", {"minimum": 0.0, "finite": False}),
}
ACCURACY_FIELDS: dict[str, tuple[str, dict[str, Any]]] = {
    "split": ("text", {}), "images": ("integer", {"minimum": 0}),
    **{name: ("number", _FRACTION) for name in ("top1", "top5", "mAP", "f1_macro", "f1_micro")},
}


def _read_block(top: Fields, key: str, known: dict[str, tuple[str, dict[str, Any]]]) -> dict[str, Any] | None:
    block = top.optional_block(key)
    if block is None:
        return None
    for name, value in block.data.items():
        if name in known:
            reader, limits = known[name]
            getattr(block, reader)(name, optional=True, **limits)
        elif not isinstance(value, (str, int, float, bool)) and value is not None:
            raise block.fail(name, f"must be a string, number, true/false or null, got {kind_of(value)}")
    return dict(block.data)


def _read_calibration(top: Fields, num_classes: int) -> dict[str, Any] | None:
    """A fitted temperature (single-label) or one decision threshold per class (multi-label)."""
    block = top.optional_block("calibration")
    if block is None:
        return None
    method = block.choice("method", ("temperature", "thresholds"))
    if method == "temperature":
        block.number("temperature", minimum=0.01, maximum=1000.0)
    else:
        values = block.items("thresholds", limit=num_classes)
        if values is None or len(values) != num_classes:
            raise block.fail("thresholds", f"must hold one threshold per class ({num_classes})")
        block.each("thresholds", values, lambda name, value: _fraction(block, name, value))
    for name, value in block.data.items():
        if name not in ("method", "temperature", "thresholds"):
            block.check(name, value, SCALARS)
    return dict(block.data)


def _fraction(fields: Fields, name: str, value: Any) -> float:
    fields.check(name, value, float)
    if not 0.0 <= float(value) <= 1.0:
        raise fields.fail(name, f"must be in [0, 1], got {value}")
    return float(value)


def _read_taxonomy(top: Fields, labels: list[str]) -> dict[str, str | None] | None:
    """Every class's (and inner node's) parent; a cycle or an unknown name is refused."""
    value = top.get("taxonomy", dict, optional=True)
    if value is None:
        return None
    mapping = scalar_map(top, "taxonomy", value, (str, type(None)))
    from edge_cls.taxonomy import Taxonomy

    try:
        return Taxonomy.from_mapping(mapping, labels, source=f"{top.source}: field 'taxonomy'").to_dict()
    except ConfigError as e:
        raise ArtifactError(str(e)) from e


def _read_summary(top: Fields, num_classes: int) -> dict[str, Any] | None:
    """What the artifact answered on its validation split: histograms and shares, for drift checks."""
    block = top.optional_block("summary")
    if block is None:
        return None
    block.text("split", limit=200)
    block.integer("images", minimum=0)
    block.number("mean_confidence", minimum=0.0, maximum=1.0)
    for name, length in (("confidence_histogram", None), ("class_shares", num_classes)):
        values = block.items(name, limit=100_000) or []
        if length is not None and len(values) != length:
            raise block.fail(name, f"must hold one share per class ({length})")
        block.each(name, values, lambda item, value: _fraction(block, item, value))
    for name in ("top1", "ece"):
        block.number(name, minimum=0.0, maximum=1.0, optional=True)
    return dict(block.data)


def _read_search(top: Fields) -> dict[str, Any] | None:
    """The precision search's record: any keys; ``candidates`` a list of rows (objects of scalars);
    other values scalars, or lists/objects of scalars."""
    search = top.optional_block("search")
    if search is None:
        return None
    for name, value in search.data.items():
        if name == "candidates":
            rows = search.items(name, limit=10_000) or []
            search.each(name, rows, lambda row_name, row: scalar_map(search, row_name, row, SCALARS))
        elif isinstance(value, dict):
            scalar_map(search, name, value, SCALARS)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                search.check(f"{name}[{i}]", item, SCALARS)
    return dict(search.data)
