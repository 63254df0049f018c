"""The benchmark's report: ratios and goals computed from its measured lines (pure)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from app.bench.report import (
    C_PARSE,
    CANARY,
    FAN_OUT,
    HALF_DRAIN,
    HALF_OPEN_LOOP,
    HIGH_RATE,
    MULTI_CLASS,
    PROD_ONLY,
    SHADOW,
    TENSOR,
    Latency,
    Line,
    PaceReport,
    PeerLine,
    Report,
    SwapReport,
    goals,
    kept_up,
)
from app.bench.tables import markdown


def report(prod: float, shadow: float, p99: float, worst_swap: float, lost: int) -> Report:
    lines = [
        Line(C_PARSE, 20_000, 1.0, 1.0),
        Line(FAN_OUT, 12_000, 1.0, 1.0),
        Line(PROD_ONLY, int(prod), 1.0, 1.0),
        Line(SHADOW, int(shadow), 1.0, 1.0),
    ]
    return Report(
        lines=lines,
        latencies=[Latency(PROD_ONLY, 8000, 100, 100, 12.0, p99, half_load=True)],
        wait_ms=20,
        peers=[PeerLine("faust agent, per record (naive)", "at least once", 1000, 1.0, 1.0)],
        swaps=SwapReport(20, 1000, 5000, 5000 - lost, lost, 0, [100.0], [worst_swap], {}, 30),
        pace=PaceReport(10_000, 2.0, 4, 10, 0.2, 0.5),
    )


@pytest.mark.parametrize(
    ("prod", "shadow", "p99", "worst_swap", "lost", "unmet"),
    [
        (16_000, 9_600, 100.0, 1000.0, 0, []),
        (15_999, 9_600, 100.0, 1000.0, 0, ["production-only >= 0.8 x C_parse"]),
        (16_000, 9_599, 100.0, 1000.0, 0, ["shadow 100% >= 0.8 x fan-out-2"]),
        (16_000, 9_600, 100.1, 1000.0, 0, [f"{PROD_ONLY}: p99 <= 100 ms at half load"]),
        (16_000, 9_600, 100.0, 1000.1, 2, ["swap <= 1 s", "swaps lose and duplicate nothing"]),
        (9_999, 9_600, 100.0, 1000.0, 0, [
            "production-only >= 0.8 x C_parse", "production-only >= 10 x the naive peer"
        ]),
    ],
)  # fmt: skip
def test_goals_are_met_exactly_at_their_thresholds(
    prod: float, shadow: float, p99: float, worst_swap: float, lost: int, unmet: list[str]
) -> None:
    found = goals(report(prod, shadow, p99, worst_swap, lost))
    assert [g.goal for g in found if not g.met] == unmet
    assert len(found) == 8


def test_markdown_carries_ratios_and_the_goals_table() -> None:
    text = markdown(report(16_000, 9_600, 100.0, 1000.0, 0))
    assert "| worker: production only | 16,000 | 0.80 of C_parse |" in text
    assert "| worker: shadow 100% | 9,600 | 0.80 of fan-out-2 |" in text
    assert "worker is 16.0x" in text
    assert "lost 0; duplicated 0" in text
    assert "| production-only >= 10 x the naive peer | 16.0x | yes |" in text


def with_kinds() -> Report:
    base = report(16_000, 9_600, 100.0, 1000.0, 0)
    extra = [Line(CANARY, 15_000, 1.0, 1.0), Line(MULTI_CLASS, 17_000, 2.0, 1.0)]
    extra.append(Line(TENSOR, 2_500, 1.0, 1.0))
    return Report(base.lines + extra, base.latencies, base.wait_ms, base.peers)


@pytest.mark.parametrize(
    ("name", "row", "ceiling", "ratio"),
    [
        (C_PARSE, f"| {C_PARSE} | 20,000 |  |", None, None),
        (FAN_OUT, f"| {FAN_OUT} | 12,000 |  |", None, None),
        (PROD_ONLY, f"| {PROD_ONLY} | 16,000 | 0.80 of C_parse |", C_PARSE, 0.8),
        (CANARY, f"| {CANARY} | 15,000 | 0.75 of C_parse |", C_PARSE, 0.75),
        (SHADOW, f"| {SHADOW} | 9,600 | 0.80 of fan-out-2 |", FAN_OUT, 0.8),
        (MULTI_CLASS, f"| {MULTI_CLASS} | 8,500 | 0.42 of C_parse |", C_PARSE, 0.425),
        (TENSOR, f"| {TENSOR} | 2,500 | 0.12 of C_parse |", C_PARSE, 0.125),
    ],
)  # fmt: skip
def test_every_line_has_its_ratio_to_its_ceiling_in_markdown_and_json(
    name: str, row: str, ceiling: str | None, ratio: float | None
) -> None:
    r = with_kinds()
    assert row in markdown(r)
    (found,) = [x for x in r.to_json()["throughput"] if x["name"] == name]
    assert found["ceiling"] == ceiling
    assert found["ratio"] == (pytest.approx(ratio) if ratio is not None else None)


def test_no_ratio_without_its_ceiling_in_the_same_run() -> None:
    r = Report([Line(MULTI_CLASS, 8_000, 1.0, 1.0)], [], 20)
    assert r.to_json()["throughput"][0]["ratio"] is None
    assert f"| {MULTI_CLASS} | 8,000 |  |" in markdown(r)


QUIX_ALO, QUIX_EOS = "Quix Streams 3, at least once", "Quix Streams 3, exactly once"


def with_peers(prod_p50: float, prod_p99: float) -> Report:
    peers = [
        PeerLine(QUIX_ALO, "at least once", 10_000, 1.0, 1.0),
        PeerLine(QUIX_EOS, "exactly once", 9_000, 1.0, 1.0),
    ]
    latencies = [
        Latency(PROD_ONLY, HIGH_RATE, 1000, 1000, prod_p50, prod_p99),
        Latency(QUIX_ALO, HIGH_RATE, 1000, 1000, 10.0, 45.0),
        Latency(QUIX_EOS, HIGH_RATE, 1000, 1000, 2500.0, 40.0 * 100),
    ]
    return Report([Line(PROD_ONLY, 40_000, 1.0, 1.0)], latencies, 20, peers)


@pytest.mark.parametrize(
    ("p50", "p99", "unmet"),
    [
        (10.0, 40.0, []),
        (10.1, 40.0, [f"{PROD_ONLY}: p50 <= 10 ms at 1,000/s"]),
        (10.0, 40.1, [f"{PROD_ONLY}: p99 <= 40 ms at 1,000/s"]),
    ],
)
def test_latency_goals_at_1000_per_second_with_their_ratio_to_the_best_peer(
    p50: float, p99: float, unmet: list[str]
) -> None:
    found = {g.goal: g for g in goals(with_peers(p50, p99))}
    assert [name for name, g in found.items() if not g.met] == unmet
    p50_goal = found[f"{PROD_ONLY}: p50 <= 10 ms at 1,000/s"]
    assert f"({p50 / 10.0:.2f}x the best peer, {QUIX_ALO}: 10 ms)" in p50_goal.measured
    p99_goal = found[f"{PROD_ONLY}: p99 <= 40 ms at 1,000/s"]
    assert f"({p99 / 45.0:.2f}x the best peer, {QUIX_ALO}: 45 ms)" in p99_goal.measured
    drain = found["production-only drains faster than the best peer"]
    assert drain.measured == f"4.0x {QUIX_ALO}"
    assert drain.met


def test_every_peer_has_a_throughput_row() -> None:
    text = markdown(with_peers(9.0, 30.0))
    assert f"| peer: {QUIX_ALO} | 10,000 | worker is 4.0x |" in text
    assert f"| peer: {QUIX_EOS} | 9,000 | worker is 4.4x |" in text


@pytest.mark.parametrize(
    ("half_lines", "judged"),
    [
        # only the half-drain line: it is the one judged (an older report's shape)
        ([(HALF_DRAIN, 20_000, 900.0)], [("half drain 20,000/s", "900 ms", False)]),
        # both: the open-loop one is judged, the half-drain one only shown
        (
            [(HALF_DRAIN, 20_000, 900.0), (HALF_OPEN_LOOP, 6_000, 60.0)],
            [("half open-loop 6,000/s", "60 ms", True)],
        ),
        ([(HALF_OPEN_LOOP, 6_000, 100.1)], [("half open-loop 6,000/s", "100 ms", False)]),
    ],
)
def test_half_load_is_judged_on_the_open_loop_sustained_rate_when_measured(
    half_lines: list[tuple[str, float, float]], judged: list[tuple[str, str, bool]]
) -> None:
    halves = [
        Latency(PROD_ONLY, rate, 100, 100, 5.0, p99, half_load=True, basis=basis)
        for basis, rate, p99 in half_lines
    ]
    r = replace(report(16_000, 9_600, 10.0, 100.0, 0), latencies=halves)
    found = [g for g in goals(r) if "half load" in g.goal]
    assert [(g.goal.split("half load, ")[1], g.measured, g.met) for g in found] == judged
    table = markdown(r)
    assert all(f"({basis})" in table for basis, _, _ in half_lines)


@pytest.mark.parametrize(
    ("requests", "answered", "p99", "expected"),
    [
        (1000, 1000, 500.0, True),
        (1000, 990, 10.0, True),
        (1000, 989, 10.0, False),  # requests left unanswered: it fell behind
        (1000, 1000, 500.1, False),  # a queue built up through the run
    ],
)
def test_a_run_kept_up_when_nearly_all_were_answered_without_queueing(
    requests: int, answered: int, p99: float, expected: bool
) -> None:
    assert kept_up(Latency(PROD_ONLY, 4000, requests, answered, 5.0, p99)) is expected


@pytest.mark.parametrize(
    ("earlier", "seconds", "said"),
    [
        (0, 0.0, None),
        (120_000, 8.5, "covered the 120,000 comparisons earlier phases had left on that "
         "partition in 8.5 s."),
        (120_000, None, "It had 120,000 comparisons earlier phases had left on that partition "
         "still to cover and did not within the wait: the pace includes them."),
    ],
)  # fmt: skip
def test_the_pace_says_what_it_covered_of_earlier_phases_first(
    earlier: int, seconds: float | None, said: str | None
) -> None:
    pace = PaceReport(10_000, 2.0, 4, 10, 0.2, 0.5, {}, earlier, seconds)
    text = markdown(replace(report(16_000, 9_600, 100.0, 1000.0, 0), pace=pace))
    if said is None:
        assert "earlier phases" not in text
    else:
        assert said in text
