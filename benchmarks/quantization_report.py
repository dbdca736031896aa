"""Tables and the trade-off plot of ``benchmarks/quantization.py`` (kept apart so a run's json can be
re-rendered without measuring again)."""

from __future__ import annotations

import json
from pathlib import Path

from edge_cls.export.recipes import RECIPES
from edge_cls.measure.tables import search_markdown

RESULTS = Path(__file__).parent / "results"


def _shipped(name: str, entry: dict) -> str:
    search, parity = entry["search"], entry["parity"]
    rows = search["candidates"]
    fp32 = next(r for r in rows if r["precision"] == "fp32")
    chosen = next(r for r in rows if r["verdict"] == "shipped")
    ratio = chosen["p50_ms"] / fp32["p50_ms"] if chosen.get("p50_ms") and fp32.get("p50_ms") else float("nan")
    restoring = {n for n, r in RECIPES.items() if r.restores}
    helped = [r["recipe"] for r in rows if r["verdict"] in ("shipped", "eligible")
              and (r["recipe"] in restoring or r["recipe"].startswith("ort-restore"))]
    confident = parity.get("confident_agreement")
    return (f"| {name} | {entry['recipe']} ({entry['runtime_precision']}) | {ratio:.2f}x | "
            f"{parity['expected_drop_points']:.2f} [{parity['drop_low_points']:.2f}, {parity['drop_high_points']:.2f}] | "
            f"{parity['disagreements']} | {100 * parity['top1_agreement']:.1f}% | "
            + ("-" if confident is None else f"{100 * confident:.1f}% of {parity['confident_images']}")
            + f" | {parity['pictures']} ({parity['images']} images) | {', '.join(helped) or '-'} |")


def _defaults(case: dict) -> list[str]:
    lines = ["| library default | ran as | x FP32 p50 | expected drop, pts [90%] | flips | agreement | confident "
             "agreement | meets the rule |", "|---|---|---|---|---|---|---|---|"]
    for label, d in case.get("defaults", {}).items():
        confident = d.get("confident_agreement")
        lines.append(f"| {label} | {d['runtime_precision']} | {d['x_fp32_p50']:.2f}x | {d['expected_drop']:.2f} "
                     f"[{d['drop_low']:.2f}, {d['drop_high']:.2f}] | {d['flips']} | {100 * d['agreement']:.1f}% | "
                     + ("-" if confident is None else f"{100 * confident:.1f}%") + f" | {d['meets_rule']} |")
    return lines


def write_results(cases: list[dict], run: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "quantization.json").write_text(json.dumps({**run, "cases": cases}, indent=1, default=str) + "\n")
    tools = ", ".join(f"{k} {v}" for k, v in run.get("tools", {}).items())
    lines = ["# INT8 that ships: what `auto` chose, on real models", "",
             f"Machine: {run.get('machine')}. Tools: {tools}. Command: `{run.get('command')}`.", "",
             "Each case is one `edge-cls export` run (the command is listed). *x FP32* is the shipped artifact's p50 "
             "over its backend's FP32 p50, batch 1, round-robin in that run. The expected drop is the top-1 accuracy "
             "the artifact is expected to lose under the float model's own probabilities, with its 90% interval "
             "over source pictures (edge_cls/quality/acceptance.py); the bar is its upper end <= 0.3 pts. Confident "
             "agreement: where the float model's top-1 probability is >= 0.5.", "",
             "| case / backend | shipped (ran as) | x FP32 p50 | expected drop, pts [90%] | flips | agreement | "
             "confident agreement | pictures | recovery that qualified |", "|---|---|---|---|---|---|---|---|---|"]
    for case in cases:
        lines += [_shipped(f"{case['model']} / {b}", e) for b, e in case["backends"].items()]
    for case in cases:
        lines += ["", f"## {case['model']}", "", f"`{case['command']}` ({case['export_seconds']:.0f} s).", ""]
        lines += ["Beside it, the quantizers' own defaults on the same model and images (one fold):", "",
                  *_defaults(case), ""]
        for backend, entry in case["backends"].items():
            lines += [f"### {backend}", "", *search_markdown(entry["search"]), ""]
    lines += ["![trade-off](quantization.png)"]
    (RESULTS / "quantization.md").write_text("\n".join(lines) + "\n")
    plot(cases, RESULTS / "quantization.png")


def plot(cases: list[dict], path: Path) -> None:
    from edge_cls.quality.plots import pyplot, save_figure

    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, len(cases), figsize=(4.6 * len(cases), 4.2), squeeze=False)
    for ax, case in zip(axes[0], cases):
        for backend, marker in (("onnx", "o"), ("openvino", "s")):
            rows = case["backends"].get(backend, {}).get("search", {}).get("candidates", [])
            fp32 = next((r for r in rows if r["precision"] == "fp32" and r.get("p50_ms")), None)
            for row in rows:
                if fp32 is None or not row.get("p50_ms") or row.get("expected_drop") is None:
                    continue
                x, y = row["p50_ms"] / fp32["p50_ms"], row["expected_drop"]
                shipped = row["verdict"] == "shipped"
                ax.errorbar(x, y, yerr=[[y - row["drop_low"]], [row["drop_high"] - y]], fmt=marker, ms=8 if shipped
                            else 4, mec="black" if shipped else "none", capsize=2, alpha=0.9)
                ax.annotate(row["recipe"], (x, y), fontsize=5, xytext=(3, 2), textcoords="offset points")
        ax.axhline(0.3, color="red", lw=0.8, ls="--")
        ax.axvline(1.0, color="grey", lw=0.8)
        ax.set_yscale("symlog", linthresh=0.1)
        ax.set_title(case["model"], fontsize=9)
        ax.set_xlabel("p50 / FP32 p50 (same run)")
        ax.set_ylabel("expected top-1 drop, pts (90% interval)")
        ax.grid(alpha=0.3)
    fig.suptitle("every candidate: circles ONNX Runtime, squares OpenVINO; shipped ones large; red: the 0.3-pt bar",
                 fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
