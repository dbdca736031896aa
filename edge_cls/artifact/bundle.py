"""The candidate bundle: what ``edge-cls export --defer-choice`` leaves for the device to choose from.

Accuracy can be judged on the build host, speed only where the artifact runs. A bundle holds every
candidate that met the acceptance rule on the build host (and FP32, the speed and parity reference),
each a normal artifact directory; for a cross-fitted check, the second fold's model of each
calibrated candidate beside it; and a compact check set: the check images as the uint8 pixels the
spec's normalisation turns back into the exact float32 tensors, their source pictures, labels where
there are any, and the float model's logits and temperature. ``edge-cls choose`` re-checks every
candidate on it with the device's kernels and times them there.

Integrity: ``bundle.json`` lists the sha256 and size of the check set and of every candidate's
manifest (which pins its files), the directory may hold nothing else, and with a manifest key it is
signed like a manifest (``bundle.json.hmac``). Only numpy and the core: this runs on the device.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edge_cls._fileio import atomic_path, sha256_file, write_bytes_atomic, write_text_atomic
from edge_cls.artifact.integrity import check_signature, manifest_key, read_bounded, signature
from edge_cls.artifact.manifest import MANIFEST_NAME
from edge_cls.artifact.schema import MAX_MANIFEST_BYTES, Fields, parse_json, relative_path, sha256_hex
from edge_cls.errors import ArtifactError
from edge_cls.preprocess import PreprocessSpec

BUNDLE_NAME = "bundle.json"
BUNDLE_SIGNATURE = "bundle.json.hmac"
CHECK_FILE = "check.npz"
FORMAT_NAME = "edge-cls-bundle"
SCHEMA_VERSION = 1


@dataclass(kw_only=True)
class BundleCandidate:
    """One candidate: its artifact directory, and the second cross-fitting fold's model where there is one."""

    directory: str
    format: str
    backend: str
    recipe: str
    precision: str
    manifest_sha256: str
    second_fold: str | None = None  # a directory whose model checks the first fold's calibration images
    second_fold_sha256: str | None = None
    host: dict[str, Any] = field(default_factory=dict)  # its figures on the build host (scalars)


@dataclass(kw_only=True)
class Bundle:
    spec: PreprocessSpec
    labels: list[str]
    task: str
    model_name: str
    rule: dict[str, Any]  # edge_cls.quality.acceptance.AcceptanceRule's fields
    requested: dict[str, str]  # format -> requested precision (auto or one)
    check: dict[str, Any]  # sha256, bytes, images, pictures, labelled, temperature, split
    candidates: list[BundleCandidate]
    host: dict[str, Any] = field(default_factory=dict)  # the build host (machine description) and its tools
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT_NAME, "schema_version": SCHEMA_VERSION, "model_name": self.model_name,
                "task": self.task, "preprocess": self.spec.to_dict(), "labels": list(self.labels), "rule": self.rule,
                "requested": self.requested, "check": self.check, "host": self.host, "created_at": self.created_at,
                "candidates": [vars(c) for c in self.candidates]}

    def save(self, directory: Path, *, key: bytes | str | None = None) -> Path:
        raw = (json.dumps(self.to_dict(), indent=2) + "\n").encode()
        write_bytes_atomic(directory / BUNDLE_NAME, raw)
        secret = manifest_key(key)
        if secret is not None:
            write_text_atomic(directory / BUNDLE_SIGNATURE, signature(raw, secret))
        return directory / BUNDLE_NAME


@dataclass(frozen=True)
class CheckSet:
    """The stored check images as the backend takes them, and what the float model said about them."""

    batch: np.ndarray  # float32, (N, *spec.input_shape)
    reference_logits: np.ndarray
    groups: np.ndarray  # source picture of each image
    fold: np.ndarray  # 0: checks the candidate itself; 1: checks its second-fold model
    targets: np.ndarray | None
    temperature: float


def _luts(spec: PreprocessSpec) -> list[np.ndarray]:
    """The normalisation table of each input channel, in the tensor's channel order."""
    return [spec._lut["RGB".index(colour)] for colour in spec.channel_order]


def encode_pixels(batch: np.ndarray, spec: PreprocessSpec) -> np.ndarray | None:
    """The uint8 pixels whose normalisation gives ``batch`` exactly, or None where it does not."""
    axis = 1 if spec.layout == "NCHW" else 3
    pixels = np.empty(batch.shape, dtype=np.uint8)
    for k, lut in enumerate(_luts(spec)):
        plane = np.take(batch, k, axis=axis)
        index = np.clip(np.searchsorted(lut, plane), 1, 255)
        nearer = np.where(np.abs(lut[index - 1] - plane) <= np.abs(lut[index] - plane), index - 1, index)
        if not np.array_equal(lut[nearer], plane):
            return None
        np.moveaxis(pixels, axis, 0)[k] = nearer
    return pixels


def decode_pixels(pixels: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    axis = 1 if spec.layout == "NCHW" else 3
    batch = np.empty(pixels.shape, dtype=np.float32)
    for k, lut in enumerate(_luts(spec)):
        np.moveaxis(batch, axis, 0)[k] = lut[np.take(pixels, k, axis=axis)]
    return batch


def write_check_set(path: Path, batch: np.ndarray, spec: PreprocessSpec, reference_logits: np.ndarray,
                    groups: np.ndarray, fold: np.ndarray, targets: np.ndarray | None) -> dict[str, Any]:
    """Write the check set compactly (uint8 pixels where exact, else float16 tensors); returns its record."""
    pixels = encode_pixels(batch, spec)
    arrays = {"reference_logits": reference_logits.astype(np.float32), "groups": groups.astype(np.int64),
              "fold": fold.astype(np.int8)}
    arrays["pixels" if pixels is not None else "tensors"] = pixels if pixels is not None else batch.astype(np.float16)
    if targets is not None:
        arrays["targets"] = np.asarray(targets)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    return {"file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size, "images": len(batch),
            "pictures": int(len(np.unique(groups))), "labelled": targets is not None, "exact": pixels is not None}


def read_check_set(directory: Path, bundle: Bundle) -> CheckSet:
    path = directory / CHECK_FILE
    with np.load(path, allow_pickle=False) as data:
        pixels = data.get("pixels", None)
        batch = decode_pixels(pixels, bundle.spec) if pixels is not None else data["tensors"].astype(np.float32)
        targets = data.get("targets", None)
        return CheckSet(batch, data["reference_logits"], data["groups"], data["fold"], targets,
                        float(bundle.check.get("temperature", 1.0)))


def read_bundle(directory: str | os.PathLike[str], *, key: bytes | str | None = None) -> Bundle:
    """Read and check a bundle: its schema, its signature (with a key), that it holds nothing unlisted,
    and the size and sha256 of its check set and of every candidate's manifest. Each candidate's own
    files are then checked by its manifest when it is loaded."""
    directory = Path(directory)
    path = directory / BUNDLE_NAME
    if not path.is_file():
        raise ArtifactError(f"{directory} is not a candidate bundle: it has no {BUNDLE_NAME} (make one with "
                            "'edge-cls export --defer-choice')")
    raw = read_bounded(path, MAX_MANIFEST_BYTES, "a bundle manifest")
    secret = manifest_key(key)
    if secret is not None:
        check_signature(directory, raw, secret, name=BUNDLE_NAME, signature_name=BUNDLE_SIGNATURE)
    bundle = _parse(parse_json(raw, str(path)), str(path))
    _check_contents(directory, bundle)
    return bundle


def _parse(data: Any, source: str) -> Bundle:
    top = Fields(data, source)
    if data.get("format") != FORMAT_NAME or top.integer("schema_version") != SCHEMA_VERSION:
        raise ArtifactError(f"{source}: not an edge-cls bundle of schema {SCHEMA_VERSION}: upgrade edge-cls or export "
                            "the bundle again")
    candidates = []
    for i, entry in enumerate(top.items("candidates", limit=1000) or []):
        c = Fields(entry, source, f"candidates[{i}].")
        second = c.get("second_fold", str, optional=True)
        candidates.append(BundleCandidate(
            directory=relative_path(c, "directory", c.get("directory", str)), format=c.text("format", limit=100),
            backend=c.text("backend", limit=100),
            recipe=c.text("recipe", limit=1000), precision=c.text("precision", limit=100),
            manifest_sha256=sha256_hex(c, "manifest_sha256", c.get("manifest_sha256", str)),
            second_fold=None if second is None else relative_path(c, "second_fold", second),
            second_fold_sha256=c.get("second_fold_sha256", str, optional=True),
            host=dict(c.get("host", dict, optional=True, default={}))))
    if not candidates:
        raise ArtifactError(f"{source}: lists no candidates")
    check = top.block("check")
    sha256_hex(check, "sha256", check.get("sha256", str))
    return Bundle(spec=PreprocessSpec.from_dict(top.block("preprocess").data),
                  labels=list(top.items("labels", limit=1_000_000) or []), task=top.text("task", limit=100),
                  model_name=top.text("model_name", limit=1000), rule=dict(top.block("rule").data),
                  requested=dict(top.block("requested").data), check=dict(check.data), candidates=candidates,
                  host=dict(top.get("host", dict, optional=True, default={})),
                  created_at=top.text("created_at", limit=100))


def _check_contents(directory: Path, bundle: Bundle) -> None:
    listed = {BUNDLE_NAME, BUNDLE_SIGNATURE, CHECK_FILE}
    for c in bundle.candidates:
        listed |= {c.directory, *([c.second_fold] if c.second_fold else [])}
    for entry in os.scandir(directory):
        mode = os.lstat(entry.path).st_mode
        if entry.name not in listed or stat.S_ISLNK(mode):
            raise ArtifactError(f"{directory}: {entry.name!r} is not part of the bundle (or is a link): the bundle was "
                                "changed after it was made; export it again")
    _check_file(directory / CHECK_FILE, bundle.check["sha256"], bundle.check.get("bytes"))
    for c in bundle.candidates:
        _check_file(directory / c.directory / MANIFEST_NAME, c.manifest_sha256, None)
        if c.second_fold:
            _check_file(directory / c.second_fold / MANIFEST_NAME, c.second_fold_sha256 or "", None)


def _check_file(path: Path, sha256: str, size: int | None) -> None:
    if not path.is_file() or path.is_symlink():
        raise ArtifactError(f"{path} is missing from the bundle: export it again")
    if size is not None and path.stat().st_size != size:
        raise ArtifactError(f"{path} has changed size since the bundle was made: export it again")
    if sha256_file(path) != sha256:
        raise ArtifactError(f"{path} does not match the sha256 in {BUNDLE_NAME}: the bundle was changed; export it "
                            "again")


def bundle_bytes(directory: Path) -> int:
    """The bundle's size on disk."""
    return sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file())
