"""Classify millions of images on a Ray cluster with Ray Data; records land in Parquet.

    from edge_cls.scale.ray_data import predict_to_parquet
    predict_to_parquet("build/x/artifacts/onnx", ["photos/"], "scores/", actors=2, address="auto")

The pipeline (``records_dataset``):

1. the driver lists the images with edge-cls's one image scan (the same files, in the same way, as
   ``edge-cls predict``), so paths must be readable on every node (a shared file system);
2. a CPU stage of Ray tasks (``decode_cpus`` each) reads and preprocesses them with the artifact's
   own spec; an unreadable image becomes that row's error, never the batch's;
3. a pool of ``actors`` actors (``actor_cpus`` each; its backend's threads sized to them) classifies
   the tensors. The artifact travels through Ray's object store: the driver reads and checks it,
   ships its files' bytes with the actor's constructor, and each actor writes them to a private
   temporary directory and loads them with the full integrity check (sizes, sha256, and the HMAC
   key or trusted public keys configured on the driver or the worker), so no node needs the
   artifact on disk and a changed copy is refused on every worker;
4. each actor's batch becomes an Arrow table of :data:`RECORD_SCHEMA`: exactly the records of
   :func:`edge_cls.runtimes.records.record` (what ``predict --jsonl`` prints), absent keys as nulls.

Ray Data restarts a killed actor and retries its batch; a batch's rows are emitted only when the
batch completes, so a killed actor loses no image and duplicates none. Row order is not kept: key
rows by ``path``. Fractional CPU counts let the decode and inference stages share small nodes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from edge_cls.errors import BackendUnavailableError, ConfigError

INSTALL = "pip install 'edge-cls[ray]'"
MARKER = "_edge_cls_records"  # written last into an output directory edge-cls made (and may replace)


def _pyarrow() -> Any:
    try:
        import pyarrow
    except ImportError:
        raise BackendUnavailableError(f"Parquet output needs pyarrow: {INSTALL}") from None
    return pyarrow


def record_schema() -> Any:
    """The Arrow schema of a record (see :func:`edge_cls.runtimes.records.record`)."""
    pa = _pyarrow()
    prediction = pa.struct([("index", pa.int64()), ("label", pa.string()), ("score", pa.float64()),
                            ("raw_score", pa.float64()), ("kind", pa.string()), ("path", pa.list_(pa.string()))])
    artifact = pa.struct([(name, pa.string()) for name in ("id", "model", "precision", "recipe", "manifest_sha256",
                                                                  "embedding_space")])
    return pa.schema([("path", pa.string()), ("artifact", artifact), ("predictions", pa.list_(prediction)),
                      ("abstained", pa.bool_()), ("answer", pa.string()), ("hierarchy", pa.list_(pa.string())),
                      ("error", pa.string())])


def record_from_row(row: dict[str, Any]) -> dict[str, Any]:
    """A Parquet row back as the record it was made from (nulls dropped, as ``record`` omits them)."""
    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if v is not None}
        if isinstance(value, (list, tuple, np.ndarray)):
            return [clean(v) for v in value]
        return value.item() if isinstance(value, np.generic) else value

    return clean(row)


def decode_batch(batch: dict[str, np.ndarray], manifest: Any) -> dict[str, np.ndarray]:
    """The CPU stage: image files to the artifact's input tensors (where its placement says: float32 NCHW,
    or uint8 NHWC for a graph that normalises); unreadable ones get an error (and zeros)."""
    from edge_cls.preprocess.placement import preprocessor
    from edge_cls.runtimes.streaming import preprocess_chunk

    paths = [str(p) for p in batch["path"]]
    chunk = preprocess_chunk(preprocessor(manifest.spec, manifest.placement), paths)
    tensors = np.zeros((len(paths), *manifest.input_shape[1:]), dtype=manifest.placement.input_dtype)
    if chunk.tensors is not None:
        tensors[chunk.ok] = chunk.tensors
    errors = np.array([str(chunk.errors[i]) if i in chunk.errors else "" for i in range(len(paths))], dtype=object)
    return {"path": np.array(paths, dtype=object), "tensor": tensors, "error": errors}


class ClassifyActor:
    """The inference stage: one loaded, checked artifact per actor; a batch of tensors in, records out."""

    def __init__(self, files: dict[str, bytes], name: str, *, k: int, threads: int,
                 trusted_keys: list[bytes] | None, answer_options: dict[str, Any]) -> None:
        from edge_cls.predictions import AnswerOptions
        from edge_cls.runtimes import load
        from edge_cls.runtimes.records import artifact_identity

        scratch = Path(tempfile.mkdtemp(prefix="edge-cls-artifact-"))
        try:
            directory = scratch / name  # the same name as on the driver: records carry it
            for relative, data in files.items():
                (directory / relative).parent.mkdir(parents=True, exist_ok=True)
                (directory / relative).write_bytes(data)
            self.classifier = load(directory, throughput=True, threads=threads, trusted_keys=trusted_keys)
            self.identity = artifact_identity(self.classifier)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)  # the backend holds the checked bytes, not the paths
        self.options = AnswerOptions(k=k, **answer_options)

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        from edge_cls.errors import InvalidImageError
        from edge_cls.runtimes.records import record
        from edge_cls.runtimes.streaming import ImageResult

        errors = [str(e) for e in batch["error"]]
        ok = [i for i, error in enumerate(errors) if not error]
        answers = iter(self.classifier.answers(self.classifier.logits(batch["tensor"][ok]), self.options)) if ok \
            else iter(())
        results = [ImageResult(str(path), next(answers)) if not error else
                   ImageResult(str(path), [], InvalidImageError(error)) for path, error in zip(batch["path"], errors)]
        return _pyarrow().Table.from_pylist([record(r, self.identity) for r in results], schema=record_schema())


def artifact_files(artifact: str | os.PathLike[str], trusted_keys: Any = None) -> tuple[Any, dict[str, bytes]]:
    """The manifest and every file of the artifact, checked here first (hashes, HMAC key, trusted keys):
    what the actors load."""
    from edge_cls.artifact.integrity import KEY_SIGNATURE_NAME, MANIFEST_NAME, SIGNATURE_NAME, read_bounded
    from edge_cls.artifact.manifest import read_artifact

    directory = Path(artifact)
    manifest, files = read_artifact(directory, trusted_keys=trusted_keys)
    out = dict(files)
    for name in (MANIFEST_NAME, SIGNATURE_NAME, KEY_SIGNATURE_NAME):
        if (directory / name).is_file():
            out[name] = read_bounded(directory / name, 64 * 2**20, name)
    return manifest, out


def records_dataset(artifact: str | os.PathLike[str], sources: Iterable[str | os.PathLike[str]], *,
                    recursive: bool = False, k: int = 5, actors: int = 1, actor_cpus: float = 1.0,
                    decode_cpus: float = 0.5, batch_size: int = 32, trusted_keys: Any = None,
                    **answer_options: Any) -> Any:
    """A Ray Dataset of records for the images in ``sources`` (files or folders; sub-folders with
    ``recursive``). ``answer_options``: those of ``Classifier.predict`` (``min_confidence``, ...).
    Ray must be initialised (``ray.init``)."""
    import ray

    from edge_cls.artifact.signatures import trusted_keys as resolve_keys
    from edge_cls.data import iter_images, no_images_error

    if actors < 1 or actor_cpus <= 0 or decode_cpus <= 0 or batch_size < 1:
        raise ConfigError("actors and batch_size must be at least 1, actor_cpus and decode_cpus positive")
    sources = list(sources)
    paths = [{"path": str(p)} for p in iter_images(sources, recursive=recursive)]
    if not paths:
        raise no_images_error(sources, recursive=recursive)
    keys = resolve_keys(trusted_keys)
    pem = None if keys is None else [_pem(key.key) for key in keys]
    manifest, files = artifact_files(artifact, trusted_keys=None if keys is None else [key.key for key in keys])
    if manifest.placement.resize_in_graph:  # its inputs differ in size: Ray's tensor columns need one shape
        raise ConfigError(f"{artifact} resizes in its graph (inputs of any size): Ray scoring needs a fixed input "
                          "size; export it with host resizing, or score it with --jsonl")
    blocks = max(1, min(len(paths) // batch_size, 4 * actors * 8))
    dataset = ray.data.from_items(paths, override_num_blocks=blocks)
    dataset = dataset.map_batches(decode_batch, fn_kwargs={"manifest": manifest}, batch_size=batch_size,
                                  num_cpus=decode_cpus, batch_format="numpy")
    return dataset.map_batches(
        ClassifyActor, batch_size=batch_size, batch_format="numpy", num_cpus=actor_cpus,
        compute=ray.data.ActorPoolStrategy(size=actors),
        fn_constructor_kwargs={"files": files, "name": Path(artifact).name, "k": k, "trusted_keys": pem,
                               "threads": max(1, int(actor_cpus)), "answer_options": answer_options})


def _pem(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def predict_to_parquet(artifact: str | os.PathLike[str], sources: Iterable[str | os.PathLike[str]],
                       output: str | os.PathLike[str], *, address: str | None = None, **options: Any
                       ) -> tuple[int, int]:
    """Score the images into Parquet files in ``output`` (a directory, replaced as a whole once every
    row is written, and only if edge-cls made it); returns the number of records and of those that
    hold an error (an image that could not be read). Connects to the
    Ray cluster at ``address`` (e.g. ``auto`` or ``ray://head:10001``), or starts a local one.
    ``options``: those of :func:`records_dataset`."""
    import ray

    from edge_cls._fileio import NotOursError, atomic_directory, write_text_atomic

    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False, include_dashboard=False)
    dataset = records_dataset(artifact, sources, **options)
    try:
        with atomic_directory(output, marker=MARKER) as staging:
            dataset.write_parquet(str(staging))
            import pyarrow.parquet as pq

            errors = pq.read_table(staging, columns=["error"]).column("error")
            rows, failed = len(errors), len(errors) - errors.null_count
            write_text_atomic(staging / MARKER, f"{rows} records of {Path(artifact).name}, {failed} errors\n")
    except NotOursError as e:
        raise ConfigError(f"{e.strerror}: choose another --output") from None
    return rows, failed
