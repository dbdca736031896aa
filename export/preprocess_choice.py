"""Where a shipped artifact's preprocessing runs, chosen by measurement on the check images.

Every candidate placement (:class:`~edge_cls.preprocess.placement.Placement`) of the chosen model
is run on the check images as files: the host's exact path (timm's transform; the reference), the
host's box and fast resizes, the same three feeding a graph that normalises uint8 pixels itself,
and a graph that also resizes (the format's ``graph_resize``). Each is judged against the exact
path by the artifact's own answers: the expected top-1 drop under the exact path's probabilities
(:func:`edge_cls.quality.fidelity.expected_drop`) and top-1 agreement where the exact path is
confident, with the largest input-tensor error stated; then its file -> top-5 time is measured
round-robin. The fastest that keeps fidelity ships, and it must beat the exact path by MIN_GAIN in
most rounds, or the exact path stays. The whole table goes into the manifest
(``preprocess_placement.choice``).

:func:`choose_placement` is the one hook :mod:`edge_cls.export.artifacts` calls.
"""

from __future__ import annotations

import itertools
import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_cls.artifact.manifest import Manifest, describe_files
from edge_cls.errors import ArtifactError, ConfigError, ExportError
from edge_cls.measure.timing import RoundRobinTiming, round_robin
from edge_cls.predictions import softmax
from edge_cls.preprocess import ImageInput
from edge_cls.preprocess.placement import HOST_EXACT, HOST_RESIZES, Placement, pixels, preprocessor
from edge_cls.quality.fidelity import Fidelity

from .formats import FORMATS, Format

logger = logging.getLogger(__name__)

MIN_GAIN = 0.03  # an in-graph or faster host path must save at least 3% of file -> top-5 time


@dataclass(frozen=True, kw_only=True)
class PlacementSettings:
    """The bars a placement must keep against the exact host path, and how it is timed."""

    max_drop_points: float = 0.05
    min_confident_agreement: float = 0.999
    rounds: int = 7
    timing_images: int = 16
    max_timing_seconds: float = 60.0
    enabled: bool = True

    def __post_init__(self) -> None:
        if not (0 <= self.max_drop_points <= 100 and 0 <= self.min_confident_agreement <= 1):
            raise ConfigError("max_drop_points is in points (0..100), min_confident_agreement a fraction (0..1)")


@dataclass
class _Row:
    placement: Placement
    classifier: Any = None
    fidelity: Fidelity | None = None
    timing: RoundRobinTiming | None = None
    error: str = ""
    verdict: str = ""

    def keeps(self, settings: PlacementSettings) -> bool:
        return not self.error and self.fidelity is not None and self.fidelity.keeps(
            max_drop_points=settings.max_drop_points, min_confident_agreement=settings.min_confident_agreement)

    def to_dict(self) -> dict[str, Any]:
        row = {"placement": self.placement.name, **{k: v for k, v in self.placement.to_dict().items() if k != "steps"},
               "file_top5_p50_ms": self.timing.p50_ms if self.timing else None,
               "spread": self.timing.spread if self.timing else None, "verdict": self.verdict}
        if self.fidelity is not None:
            row.update(self.fidelity.to_dict())
        return {**row, "error": self.error} if self.error else row


@dataclass
class _Models:
    """One loaded classifier per model file: the artifact as built, and each in-graph rebuild."""

    work: Path
    by_input: dict[tuple[str, str | None], Any] = field(default_factory=dict)

    def close(self) -> None:
        for classifier in self.by_input.values():
            classifier.close()


def candidates(fmt: Format) -> list[Placement]:
    """The placements measured for a format: the host's resizes, on the host and in front of a graph
    that normalises (where the format can take uint8), and a graph that resizes (where it has one)."""
    found = [Placement(host_resize=resize) for resize in HOST_RESIZES]
    if fmt.ingraph:
        found += [Placement(graph_input="uint8", host_resize=resize) for resize in HOST_RESIZES]
        if fmt.graph_resize:
            found.append(Placement(graph_input="uint8", graph_resize=fmt.graph_resize))
    return found


def choose_placement(staging: Path, manifest: Manifest, fmt_name: str, images: Sequence[ImageInput] | None,
                     settings: PlacementSettings | None = None) -> None:
    """Measure the placements of the artifact in ``staging`` and ship the winner there: its model file
    rebuilt when it runs preprocessing in the graph, its manifest's ``placement`` and ``placement_choice``
    set (the caller saves the manifest). Without check images as files, the exact host path stays."""
    settings = settings or PlacementSettings()
    if not settings.enabled or not images:
        manifest.placement_choice = {"reason": "no check images as files: the exact host path, unmeasured"}
        return
    fmt = FORMATS[fmt_name]
    models = _Models(Path(tempfile.mkdtemp(prefix="placement-", dir=staging.parent)))
    try:
        rows = [_Row(p) for p in candidates(fmt)]
        # As built (the same candidate may be finalised for two targets): host placement, its own files.
        manifest.placement = HOST_EXACT
        manifest.files = describe_files(staging, [f.path for f in manifest.files])
        _measure_fidelity(staging, manifest, fmt, rows, list(images), models)
        _time(rows, list(images)[:settings.timing_images], settings)
        chosen = _select(rows, settings)
        if chosen.placement.in_graph:
            _install(models.work / _directory(chosen.placement), staging, manifest)
        manifest.placement = chosen.placement
        manifest.placement_choice = _table(rows, chosen, settings, len(images))
        logger.info("preprocessing: %s (%s)", chosen.placement.name, manifest.placement_choice["reason"])
    finally:
        models.close()
        shutil.rmtree(models.work, ignore_errors=True)


def _measure_fidelity(staging: Path, manifest: Manifest, fmt: Format, rows: list[_Row], images: list[ImageInput],
                      models: _Models) -> None:
    """Each row's answers on the images against the exact host path's (the first row)."""
    spec = manifest.spec
    exact = np.stack([spec(image) for image in images])
    reference = None
    for row in rows:
        try:
            row.classifier = _classifier(staging, manifest, fmt, row.placement, models)
            inputs = [preprocessor(spec, row.placement)(image) for image in images]
            logits = row.classifier.logits(_batch(inputs))
        except (ExportError, ArtifactError, RuntimeError, ValueError) as e:
            row.error = f"{type(e).__name__}: {e}"
            logger.warning("placement %s failed: %s", row.placement.name, row.error)
            continue
        if reference is None:  # the first row is the exact host path
            reference = softmax(logits)
        row.fidelity = Fidelity.measure(reference, logits.argmax(1),
                                        max_abs_tensor_error=_tensor_error(spec, row.placement, images, exact))


def _batch(inputs: list[np.ndarray]) -> np.ndarray | list[np.ndarray]:
    same = all(i.shape == inputs[0].shape for i in inputs)
    return np.stack(inputs) if same else inputs


def _tensor_error(spec: Any, placement: Placement, images: list[ImageInput], exact: np.ndarray) -> float | None:
    """Largest difference from the exact tensors of what the placement feeds the model, normalised
    (uint8 pixels through the spec's own lookup table); None where the graph resizes."""
    if placement.resize_in_graph:
        return None
    if placement.in_graph:
        host = [pixels(spec, image, resize=placement.host_resize) for image in images]
        tensors = np.stack([np.stack([spec._lut[c][p[:, :, c]] for c in range(3)]) for p in host])
    else:
        tensors = np.stack([preprocessor(spec, placement)(image) for image in images])
    return float(np.abs(tensors - exact).max())


def _classifier(staging: Path, manifest: Manifest, fmt: Format, placement: Placement, models: _Models) -> Any:
    """The artifact loaded for ``placement``: as built (host), or rebuilt with the graph's steps in front."""
    from edge_cls.runtimes import load

    key = (placement.graph_input, placement.graph_resize)
    if key not in models.by_input:
        if not placement.in_graph:
            classifier = load(staging)
        else:
            directory = models.work / _directory(placement)
            rebuild_artifact(staging, directory, manifest, fmt, placement)
            classifier = load(directory)
        models.by_input[key] = classifier
    return models.by_input[key]


def _directory(placement: Placement) -> str:
    return f"graph-{placement.graph_resize or 'normalise'}"


def rebuild_artifact(staging: Path, directory: Path, manifest: Manifest, fmt: Format,
                     placement: Placement) -> None:
    """A copy of the artifact whose model file takes uint8 pixels, with its own manifest."""
    import importlib
    from dataclasses import replace

    shutil.copytree(staging, directory)
    module, function = fmt.ingraph.split(":")
    model = directory / manifest.model_file
    rebuilt = getattr(importlib.import_module(module), function)(staging / manifest.model_file, model, manifest.spec,
                                                                placement)
    names = [f.path for f in manifest.files]
    names += [p.name for p in rebuilt if p.name not in names]
    replace(manifest, placement=placement, files=describe_files(directory, names)).save(directory)


def _time(rows: list[_Row], images: list[ImageInput], settings: PlacementSettings) -> None:
    """File -> top-5, one image at a time, every working placement in interleaved rounds."""
    calls = {}
    for index, row in enumerate(rows):
        if row.error:
            continue
        cycle = itertools.cycle(images)
        preprocess = preprocessor(row.classifier.spec, row.placement)
        calls[str(index)] = (lambda c=row.classifier, p=preprocess, it=cycle: _top5(c, p, next(it)))
    timings = round_robin(calls, rounds=settings.rounds, block=len(images), warmup=2,
                          max_seconds=settings.max_timing_seconds)
    for index, timing in timings.items():
        rows[int(index)].timing = timing


def _top5(classifier: Any, preprocess: Any, image: ImageInput) -> Any:
    return classifier.top_k(classifier.logits(preprocess(image)[None]), 5)


def _select(rows: list[_Row], settings: PlacementSettings) -> _Row:
    exact = rows[0]
    if exact.error or exact.timing is None:
        raise ExportError(f"the exact host path could not be measured: {exact.error or 'no timing'}")
    eligible = [exact]
    for row in rows[1:]:
        if not row.keeps(settings):
            row.verdict = "failed" if row.error else "changes answers"
        elif row.timing is None or not _faster(row.timing, exact.timing):
            row.verdict = "not faster"
        else:
            row.verdict = "eligible"
            eligible.append(row)
    chosen = min(eligible, key=lambda r: r.timing.p50_ms if r.timing else float("inf"))
    exact.verdict = "reference"
    chosen.verdict = "shipped"
    return chosen


def _faster(candidate: RoundRobinTiming, reference: RoundRobinTiming) -> bool:
    rounds = len(candidate.rounds_ms)
    return (candidate.p50_ms <= (1 - MIN_GAIN) * reference.p50_ms
            and 3 * candidate.rounds_faster_than(reference) >= 2 * rounds)


def _install(directory: Path, staging: Path, manifest: Manifest) -> None:
    """Put the rebuilt model files of the chosen in-graph placement into the artifact being shipped."""
    from edge_cls.artifact.manifest import load_manifest

    rebuilt = load_manifest(directory)
    for entry in rebuilt.files:
        shutil.copyfile(directory / entry.path, staging / entry.path)
    manifest.files = rebuilt.files


def _table(rows: list[_Row], chosen: _Row, settings: PlacementSettings, images: int) -> dict[str, Any]:
    reference = rows[0].timing.p50_ms if rows[0].timing else None
    speedup = f"{reference / chosen.timing.p50_ms:.2f}x" if reference and chosen.timing else "?"
    reason = ("the exact host path: no other placement both keeps the answers and is faster" if chosen is rows[0]
              else f"fastest placement that keeps the answers: {speedup} the exact host path's file -> top-5 time")
    return {"reason": reason, "images": images, "max_drop_points": settings.max_drop_points,
            "min_confident_agreement": settings.min_confident_agreement,
            "timed_images": min(images, settings.timing_images), "rounds": settings.rounds,
            "candidates": [r.to_dict() for r in rows]}
