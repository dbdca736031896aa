"""``edge-cls export --defer-choice``: the candidate bundle, for the device to time and choose from.

Every candidate is built, judged (and recovered, and cross-fitted) as the precision search does, but
not timed: speed is only known where the artifact will run. The bundle (:mod:`edge_cls.artifact.bundle`)
keeps FP32 and every candidate that met the acceptance rule here, the second cross-fitting fold of the
calibrated ones, and the check set; it is published in one rename like an artifact.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from edge_cls._fileio import sha256_file
from edge_cls.artifact.bundle import BUNDLE_NAME, CHECK_FILE, Bundle, BundleCandidate, bundle_bytes, write_check_set
from edge_cls.artifact.manifest import MANIFEST_NAME
from edge_cls.errors import ExportError
from edge_cls.measure.machine import machine_description

from .artifacts import _by_format, measure_format, prepared
from .candidates import Candidate, ExportContext, close_candidates, tool_versions
from .formats import FORMATS, ExportTarget
from .publish import publish_all

logger = logging.getLogger(__name__)


def export_bundle(model: Any, spec: Any, labels: list[str], out_dir: str | Path, targets: list[ExportTarget],
                  **export: Any) -> Path:
    """Build and judge every candidate of every target's format; publish the bundle at ``out_dir``.
    ``export`` takes :func:`edge_cls.export.export_artifacts`'s keywords."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not (out_dir / BUNDLE_NAME).is_file():
        raise ExportError(f"{out_dir} exists and is not an edge-cls bundle: it was left untouched; choose another "
                          "--output or move it away")
    with prepared(model, spec, labels, out_dir.parent, targets, deferred=True, **export) as ctx:
        staging = ctx.work / "bundle"
        staging.mkdir()
        entries, requested = [], {}
        for fmt, group in _by_format(targets).items():
            requested[fmt] = group[0].precision
            built = measure_format(ctx, fmt, [t.precision for t in group], timed=False)
            try:
                entries += [_copy(c, staging) for c in built if _keep(c)]
            finally:
                close_candidates(built)
        record = _check_set(ctx, staging / CHECK_FILE)
        bundle = Bundle(spec=spec, labels=list(labels), task=ctx.task, model_name=ctx.model_name,
                        rule=_rule(ctx), requested=requested, check=record, candidates=entries,
                        host={"machine": machine_description(), **{f"tool {k}": v for k, v in tool_versions().items()}})
        bundle.save(staging)
        publish_all([(staging, out_dir)], ctx.work)
    logger.info("bundle %s: %d candidates, %.1f MB", out_dir, len(entries), bundle_bytes(out_dir) / 1e6)
    return out_dir


def _keep(candidate: Candidate) -> bool:
    """FP32 (the device's speed and parity reference) and every candidate that met the rule here."""
    m = candidate.measured
    return m is not None and not m.error and (candidate.recipe.precision == "fp32" or m.meets())


def _copy(candidate: Candidate, staging: Path) -> BundleCandidate:
    name = f"{candidate.recipe.format}-{candidate.recipe.name}"
    shutil.copytree(candidate.staging, staging / name)
    second = None
    if candidate.second_fold is not None:
        second = f"{name}-fold2"
        shutil.copytree(candidate.second_fold, staging / second)
    m = candidate.measured
    host = {k: v for k, v in m.to_dict().items() if isinstance(v, (int, float, str, bool)) or v is None}  # type: ignore
    return BundleCandidate(directory=name, format=candidate.recipe.format,
                           backend=FORMATS[candidate.recipe.format].backend, recipe=candidate.recipe.name,
                           precision=candidate.recipe.precision,
                           manifest_sha256=sha256_file(staging / name / MANIFEST_NAME), second_fold=second,
                           second_fold_sha256=None if second is None else sha256_file(staging / second / MANIFEST_NAME),
                           host=host)


def _check_set(ctx: ExportContext, path: Path) -> dict[str, Any]:
    """The check images both folds were checked on, with the float model's answers, stored compactly."""
    ref = ctx.reference
    if ctx.cross_fit is not None:
        ref = ref.joined(ctx.cross_fit.reference, name=f"{ref.name} + {ctx.cross_fit.reference.name} (cross-fitted)")
    fold = np.zeros(len(ref), dtype=np.int8)
    fold[len(ctx.reference):] = 1
    groups = ref.groups if ref.groups is not None else np.arange(len(ref))
    record = write_check_set(path, ref.batch, ctx.spec, ref.logits, groups, fold, ref.targets)
    return {**record, "temperature": ref.temperature, "split": ref.name}


def _rule(ctx: ExportContext) -> dict[str, Any]:
    rule = ctx.search.rule
    return {"max_drop": rule.max_drop, "min_agreement": rule.min_agreement, "level": rule.level,
            "harm_alpha": rule.harm_alpha, "rounds": rule.rounds, "seed": rule.seed}
