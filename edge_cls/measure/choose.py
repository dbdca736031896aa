"""``edge-cls choose``: the device decides. Torch-free: numpy, pillow and one runtime.

A candidate bundle (:mod:`edge_cls.artifact.bundle`) is verified, every candidate of the chosen
format is loaded with this device's runtime and re-checked on the stored check set (INT8 kernels
differ between ARM and x86: the answers can too) by the same acceptance rule as the export, the
candidates are timed round-robin here, and the fastest that meets the rule and beats FP32 (the same
selection as ``auto``) is written as a normal artifact. Its manifest records this device and its
timing table, and says which figures were measured where.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_cls._fileio import NotOursError, atomic_directory
from edge_cls.artifact.bundle import Bundle, BundleCandidate, CheckSet, read_bundle, read_check_set
from edge_cls.artifact.manifest import MANIFEST_NAME, load_manifest
from edge_cls.errors import ConfigError
from edge_cls.measure.machine import machine_record
from edge_cls.measure.timing import round_robin
from edge_cls.quality.acceptance import AcceptanceRule, judge, measure
from edge_cls.quality.selection import Measured, Selection, search_table, select

logger = logging.getLogger(__name__)


@dataclass
class Choice:
    artifact: Path
    selection: Selection
    format: str
    seconds: float


def bundle_formats(bundle: Bundle) -> list[str]:
    return list(dict.fromkeys(c.format for c in bundle.candidates))


def pick_format(bundle: Bundle, requested: str | None) -> str:
    """The format to choose for: the one asked for, else the only one whose runtime is installed here."""
    from edge_cls.runtimes import available_backends

    formats = bundle_formats(bundle)
    if requested is not None:
        if requested not in formats:
            raise ConfigError(f"the bundle has no {requested!r} candidates; it has {', '.join(formats)}")
        return requested
    runnable = [f for f in formats if _backend(bundle, f) in available_backends()]
    if len(runnable) != 1:
        raise ConfigError(f"the bundle has candidates for {', '.join(formats)}; runnable here: "
                          f"{', '.join(runnable) or 'none'}: pass --format NAME" + ("" if runnable else
                          " after installing its runtime (e.g. pip install 'edge-cls[onnxruntime]')"))
    return runnable[0]


def _backend(bundle: Bundle, fmt: str) -> str:
    return next(c.backend for c in bundle.candidates if c.format == fmt)


def choose(directory: str | Path, output: str | Path, *, fmt: str | None = None, rounds: int = 7, block: int = 20,
           max_timing_seconds: float = 60.0, key: bytes | str | None = None) -> Choice:
    """Verify the bundle, re-check and time its candidates here, write the winner to ``output``."""
    started = time.perf_counter()
    directory, output = Path(directory), Path(output)
    bundle = read_bundle(directory, key=key)
    fmt = pick_format(bundle, fmt)
    rule = AcceptanceRule(**bundle.rule)
    check = read_check_set(directory, bundle)
    candidates = [c for c in bundle.candidates if c.format == fmt]
    classifiers: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="edge-cls-choose-") as work:
        try:
            rows = [_recheck(directory, c, check, rule, classifiers, Path(work)) for c in candidates]
            _time(rows, classifiers, check, rounds, block, max_timing_seconds)
            selection = select(rows, requested=bundle.requested.get(fmt, "auto"), rule=rule)
        finally:
            for clf in classifiers.values():
                clf.close()
        chosen = next(c for c in candidates if c.recipe == selection.chosen.recipe)
        _write(classifiers[chosen.recipe].path, output, bundle, selection, rule, check)
    return Choice(output, selection, fmt, time.perf_counter() - started)


def _open(source: Path, backend: str, work: Path) -> Any:
    """The candidate as a classifier; a backend that builds its model file on the device (TensorRT) builds
    it here first, from the candidate's checked ONNX graph."""
    from dataclasses import replace

    from edge_cls.artifact.manifest import describe_files, read_artifact
    from edge_cls.runtimes import backend_class, load

    cls = backend_class(backend)
    if not cls.compiles_on_device:
        return load(source)
    manifest, files = read_artifact(source)
    target = work / source.name
    target.mkdir()
    name = "model" + cls.suffixes[0]
    (target / name).write_bytes(cls.compile(files.model, manifest.spec.input_shape))
    replace(manifest, backend=cls.name, model_file=name, files=describe_files(target, [name]),
            runtime_options={}).save(target)
    return load(target)


def _recheck(directory: Path, candidate: BundleCandidate, check: CheckSet, rule: AcceptanceRule,
             classifiers: dict[str, Any], work: Path) -> Measured:
    """Load the candidate (its files checked against its manifest) and judge it on the stored check set."""
    m = Measured(name=f"{candidate.format}-{candidate.precision}", recipe=candidate.recipe,
                 precision=candidate.precision)
    clf = classifiers[candidate.recipe] = _open(directory / candidate.directory, candidate.backend, work)
    m.runtime_precision = clf.precision
    logits = np.empty_like(check.reference_logits)
    first = check.fold == 0
    logits[first] = clf.logits(check.batch[first])
    if (~first).any():
        if candidate.second_fold:
            with _open(directory / candidate.second_fold, candidate.backend, work) as twin:
                logits[~first] = twin.logits(check.batch[~first])
        else:
            logits[~first] = clf.logits(check.batch[~first])
    m.evidence = measure(check.reference_logits, logits, temperature=check.temperature, targets=check.targets,
                         groups=check.groups, rule=rule)
    m.judgement = judge(m.evidence, rule)
    m.max_abs_logit_error = float(np.abs(logits - check.reference_logits).max())
    m.extra["host_expected_drop"] = candidate.host.get("expected_drop")
    return m


def _time(rows: list[Measured], classifiers: dict[str, Any], check: CheckSet, rounds: int, block: int,
          max_seconds: float) -> None:
    one = np.ascontiguousarray(check.batch[:1])
    calls = {name: (lambda clf=clf: clf.logits(one)) for name, clf in classifiers.items()}
    timings = round_robin(calls, rounds=rounds, block=block, max_seconds=max_seconds)
    for row in rows:
        row.timing = timings.get(row.recipe)


def _write(source: Path, output: Path, bundle: Bundle, selection: Selection, rule: AcceptanceRule,
           check: CheckSet) -> None:
    """The chosen candidate as a normal artifact: its files, and a manifest that says what this device
    measured (the answers on the check set, the timing table) and what the build host did."""
    manifest = load_manifest(source)
    e = selection.chosen.evidence
    manifest.search = search_table(selection, rule=rule, check_name=bundle.check.get("split", "check"),
                                   check_images=len(check.batch), check_pictures=e.pictures if e else None,
                                   requested=selection.chosen.precision if bundle.requested else "auto")
    manifest.search["measured_on"] = {"answers": "this device", "speed": "this device",
                                      "calibration and recovery": "the build host"}
    manifest.search["build_host"] = {k: v for k, v in bundle.host.items() if isinstance(v, str)}
    manifest.runtime_precision = selection.chosen.runtime_precision
    manifest.device = machine_record()
    if e is not None and manifest.parity is not None:
        manifest.parity.update({"top1_agreement": e.agreement, "disagreements": e.flips, "images": e.images,
                                "expected_drop_points": e.expected_drop, "drop_low_points": e.drop_low,
                                "drop_high_points": e.drop_high, "measured_on": "this device"})
    try:
        with atomic_directory(output, marker=MANIFEST_NAME) as staging:
            shutil.copytree(source, staging, dirs_exist_ok=True)
            manifest.save(staging)
    except NotOursError as e:
        raise ConfigError(f"{e.strerror}: choose another --output") from None


__all__ = ["Choice", "bundle_formats", "choose", "pick_format"]
