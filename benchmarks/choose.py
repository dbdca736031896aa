"""The device decides: a candidate bundle's size, and what ``edge-cls choose`` takes and chooses.

Each case runs, as a user would, ``edge-cls export ... --defer-choice`` (the build host's half: build
and judge every candidate, no timing) and then ``edge-cls choose`` on the bundle for each format (the
device's half: verify, re-check on the stored check set, time round-robin, write the artifact), here
on one machine, so the build host and the device are the same CPU:

- ``demo``: the demo student (``build/demo``, from ``make demo``), its training digits to calibrate,
  its 500 labelled validation digits to check;
- ``lite1``: EfficientNet-Lite1 with real ImageNet weights, ``--calib-data`` a folder of 19 real
  photos each whole and as 12 crops (cross-fitted), ``--qad-seconds 0``.

    python benchmarks/choose.py [--cases demo lite1]

Writes benchmarks/results/choose.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from photos import write_lite_weights, write_photo_folder

from edge_cls.artifact.bundle import bundle_bytes, read_bundle
from edge_cls.measure.machine import machine_description

RESULTS = Path(__file__).parent / "results"
DEMO = Path("build/demo")


def export_args(case: str, work: Path) -> list[str]:
    if case == "demo":
        return ["--checkpoint", str(DEMO / "checkpoints" / "student.pt"), "--calib-data", str(DEMO / "data" / "train"),
                "--check-data", str(DEMO / "data" / "val")]
    from timm.data import ImageNetInfo

    (work / "imagenet.txt").write_text("\n".join(ImageNetInfo().label_names()) + "\n")
    return ["--model", "tf_efficientnet_lite1", "--weights", str(write_lite_weights("lite1", work / "lite1.pth")),
            "--labels", str(work / "imagenet.txt"), "--calib-data", str(write_photo_folder(work / "photos")),
            "--qad-seconds", "0"]


def edge_cls(*args: str) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "edge_cls.cli", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"edge-cls {' '.join(args[:2])} failed: {result.stderr[-2000:]}")
    return time.perf_counter() - started, result.stdout.strip()


def run_case(case: str, work: Path) -> dict:
    bundle = work / "bundle"
    export_seconds, _ = edge_cls("export", *export_args(case, work), "--defer-choice", "--output", str(bundle))
    record = read_bundle(bundle)
    row = {"case": case, "export_seconds": export_seconds, "bundle_mb": bundle_bytes(bundle) / 1e6,
           "check_mb": record.check["bytes"] / 1e6, "check_images": record.check["images"],
           "check_pictures": record.check["pictures"], "candidates": [c.recipe for c in record.candidates],
           "choices": {}}
    for fmt in dict.fromkeys(c.format for c in record.candidates):
        seconds, line = edge_cls("choose", str(bundle), "--format", fmt, "--output", str(work / f"chosen-{fmt}"))
        manifest = json.loads((work / f"chosen-{fmt}" / "manifest.json").read_text())
        rows = manifest["search"]["candidates"]
        fp32 = next(r for r in rows if r["precision"] == "fp32")
        chosen = next(r for r in rows if r["verdict"] == "shipped")
        row["choices"][fmt] = {"seconds": seconds, "recipe": manifest["recipe"], "ran_as": manifest["runtime_precision"],
                               "x_fp32": chosen["p50_ms"] / fp32["p50_ms"], "expected_drop": chosen["expected_drop"],
                               "drop_high": chosen["drop_high"], "candidates": len(rows), "line": line}
    return row


def write(rows: list[dict]) -> None:
    lines = ["# The device decides: candidate bundles and `edge-cls choose`", "",
             f"Machine (build host and device alike here): {machine_description()}. Command: `python "
             f"benchmarks/choose.py {' '.join(sys.argv[1:])}`.", "",
             "| case | bundle MB (check set MB) | check images (pictures) | export --defer-choice s | format | choose s "
             "| candidates | chosen (ran as) | x FP32 p50 | expected drop, pts [upper] |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for fmt, c in r["choices"].items():
            lines.append(f"| {r['case']} | {r['bundle_mb']:.1f} ({r['check_mb']:.1f}) | {r['check_images']} "
                         f"({r['check_pictures']}) | {r['export_seconds']:.0f} | {fmt} | {c['seconds']:.1f} | "
                         f"{c['candidates']} | {c['recipe']} ({c['ran_as']}) | {c['x_fp32']:.2f} | "
                         f"{c['expected_drop']:.2f} [{c['drop_high']:.2f}] |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "choose.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "choose.json").write_text(json.dumps({"machine": machine_description(), "rows": rows}, indent=1) + "\n")
    print("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=["demo", "lite1"], choices=["demo", "lite1"])
    rows = []
    for case in parser.parse_args().cases:
        with tempfile.TemporaryDirectory(prefix=f"edge-cls-choose-{case}-") as tmp:
            rows.append(run_case(case, Path(tmp)))
        write(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
