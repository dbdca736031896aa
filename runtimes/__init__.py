"""Device-side runtimes: open an artifact directory and classify images.

>>> from edge_cls.runtimes import load
>>> clf = load("build/demo/artifacts/openvino-int8")
>>> clf.predict("digit.png", k=3)[0].label

Backends are named and imported on first use; an app that installs only
``edge-cls[onnxruntime]`` never imports OpenVINO, and nothing here imports torch.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path
from typing import Any

from edge_cls.artifact.embeddings import ArtifactEmbeddings
from edge_cls.artifact.integrity import ArtifactFiles
from edge_cls.artifact.manifest import Manifest, read_artifact
from edge_cls.backends import BACKENDS
from edge_cls.errors import BackendUnavailableError, ConfigError

from .base import Backend, Classifier, ClassifierClosedError, ImageResult, Pipeline, ResultStream


def backend_class(name: str) -> type[Backend]:
    """The backend class registered under ``name``; a missing library raises with the install hint."""
    try:
        entry = BACKENDS[name]
    except KeyError:
        raise ConfigError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}") from None
    if importlib.util.find_spec(entry.package) is None:
        raise BackendUnavailableError(f"the {name} backend needs the '{entry.package}' package: {entry.install}")
    module_name, class_name = entry.target.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def available_backends() -> list[str]:
    """Names of the backends whose library is installed here."""
    return [name for name, entry in BACKENDS.items() if importlib.util.find_spec(entry.package) is not None]


def load(
    path: str | os.PathLike[str],
    *,
    backend: str | None = None,
    verify: bool = True,
    key: bytes | str | None = None,
    trusted_keys: Any = None,
    throughput: bool = False,
    **options: Any,
) -> Classifier:
    """Open an artifact directory and return a :class:`Classifier`.

    Args:
        path: directory holding ``manifest.json`` and the model file(s).
        backend: run with this backend instead of the artifact's own (e.g. an ONNX artifact on
            ``openvino``), where the backend can read the model file.
        verify: check the directory against its manifest before loading: only listed files, no
            symbolic links, each file's size and sha256. The backend loads the bytes that were
            checked, not the file again.
        key: manifest signing key (default: ``$EDGE_CLS_MANIFEST_KEY_FILE`` or
            ``$EDGE_CLS_MANIFEST_KEY``); with one, an unsigned or wrongly signed artifact is refused.
        throughput: the classifier will serve a stream (``predict_stream``, ``predict_batch(workers=N)``,
            a server) rather than one image at a time: each backend applies its own
            :attr:`~Backend.throughput_options` (ONNX Runtime: idle threads sleep instead of spinning, so
            decoding threads get the cores; OpenVINO: the THROUGHPUT hint, several streams). Options
            given explicitly win.
        options: backend options, e.g. ``device="GPU"`` for OpenVINO, ``threads=2``.
    """
    directory = Path(path)
    manifest, files = read_artifact(directory, verify=verify, key=key, trusted_keys=trusted_keys)
    cls = backend_class(backend or manifest.backend)
    suffix = Path(manifest.model_file).suffix
    if suffix not in cls.suffixes:
        raise ConfigError(
            f"the {cls.name} backend cannot read {manifest.model_file} (it reads {', '.join(cls.suffixes)}); "
            f"use backend={manifest.backend!r}"
        )
    if throughput:
        options = {**cls.throughput_options, **options}
    files, embeddings = embedding_files(manifest, files)
    return Classifier(cls.open(files, manifest, **options), manifest, directory, embeddings=embeddings)


def embedding_files(manifest: Manifest, files: ArtifactFiles) -> tuple[ArtifactFiles, ArtifactEmbeddings | None]:
    """The files a backend loads (the model's own), and the artifact's embedding space read from the others."""
    if manifest.embeddings is None:
        return files, None
    embeddings = ArtifactEmbeddings.from_artifact(manifest.embeddings, files)
    side = {manifest.embeddings["basis"], manifest.embeddings["reference"]}
    model_files = {name: files[name] for name in files if name not in side}
    return ArtifactFiles(files.directory, files.model_file, model_files, verified=files.verified), embeddings


__all__ = [
    "BACKENDS", "ArtifactFiles", "Backend", "Classifier", "ClassifierClosedError", "ImageResult", "Pipeline",
    "ResultStream", "available_backends", "backend_class", "load",
]
