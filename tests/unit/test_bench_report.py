"""The benchmark's report: ratios and goals computed from its measured lines (pure)."""

from __future__ import annotations

import pytest

from app.bench.report import (
    C_PARSE,
    FAN_OUT,
    PROD_ONLY,
    SHADOW,
    Latency,
    Line,
    NaiveLine,
    PaceReport,
    Report,
    SwapReport,
    goals,
    markdown,
)


def report(prod: float, shadow: float, p99: float, worst_swap: float, lost: int) -> Report:
    lines = [
        Line(C_PARSE, 20_000, 1.0, 1.0),
        Line(FAN_OUT, 12_000, 1.0, 1.0),
        Line(PROD_ONLY, int(prod), 1.0, 1.0),
        Line(SHADOW, int(shadow), 1.0, 1.0),
    ]
    return Report(
        lines=lines,
        latencies=[Latency(PROD_ONLY, 8000, 100, 100, 12.0, p99)],
        wait_ms=20,
        naive=NaiveLine(1000, 1.0, 1.0),
        swaps=SwapReport(20, 1000, 5000, 5000 - lost, lost, 0, [100.0], [worst_swap], {}, 30),
        pace=PaceReport(10_000, 2.0, 4, 10, 0.2, 0.5),
    )


@pytest.mark.parametrize(
    ("prod", "shadow", "p99", "worst_swap", "lost", "unmet"),
    [
        (16_000, 9_600, 30.0, 1000.0, 0, []),
        (15_999, 9_600, 30.0, 1000.0, 0, ["production-only >= 0.8 x C_parse"]),
        (16_000, 9_599, 30.0, 1000.0, 0, ["shadow 100% >= 0.8 x fan-out-2"]),
        (16_000, 9_600, 30.1, 1000.0, 0, [f"{PROD_ONLY}: p99 <= 30 ms at half load"]),
        (16_000, 9_600, 30.0, 1000.1, 2, ["swap <= 1 s", "swaps lose and duplicate nothing"]),
        (9_999, 9_600, 30.0, 1000.0, 0, [
            "production-only >= 0.8 x C_parse", "production-only >= 10 x the naive peer"
        ]),
    ],
)  # fmt: skip
def test_goals_are_met_exactly_at_their_thresholds(
    prod: float, shadow: float, p99: float, worst_swap: float, lost: int, unmet: list[str]
) -> None:
    found = goals(report(prod, shadow, p99, worst_swap, lost))
    assert [g.goal for g in found if not g.met] == unmet
    assert len(found) == 7


def test_markdown_carries_ratios_and_the_goals_table() -> None:
    text = markdown(report(16_000, 9_600, 30.0, 1000.0, 0))
    assert "| worker: production only | 16,000 | 0.80 of C_parse |" in text
    assert "| worker: shadow 100% | 9,600 | 0.80 of fan-out-2 |" in text
    assert "worker is 16.0x" in text
    assert "lost 0; duplicated 0" in text
    assert "| production-only >= 10 x the naive peer | 16.0x | yes |" in text
