"""Where a batch's time goes, from the worker's ``BatchTrace``s (``app.worker.batch_trace``,
as JSON): medians and p99s of each stage and of each transaction round trip per batch, and,
joined with what the bench's own clients saw of each request, a request's time split into
before its batch was taken, in the worker, and after EndTxn until a ``read_committed``
consumer read the prediction (pure: no I/O).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.worker.batch_trace import STAGES

Trace = Mapping[str, Any]  # BatchTrace.to_json()


@dataclass(frozen=True)
class Quantiles:
    p50: float
    p99: float


@dataclass(frozen=True)
class Sighting:
    """One request as the bench's clients saw it: where it was written, when it was handed
    to the producer and when its prediction was read (wall-clock ms)."""

    partition: int
    offset: int
    sent_ms: float
    seen_ms: float


# A request's time, in order (ms): handed to the producer → its batch taken by the worker →
# the batch's EndTxn answered → the prediction read (read_committed).
REQUEST_SPANS = ("to the worker's fetch", "fetch to EndTxn answered", "EndTxn to read")


@dataclass(frozen=True)
class Breakdown:
    name: str
    batches: int
    records: Quantiles  # per batch
    stages: dict[str, Quantiles]  # ms per batch
    round_trips: dict[str, tuple[float, Quantiles]]  # API → (requests per batch, ms per batch)
    errors: dict[str, float]  # retriable error → answers per batch
    requests: dict[str, Quantiles] = field(default_factory=dict)  # ms per request


def quantile(ordered: Sequence[float], q: float) -> float:
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)] if ordered else float("nan")


def quantiles(values: Sequence[float]) -> Quantiles:
    ordered = sorted(values)
    return Quantiles(quantile(ordered, 0.5), quantile(ordered, 0.99))


def breakdown(name: str, traces: Sequence[Trace], seen: Sequence[Sighting] = ()) -> Breakdown:
    n = max(len(traces), 1)
    stages = {
        s: quantiles([t["stages_ms"].get(s, 0.0) for t in traces])
        for s in STAGES
        if any(s in t["stages_ms"] for t in traces)
    }
    apis = sorted({api for t in traces for api in t["round_trips"]})
    round_trips = {
        api: (
            sum(t["round_trips"].get(api, {}).get("count", 0) for t in traces) / n,
            quantiles([t["round_trips"].get(api, {}).get("ms", 0.0) for t in traces]),
        )
        for api in apis
    }
    errors: dict[str, float] = {}
    for t in traces:
        for calls in t["round_trips"].values():
            for error, count in calls.get("errors", {}).items():
                errors[error] = errors.get(error, 0.0) + count / n
    return Breakdown(
        name,
        len(traces),
        quantiles([t["records"] for t in traces]),
        stages,
        round_trips,
        errors,
        _request_spans(traces, seen),
    )


def _request_spans(traces: Sequence[Trace], seen: Sequence[Sighting]) -> dict[str, Quantiles]:
    """Each sighted request's three spans, through the batch whose input offsets hold it."""
    spans: dict[int, list[tuple[int, int, Trace]]] = {}
    for t in traces:
        for partition, (first, last) in t["inputs"].items():
            spans.setdefault(int(partition), []).append((first, last, t))
    for found in spans.values():
        found.sort(key=lambda x: x[0])
    starts = {p: [first for first, _, _ in found] for p, found in spans.items()}
    split: list[list[float]] = [[], [], []]
    for s in seen:
        batch = _batch_of(starts.get(s.partition, []), spans.get(s.partition, []), s.offset)
        if batch is None:
            continue
        fetched, committed = batch["fetched_at"] * 1000, batch["committed_at"] * 1000
        for into, value in zip(
            split, (fetched - s.sent_ms, committed - fetched, s.seen_ms - committed), strict=True
        ):
            into.append(value)
    if not split[0]:
        return {}
    return {name: quantiles(values) for name, values in zip(REQUEST_SPANS, split, strict=True)}


def _batch_of(starts: list[int], spans: list[tuple[int, int, Trace]], offset: int) -> Trace | None:
    i = bisect.bisect_right(starts, offset) - 1
    if i >= 0 and spans[i][0] <= offset <= spans[i][1]:
        return spans[i][2]
    return None
