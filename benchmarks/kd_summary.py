"""One table over every ``kd_vs_labels*.json`` in results/: which recipe made KD pay, and by how much.

    python benchmarks/kd_summary.py      # writes benchmarks/results/kd_summary.md

Every row is one ``kd_vs_labels.py`` run (3 seeds); nothing here is measured anew.
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    rows = []
    for path in sorted(RESULTS.glob("kd_vs_labels*.json")):
        result = json.loads(path.read_text())
        cfg, s = result["config"], result["summary"]
        st, kd = cfg["student_train"], cfg["distill"]
        wins = sum(r["kd"] > r["alone"] for r in result["runs"])
        rows.append(
            f"| [{path.stem}]({path.stem}.md) | {100 * s['teacher']['mean']:.1f}% ({cfg['teacher_epochs']} ep) | "
            f"{st['epochs']} | {st['mixup']} | {kd['temperature']} | {kd['task_weight']} | "
            f"{100 * s['alone']['mean']:.1f} ± {100 * s['alone']['std']:.1f} | {100 * s['kd']['mean']:.1f} ± {100 * s['kd']['std']:.1f} | "
            f"{100 * s['kd_minus_alone']['mean']:+.2f} ± {100 * s['kd_minus_alone']['std']:.2f} | {wins}/{len(result['runs'])} |"
        )
    lines = [
        "# KD versus labels only: every recipe tried",
        "",
        "mobilenetv3_small_100 student on the demo digits, 3 seeds each (0, 1, 2), KD weight 1; test top-1 in %, "
        "mean ± sample std over seeds; *gain* is KD minus labels-only paired by seed; *wins*: seeds where KD was "
        "higher. Rows that share a teacher and a schedule share their labels-only students.",
        "",
        "| run | teacher top-1 | student epochs | mixup | T | label-loss weight | labels only | KD | gain (pts) | wins |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    (RESULTS / "kd_summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
