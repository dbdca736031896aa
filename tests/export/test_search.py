"""The precision search's choice, on measured rows: what ships, what is refused, and why."""

from __future__ import annotations

import math

import pytest

from edge_cls.errors import ConfigError, ExportError
from edge_cls.measure.timing import RoundRobinTiming
from edge_cls.quality.acceptance import AcceptanceRule, Evidence, judge
from edge_cls.quality.selection import Measured, faster_than, search_table, select

RULE = AcceptanceRule(max_drop=0.3)


def evidence(drop=0.0, high=None, agreement=1.0, labelled=False, harm_p=None, pictures=500):
    return Evidence(images=pictures, pictures=pictures, flips=round((1 - agreement) * pictures), agreement=agreement,
                    confident_images=pictures // 2, confident_agreement=1.0, expected_drop=drop, drop_low=drop / 2,
                    drop_high=drop if high is None else high, kl=0.0, labelled=labelled, harm_p=harm_p,
                    top1=0.95 if labelled else None, reference_top1=0.95 if labelled else None)


def row(recipe, precision, ms, drop=0.0, high=None, jitter=0.0, rule=RULE, **figures):
    rounds = tuple(ms * (1 + jitter * ((-1) ** i)) for i in range(7))
    measured = Measured(name=f"onnx-{precision}", recipe=recipe, precision=precision, timing=RoundRobinTiming(rounds))
    measured.evidence = evidence(drop, high, **figures)
    measured.judgement = judge(measured.evidence, rule)
    return measured


def test_auto_ships_the_faster_candidate_when_both_meet_the_bar():
    rows = [row("fp32", "fp32", 1.0), row("slowish-int8", "int8", 0.8, drop=0.1), row("fast-int8", "int8", 0.5)]
    selection = select(rows, requested="auto", rule=RULE)
    assert selection.chosen.recipe == "fast-int8"
    assert [r.verdict for r in rows] == ["reference", "eligible", "shipped"]


def test_auto_refuses_a_faster_candidate_that_misses_the_bar():
    rows = [row("fp32", "fp32", 1.0), row("lossy", "int8", 0.4, drop=1.0), row("ok", "fp16", 0.9)]
    selection = select(rows, requested="auto", rule=RULE)
    assert selection.chosen.recipe == "ok"
    assert rows[1].verdict == "misses bar" and "expected drop 1.00 pts" in rows[1].why
    assert "over the 0.3-pt bar" in rows[1].why


def test_auto_never_ships_low_precision_slower_than_fp32():
    rows = [row("fp32", "fp32", 1.0), row("s8s8", "int8", 2.9), row("barely", "int8", 0.98)]
    selection = select(rows, requested="auto", rule=RULE)
    assert selection.chosen.recipe == "fp32"
    assert rows[1].verdict == "slower" and rows[2].verdict == "slower"  # 2% faster is within noise: not enough
    assert "no low-precision candidate" in selection.reason


def test_faster_means_faster_in_most_rounds_not_one_lucky_median():
    fp32 = row("fp32", "fp32", 1.0)
    noisy = Measured(name="x", recipe="noisy", precision="int8",
                     timing=RoundRobinTiming((0.5, 0.5, 0.5, 0.5, 1.6, 1.6, 1.6)))
    steady = Measured(name="x", recipe="steady", precision="int8", timing=RoundRobinTiming((0.9,) * 7))
    assert not faster_than(noisy, fp32)  # median 0.5 but slower in 3 of 7 rounds
    assert faster_than(steady, fp32)


def test_thin_evidence_ships_fp32_and_says_how_many_pictures_would_settle_it():
    rows = [row("fp32", "fp32", 1.0), row("near", "int8", 0.5, drop=0.12, high=0.45, pictures=40)]
    selection = select(rows, requested="auto", rule=RULE)
    assert selection.chosen.recipe == "fp32"
    assert rows[1].verdict == "thin evidence" and "would settle it" in rows[1].why
    assert rows[1].judgement.settle_pictures == math.ceil(40 * (0.33 / 0.18) ** 2)  # half-width shrinks as 1/sqrt(n)


def test_labels_add_a_guard_against_significant_harm_and_min_agreement_keeps_the_strict_rule():
    harmful = row("harmful", "int8", 0.5, drop=0.1, labelled=True, harm_p=0.01)
    assert not harmful.meets() and "McNemar p=0.01" in harmful.judgement.why
    strict = AcceptanceRule(max_drop=0.3, min_agreement=0.995)
    assert not row("flippy", "int8", 0.5, drop=0.05, agreement=0.99, rule=strict).meets()
    assert row("flippy", "int8", 0.5, drop=0.05, agreement=0.99).meets()  # near-tie flips cost little


def test_an_explicit_precision_that_misses_the_bar_fails_with_the_figures():
    rows = [row("fp32", "fp32", 1.0), row("qdq", "int8", 0.5, drop=2.0), row("qop", "int8", 0.5, drop=3.0)]
    with pytest.raises(ExportError) as error:
        select(rows, requested="int8", rule=RULE)
    message = str(error.value)
    assert "no int8 recipe meets the rule (expected top-1 drop <= 0.3 pts" in message
    assert "qdq" in message and "expected drop 2.00 pts" in message
    assert "--accept-drop" in message and "\n" not in message


def test_accept_drop_ships_the_most_accurate_and_marks_it():
    rows = [row("fp32", "fp32", 1.0), row("qdq", "int8", 0.5, drop=2.0), row("qop", "int8", 0.6, drop=1.0)]
    selection = select(rows, requested="int8", rule=RULE, accept_drop=True)
    assert selection.chosen.recipe == "qop" and selection.accepted_drop
    table = search_table(selection, rule=RULE, check_name="val", check_images=500, requested="int8")
    assert table["accepted_drop"] and table["chosen"] == "onnx-int8:qop"
    assert [c["verdict"] for c in table["candidates"]] == ["reference", "misses bar", "shipped"]


def test_an_explicit_precision_slower_than_fp32_ships_with_a_warning(caplog):
    rows = [row("fp32", "fp32", 1.0), row("s8s8", "int8", 1.5)]
    selection = select(rows, requested="int8", rule=RULE)
    assert selection.chosen.recipe == "s8s8" and selection.slower_than_fp32
    assert "NOT faster than FP32" in caplog.text


def test_failed_candidates_are_listed_not_fatal():
    broken = Measured(name="onnx-int8", recipe="nncf", precision="int8", error="ExportError: boom")
    rows = [row("fp32", "fp32", 1.0), broken, row("qdq", "int8", 0.5)]
    assert select(rows, requested="auto", rule=RULE).chosen.recipe == "qdq"
    assert broken.verdict == "failed" and "boom" in broken.why


def test_rule_values_are_checked_in_one_place():
    with pytest.raises(ConfigError, match="max_drop is in points"):
        AcceptanceRule(max_drop=-1)
    with pytest.raises(ConfigError, match="min_agreement is a fraction"):
        AcceptanceRule(min_agreement=1.5)


def test_a_noisy_machine_ships_fp32_rather_than_a_guess():
    noisy = RoundRobinTiming((1.0, 1.5, 0.6, 1.0, 1.4, 0.7, 1.0))
    fp32 = Measured(name="x", recipe="fp32", precision="fp32", timing=noisy)
    small_gain = Measured(name="x", recipe="int8", precision="int8", timing=RoundRobinTiming((0.85,) * 7))
    big_gain = Measured(name="x", recipe="int8", precision="int8", timing=RoundRobinTiming((0.5,) * 7))
    assert fp32.timing.spread > 0.3
    assert not faster_than(small_gain, fp32)  # 15% faster, but the FP32 rounds spread over 30%
    assert faster_than(big_gain, fp32)
