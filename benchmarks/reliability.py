"""Reliability report: hostile inputs and faults thrown at edge-cls, and what came of each.

Classes of input, each tried many ways: malformed image files and hostile image sizes (through
``edge-cls predict``, a real subprocess per image, under a 6 GiB address-space limit and a time
limit), tampered artifacts (a byte flipped at every class of position in every file, sizes
changed, extra files, symbolic links, special files, a re-signed manifest), fuzzed manifests
(every field replaced by values of other types; a sample through ``edge-cls info``), killed
runs (training and export killed with SIGKILL at random points, then resumed or reloaded),
truncated checkpoints and a full disk (a real small tmpfs where mount(2) is allowed). For each
case the outcome is one of: accepted (it worked), clean error (one EdgeClsError line), crash
(any other exception, an internal error, a signal, a hang); tracebacks and lost data are
counted on their own. Peak RSS of ``edge-cls predict`` on one image is measured on a 224-px
artifact (mobilenetv3_large_100, random weights).

    python benchmarks/reliability.py [--work DIR] [--seed 0]

Writes benchmarks/results/reliability.md. Runs against whatever is in the tree.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # the script's own helpers, beside it

from reliability_cases import Case, artifact_cases, image_cases, manifest_cases
from reliability_faults import build_artifacts, disk_cases, killed_run_cases, rss_cases
from reliability_signatures import signature_cases

RESULTS = Path(__file__).parent / "results"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="scratch directory (default: a temporary one, removed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=RESULTS / "reliability.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    work = args.work or Path(tempfile.mkdtemp(prefix="edge-cls-reliability-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        small, big, data = build_artifacts(work)
        cases: list[Case] = []
        for section in (
            lambda: image_cases(small["onnx-fp32"], work, args.seed),
            lambda: artifact_cases(small, work, args.seed),
            lambda: signature_cases(small, work, args.seed),
            lambda: manifest_cases(small["onnx-fp32"], work, args.seed),
            lambda: killed_run_cases(data, work, args.seed),
            lambda: disk_cases(small["onnx-fp32"], work),
        ):
            found = section()
            cases += found
            print(f"{found[0].kind}: {len(found)} cases ({time.perf_counter() - started:.0f}s)", flush=True)
        rss = rss_cases(big, work)
        write_report(args.output, cases, rss, time.perf_counter() - started)
        print(f"wrote {args.output}")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


TAMPER = ("tampered artifacts", "manifest.json byte flips")
RSS_TARGET_MB = 300


def _commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()

    changed = git("status", "--porcelain", "--untracked-files=no", "--", "..", ":(exclude)../benchmarks/results")
    return git("rev-parse", "--short", "HEAD") + (" (with uncommitted changes)" if changed else "")


def _summary(cases: list[Case]) -> list[str]:
    groups: dict[str, list[Case]] = defaultdict(list)
    for case in cases:
        groups[case.kind].append(case)
    lines = ["| input class | tried | accepted | clean errors | crashes | tracebacks | data lost | slowest (s) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for kind, group in groups.items():
        count = {status: sum(c.status == status for c in group) for status in ("accepted", "clean error", "crash")}
        lines.append(f"| {kind} | {len(group)} | {count['accepted']} | {count['clean error']} | {count['crash']} | "
                     f"{sum(c.traceback for c in group)} | {sum(c.lost for c in group)} | "
                     f"{max(c.seconds for c in group):.1f} |")
    total = {status: sum(c.status == status for c in cases) for status in ("accepted", "clean error", "crash")}
    lines.append(f"| **all** | **{len(cases)}** | {total['accepted']} | {total['clean error']} | **{total['crash']}** | "
                 f"**{sum(c.traceback for c in cases)}** | **{sum(c.lost for c in cases)}** | |")
    return lines


def _detection(cases: list[Case]) -> list[str]:
    groups: dict[str, list[Case]] = defaultdict(list)
    for case in cases:
        if case.kind.startswith(TAMPER):
            groups[case.kind].append(case)
    lines = ["| tampering | tried | detected (refused with an ArtifactError) | loaded anyway |", "|---|---:|---:|---:|"]
    for kind, group in groups.items():
        detected = sum(c.status == "clean error" for c in group)
        lines.append(f"| {kind} | {len(group)} | {detected} ({100 * detected / len(group):.0f}%) | "
                     f"{sum(c.status == 'accepted' for c in group)} |")
    return lines


def _rss(cases: list[Case]) -> list[str]:
    lines = ["| artifact: input | outcome | peak RSS (MB) | seconds |", "|---|---|---:|---:|"]
    for case in cases:
        outcome = case.status + (f": {case.detail[:90]}" if case.detail else "")
        lines.append(f"| {case.name} | {outcome} | {case.rss_mb:.0f} | {case.seconds:.1f} |")
    return lines


def _notable(cases: list[Case]) -> list[str]:
    """Every crash, traceback, loss, and tampering that loaded."""
    notable = [c for c in cases if c.status == "crash" or c.traceback or c.lost
               or (c.kind.startswith(TAMPER) and c.status == "accepted")]
    return [f"- {c.kind} / {c.name}: **{c.status}**{' (traceback)' if c.traceback else ''}"
            f"{' (data lost)' if c.lost else ''} {c.detail[:200]}" for c in notable] or ["- none"]


def _faults(cases: list[Case]) -> list[str]:
    return [f"- {c.kind} / {c.name}: {c.status}{' (data lost)' if c.lost else ''}"
            f"{': ' + c.detail[:200] if c.detail else ''}" for c in cases if c.kind.startswith(("killed", "full disk"))]


def write_report(path: Path, cases: list[Case], rss: list[Case], seconds: float) -> None:
    from edge_cls._fileio import write_text_atomic
    from edge_cls.measure.machine import machine_description

    peak = max((c.rss_mb or 0) for c in rss if "info" not in c.name)
    text = "\n".join([
        "# Reliability: hostile inputs and faults", "",
        f"Generated by `python benchmarks/reliability.py` on {machine_description()}, "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, edge-cls {_commit()}, in {seconds:.0f} s.", "",
        "Outcomes: *accepted* (it worked: a valid but unusual image, or a tampering that was not detected), *clean "
        "error* (one `EdgeClsError`, or exit 1 with one `edge-cls: error:` line), *crash* (any other exception, an "
        "internal error, out of memory, a signal, a hang). *Tracebacks* count CLI runs whose stderr held one; *data "
        "lost* counts runs after which a good file was gone or unusable (a resumed run not matching the "
        "uninterrupted one to 1e-4 counts too). CLI runs are real subprocesses under a 6 GiB address-space limit.",
        "", *_summary(cases + rss), "", "## Tamper detection", "",
        "Hashes detect changed files; a manifest rewritten to match them (the re-signed rows) is detected only with "
        "a manifest key (`EDGE_CLS_MANIFEST_KEY[_FILE]`, HMAC-SHA256) or trusted public keys (`EDGE_CLS_TRUSTED_KEYS`, "
        "artifacts signed by `edge-cls sign`), and so are byte flips in manifest.json that still parse. The "
        "*control* row is a signed, untouched artifact: it must load.", "", *_detection(cases), "",
        f"## Peak RSS of `edge-cls predict`, one image, 224-px artifacts (target < {RSS_TARGET_MB} MB)", "",
        f"Largest: {peak:.0f} MB.", "", *_rss(rss), "",
        "## Every crash, traceback, data loss and undetected tampering", "", *_notable(cases + rss), "",
        "## Each fault run", "", *_faults(cases), "",
        "## What was tried", "",
        *[f"- {kind}: " + "; ".join(sorted({c.name for c in cases if c.kind == kind}))[:1500]
          for kind in dict.fromkeys(c.kind for c in cases)],
    ])
    write_text_atomic(path, text + "\n")


if __name__ == "__main__":
    os.environ.setdefault("EDGE_CLS_PROGRESS", "off")
    raise SystemExit(main())
