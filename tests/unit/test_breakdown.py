"""The bench's per-batch breakdown from worker traces, joined with what its clients saw."""

from __future__ import annotations

from typing import Any

import pytest

from app.bench.breakdown import REQUEST_SPANS, Sighting, breakdown, quantiles
from app.bench.tables import breakdown_rows


def trace(
    records: int, fetched: float, committed: float, inputs: dict[str, list[int]], **stages: float
) -> dict[str, Any]:
    return {
        "records": records,
        "stages_ms": stages,
        "round_trips": {
            "AddPartitionsToTxn": {
                "count": 2,
                "ms": 3.0,
                "errors": {"CONCURRENT_TRANSACTIONS": 1},
            },
            "EndTxn": {"count": 1, "ms": 1.0, "errors": {}},
        },
        "fetched_at": fetched,
        "committed_at": committed,
        "inputs": inputs,
    }


@pytest.mark.parametrize(
    ("values", "p50", "p99"),
    [([1.0], 1.0, 1.0), ([3.0, 1.0, 2.0], 2.0, 3.0), (list(map(float, range(100))), 50.0, 99.0)],
)
def test_quantiles(values: list[float], p50: float, p99: float) -> None:
    q = quantiles(values)
    assert (q.p50, q.p99) == (p50, p99)


def test_stages_round_trips_and_errors_per_batch() -> None:
    traces = [
        trace(4, 10.0, 10.01, {"0": [0, 3]}, fetch=1.0, transaction=5.0),
        trace(2, 10.02, 10.03, {"0": [4, 5]}, fetch=3.0, transaction=7.0),
    ]
    b = breakdown("x", traces)
    assert b.batches == 2
    assert b.stages["fetch"].p99 == 3.0
    assert b.stages["transaction"].p50 == 7.0
    assert "score" not in b.stages  # not traced: not shown
    assert b.round_trips["AddPartitionsToTxn"][0] == 2.0  # requests per batch
    assert b.errors == {"CONCURRENT_TRANSACTIONS": 1.0}
    assert b.requests == {}


def test_each_request_is_split_through_the_batch_that_held_it() -> None:
    traces = [
        trace(2, 10.000, 10.010, {"0": [0, 1], "1": [5, 5]}),
        trace(2, 10.020, 10.040, {"0": [2, 3]}),
    ]
    second = Sighting(0, 3, sent_ms=10_015.0, seen_ms=10_041.0)
    first = Sighting(1, 5, sent_ms=9_999.0, seen_ms=10_012.0)
    nowhere = Sighting(1, 6, sent_ms=9_999.0, seen_ms=10_012.0)  # in no batch: left out
    for seen, spans in ((second, (5.0, 20.0, 1.0)), (first, (1.0, 10.0, 2.0))):
        b = breakdown("x", traces, [seen, nowhere])
        assert [b.requests[s].p50 for s in REQUEST_SPANS] == pytest.approx(spans)
    assert breakdown("x", traces, [nowhere]).requests == {}


def test_rows_have_a_column_per_breakdown() -> None:
    a = breakdown("a at 1,000/s", [trace(1, 1.0, 1.0, {}, fetch=1.0)])
    b = breakdown("b draining", [trace(1, 1.0, 1.0, {}, commit=2.0)])
    rows = breakdown_rows([a, b])
    assert "| stage | a at 1,000/s | b draining |" in rows
    assert "| fetch | 1.0 / 1.0 | - |" in rows
    assert "| commit | - | 2.0 / 2.0 |" in rows
    assert "| round trip: AddPartitionsToTxn | 3.0 / 3.0 (2.00x) | 3.0 / 3.0 (2.00x) |" in rows
    assert "| retried: CONCURRENT_TRANSACTIONS (per batch) | 1.00 | 1.00 |" in rows
