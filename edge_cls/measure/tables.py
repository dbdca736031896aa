"""Benchmark tables for the terminal and Markdown: latency rows and what an app feels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edge_cls.measure.app import AppBenchResult, Spread
from edge_cls.measure.latency import BenchResult

COLUMNS = (
    ("model", "{name}"),
    ("backend", "{backend}"),
    ("precision", "{precision}"),
    ("ran as", "{runtime_precision}"),
    ("top-1", "{top1}"),
    ("agree", "{top1_agreement}"),
    ("p50 ms", "{p50_ms:.2f}"),
    ("p90 ms", "{p90_ms:.2f}"),
    ("img/s @8", "{throughput_ips:.0f}"),
    ("size MB", "{size_mb:.2f}"),
)


def _cells(row: BenchResult) -> list[str]:
    values = row.to_dict()
    values["size_mb"] = row.size_bytes / 1e6
    values["top1"] = "-" if row.top1 is None else f"{100 * row.top1:.1f}%"
    values["top1_agreement"] = "-" if row.top1_agreement is None else f"{100 * row.top1_agreement:.1f}%"
    return [fmt.format(**values) for _, fmt in COLUMNS]


def text_table(rows: Sequence[BenchResult]) -> str:
    """An aligned plain-text table."""
    header = [name for name, _ in COLUMNS]
    body = [_cells(r) for r in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)) for line in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: Sequence[BenchResult]) -> str:
    header = [name for name, _ in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def _cell(value: Any, digits: str = ".3g") -> str:
    if value is None:
        return "-"
    if isinstance(value, Spread):
        return f"{value.median:{digits}} ({value.low:{digits}}-{value.high:{digits}})"
    return f"{value:{digits}}"


APP_COLUMNS = (
    ("model", lambda r: r.name),
    ("backend", lambda r: r.backend),
    ("ran as", lambda r: r.runtime_precision),
    ("start->answer ms", lambda r: _cell(r.cold_start_ms, ".0f")),
    ("load->answer ms", lambda r: _cell(r.cold_first_answer_ms, ".0f")),
    ("warm load->answer ms", lambda r: _cell(r.warm_first_answer_ms, ".0f")),
    ("peak RSS MB", lambda r: _cell(r.peak_rss_mb, ".0f")),
    ("file->top5 p50 ms", lambda r: _cell(r.file_p50_ms)),
    ("loop img/s", lambda r: _cell(r.loop_ips, ".0f")),
    ("batched img/s", lambda r: _cell(r.batched_ips, ".0f")),
    ("pipelined img/s", lambda r: _cell(r.pipelined_ips, ".0f")),
    ("pipelined/loop", lambda r: _cell(r.pipelined_speedup, ".2f")),
    ("compute img/s", lambda r: _cell(r.compute_ips, ".0f")),
)


def app_table(rows: Sequence[AppBenchResult], markdown: bool = False) -> str:
    """The app figures as an aligned text table, or Markdown; medians with (min-max) over rounds."""
    header = [name for name, _ in APP_COLUMNS]
    body = [[cell(r) for _, cell in APP_COLUMNS] for r in rows]
    tool_rows = [r for r in rows if r.benchmark_app and "median_ms" in r.benchmark_app]
    lines = _table(header, body, markdown)
    if tool_rows:
        lines += ["", *_table(list(TOOL_COLUMNS), [_tool_cells(r.name, r.benchmark_app) for r in tool_rows], markdown)]
    return "\n".join(lines)


TOOL_COLUMNS = ("model", "edge-cls p50 ms", "benchmark_app median ms", "benchmark_app FPS",
                "edge-cls ran as / benchmark_app hint")


def _tool_cells(name: str, tool: dict[str, Any]) -> list[str]:
    precisions = f"{tool.get('edge_cls_precision')} / {tool.get('inference_precision', '?')}"
    return [name, _cell(tool.get("edge_cls_p50_ms")), _cell(tool["median_ms"]),
            _cell(tool["throughput_fps"], ".0f"), precisions]


def _table(header: list[str], body: list[list[str]], markdown: bool) -> list[str]:
    if markdown:
        rows = [header, *body]
        return ["| " + " | ".join(r) + " |" for r in rows[:1]] + ["|" + "---|" * len(header)] + [
            "| " + " | ".join(r) + " |" for r in rows[1:]]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)) for line in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


# The precision search's record (a manifest's ``search`` block), for `edge-cls info` and the build report.
def _drop_text(row: dict[str, Any]) -> str:
    drop = row.get("expected_drop")
    if drop is None:
        return "-"
    return f"{drop:.2f} [{row.get('drop_low', 0):.2f}, {row.get('drop_high', 0):.2f}]"


def _agreement_text(row: dict[str, Any]) -> str:
    if row.get("agreement") is None:
        return "-"
    text = f"{100 * row['agreement']:.1f}%"
    if row.get("confident_agreement") is not None:
        text += f" ({100 * row['confident_agreement']:.1f}% confident)"
    return text


def _check_text(search: dict[str, Any]) -> str:
    check = search.get("check", {})
    pictures = f" ({check['pictures']} pictures)" if check.get("pictures") else ""
    return f"{check.get('images', '?')} {check.get('split', '?')} images{pictures}"


def format_search(search: dict[str, Any]) -> list[str]:
    """The search block as aligned text lines, for ``edge-cls info`` and the build report."""
    lines = [f"search:     {search.get('requested', '?')}, bar: {search.get('bar', '?')}, on {_check_text(search)}; "
             f"chose {search.get('chosen', '?')}: {search.get('reason', '')}"]
    for row in search.get("candidates", []):
        p50, spread = row.get("p50_ms"), row.get("spread")
        timing = "-" if p50 is None else f"{p50:.3f} ms" + ("" if spread is None else f" ±{100 * spread:.0f}%")
        lines.append(f"  {row.get('recipe', '?'):<22} {row.get('precision', '?'):<5} {timing:>16}  drop "
                     f"{_drop_text(row):<20} agree {_agreement_text(row):<28} {row.get('verdict', '')}: "
                     f"{row.get('why', '')}")
    return lines


def search_markdown(search: dict[str, Any]) -> list[str]:
    """The search block as a Markdown table, for the build report and the benchmarks."""
    rows = search.get("candidates", [])
    fp32 = next((r for r in rows if r.get("precision") == "fp32" and r.get("p50_ms")), None)
    lines = [f"Requested `{search.get('requested')}`; bar: {search.get('bar')}; on {_check_text(search)}; chose "
             f"`{search.get('chosen')}`: {search.get('reason')}.", "",
             "| recipe | precision | ran as | p50 ms (round-robin) | x FP32 | expected drop, pts [90%] | flips | "
             "agreement | build s | verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        p50, spread = row.get("p50_ms"), row.get("spread")
        ratio = p50 / fp32["p50_ms"] if p50 and fp32 else None
        lines.append(
            f"| {row.get('recipe')} | {row.get('precision')} | {row.get('runtime_precision') or '-'} | "
            + ("-" if p50 is None else f"{p50:.3f}" + ("" if spread is None else f" ±{100 * spread:.0f}%")) + " | "
            + ("-" if ratio is None else f"{ratio:.2f}") + f" | {_drop_text(row)} | {row.get('flips', '-')} | "
            + f"{_agreement_text(row)} | {row.get('build_seconds', 0):.0f} | {row.get('verdict')}: {row.get('why')} |")
    return lines
