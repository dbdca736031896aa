"""Does the acceptance rule's estimate track the real drop? A damage sweep where the truth is known.

The demo student (``build/demo/checkpoints/student.pt``, from ``make demo``) is damaged step by step:
its activations fake-quantized to fewer bits (per-tensor min-max ranges from 64 validation images),
and Gaussian noise added to its weights (a fraction of each tensor's standard deviation). For each
damaged model, on the demo's 500 labelled test images:

- measured: the paired top-1 drop against the float model, with the labels;
- estimated, without the labels: the expected drop under the float model's probabilities (its
  temperature fitted on the validation split), with the 90% picture-bootstrap interval
  (:mod:`edge_cls.quality.acceptance`).

    python benchmarks/acceptance_validation.py [--checkpoint build/demo/checkpoints/student.pt]

Writes benchmarks/results/acceptance_validation.{md,json,png}.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import numpy as np
import torch

from edge_cls.data import load_splits, preprocess_split
from edge_cls.measure.machine import machine_description
from edge_cls.quality.acceptance import AcceptanceRule, measure
from edge_cls.quality.confidence import fit_temperature
from edge_cls.training.checkpoints import Checkpoint
from edge_cls.training.models import predict_logits

RESULTS = Path(__file__).parent / "results"
BITS = (8, 7, 6, 5, 4, 3)
NOISE = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3)


def quantized_activations(model: torch.nn.Module, bits: int, calibration: np.ndarray) -> torch.nn.Module:
    """A copy whose every convolution and linear output is fake-quantized (asymmetric, per tensor)."""
    damaged = copy.deepcopy(model).eval()
    layers = [m for m in damaged.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    ranges: dict[int, list[float]] = {}

    def observe(module, _, output):
        low, high = ranges.setdefault(id(module), [float("inf"), float("-inf")])
        ranges[id(module)] = [min(low, float(output.min())), max(high, float(output.max()))]

    handles = [m.register_forward_hook(observe) for m in layers]
    predict_logits(damaged, calibration)
    for handle in handles:
        handle.remove()
    levels = 2 ** bits - 1

    def quantize(module, _, output):
        low, high = ranges[id(module)]
        scale = max(high - low, 1e-8) / levels
        zero = int(round(-low / scale))
        return torch.fake_quantize_per_tensor_affine(output, scale, zero, 0, levels)

    for layer in layers:
        layer.register_forward_hook(quantize)
    return damaged


def noisy_weights(model: torch.nn.Module, fraction: float, seed: int) -> torch.nn.Module:
    damaged = copy.deepcopy(model).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in damaged.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                weight = module.weight
                weight += fraction * weight.std() * torch.randn(weight.shape, generator=generator)
    return damaged


def sweep(checkpoint: Path) -> dict:
    ck = Checkpoint.load(checkpoint)
    model = ck.build().eval()
    splits = load_splits(checkpoint.parent.parent / "data")
    val, val_targets = preprocess_split(splits["val"], ck.spec)
    test, test_targets = preprocess_split(splits["test"], ck.spec)
    temperature = fit_temperature(predict_logits(model, val), val_targets)
    reference = predict_logits(model, test)
    rule = AcceptanceRule()
    damages = [(f"activations {b} bits", quantized_activations(model, b, val[:64])) for b in BITS]
    damages += [(f"weight noise {f:g} std", noisy_weights(model, f, seed=0)) for f in NOISE]
    rows = []
    for name, damaged in damages:
        e = measure(reference, predict_logits(damaged, test), temperature=temperature, targets=test_targets, rule=rule)
        rows.append({"damage": name, "measured_drop": e.paired_drop, "estimated_drop": e.expected_drop,
                     "low": e.drop_low, "high": e.drop_high, "flips": e.flips, "agreement": e.agreement,
                     "right_to_wrong": e.right_to_wrong, "wrong_to_right": e.wrong_to_right, "mcnemar_p": e.harm_p,
                     "covered": e.drop_low <= e.paired_drop <= e.drop_high})
        print(f"{name:28s} measured {e.paired_drop:+6.2f}  estimated {e.expected_drop:6.2f} "
              f"[{e.drop_low:.2f}, {e.drop_high:.2f}]  flips {e.flips}", flush=True)
    return {"checkpoint": str(checkpoint), "temperature": temperature, "images": len(test), "rows": rows,
            "machine": machine_description()}


def write(result: dict) -> None:
    rows = result["rows"]
    covered = sum(r["covered"] for r in rows)
    correlation = float(np.corrcoef([r["measured_drop"] for r in rows], [r["estimated_drop"] for r in rows])[0, 1])
    lines = ["# Acceptance rule: estimated against measured top-1 drop", "",
             f"Demo student, {result['images']} labelled test images (one picture each), float temperature "
             f"{result['temperature']:.3f} fitted on the validation split. Estimated: the expected drop without "
             "labels, with its 90% picture-bootstrap interval. Measured: the paired drop with labels. "
             f"`python benchmarks/acceptance_validation.py`. Machine: {result['machine']}.", "",
             "| damage | measured drop (pts) | estimated (pts) | 90% interval | flips | agreement | McNemar p |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['damage']} | {r['measured_drop']:+.2f} | {r['estimated_drop']:.2f} | [{r['low']:.2f}, "
              f"{r['high']:.2f}] | {r['flips']} | {100 * r['agreement']:.1f}% | {r['mcnemar_p']:.3g} |" for r in rows]
    lines += ["", f"The interval holds the measured drop for {covered} of {len(rows)} damages; correlation of "
                  f"estimate and measurement {correlation:.3f}.", "", "![estimate vs measurement](acceptance_validation.png)"]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "acceptance_validation.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "acceptance_validation.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(rows)
    print("\n".join(lines))


def plot(rows: list[dict]) -> None:
    from edge_cls.quality.plots import pyplot, save_figure

    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6, 5), dpi=120)
    for kind, marker in (("activations", "o"), ("weight noise", "s")):
        part = [r for r in rows if r["damage"].startswith(kind)]
        x = np.array([r["measured_drop"] for r in part])
        y = np.array([r["estimated_drop"] for r in part])
        errors = np.array([[r["estimated_drop"] - r["low"] for r in part], [r["high"] - r["estimated_drop"] for r in part]])
        ax.errorbar(x, y, yerr=errors, fmt=marker, capsize=3, label=kind)
    top = max(max(r["measured_drop"], r["high"]) for r in rows) * 1.05 + 0.1
    ax.plot([0, top], [0, top], "k--", lw=0.8, label="estimate = measurement")
    ax.set_xlabel("measured top-1 drop with labels (points)")
    ax.set_ylabel("expected drop without labels (points, 90% interval)")
    ax.set_title("Acceptance rule on a damage sweep (demo student, 500 test images)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, RESULTS / "acceptance_validation.png", dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("build/demo/checkpoints/student.pt"))
    write(sweep(parser.parse_args().checkpoint))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
