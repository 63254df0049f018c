"""A rollout's tallies per arm: counts, error rate, latency histogram, score shift, accuracy.

``ArmStats`` is what the analysis (``app.core.analysis``) keeps of each arm, production and
candidate: scored and failed requests, requests served, a log-spaced latency histogram (its
quantiles), one histogram per output column for the score shift (``psi``), and the labelled
figures that are shown, never tested. Also here: the bins an output falls in
(``shift_bins``; a regressor's edges from production's first values, ``decile_edges``), and
what of a ``Comparison``'s arm counts as evidence (``checked_output``, ``latency_exceeds``).

Pure: no I/O.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

from app.core.events import ArmResult

# Latency histogram: log-spaced bucket edges from 1 µs to ~100 s.
_LAT_EDGES = [10 ** (k / 10) / 1000 for k in range(0, 81)]
PSI_BINS = 10
# A regressor's shift bins: the deciles of production's first values (per target).
EDGE_SAMPLES = 200


def _bucket(value: float) -> int:
    lo, hi = 0, len(_LAT_EDGES)
    while lo < hi:
        mid = (lo + hi) // 2
        if _LAT_EDGES[mid] < value:
            lo = mid + 1
        else:
            hi = mid
    return lo


@dataclass
class ArmStats:
    """One arm's tallies over a rollout (its fields are a snapshot's, as they are)."""

    scored: int = 0
    errors: int = 0
    served: int = 0
    latency: list[int] = field(default_factory=lambda: [0] * (len(_LAT_EDGES) + 1))
    # One histogram per column (a class's score, a regressor's target): the score shift.
    shift: list[list[int]] = field(default_factory=list)
    labelled: int = 0
    correct: int = 0
    abs_error: float = 0.0  # a regressor's: sum over labelled requests of the mean |error|

    def add(self, latency_ms: float | None, bins: list[int] | None, error: bool) -> None:
        if error:
            self.errors += 1
            return
        self.scored += 1
        if latency_ms is not None:
            self.latency[_bucket(latency_ms)] += 1
        self.count(bins)

    def count(self, bins: list[int] | None, width: int = PSI_BINS) -> None:
        """Count one output's bin per column (histograms made on first use)."""
        if bins is None:
            return
        if not self.shift:
            self.shift = [[0] * width for _ in bins]
        for histogram, b in zip(self.shift, bins, strict=False):
            histogram[b] += 1

    @property
    def error_rate(self) -> float:
        total = self.scored + self.errors
        return self.errors / total if total else 0.0

    def quantile(self, q: float) -> float:
        cumulative = list(accumulate(self.latency))
        total = cumulative[-1]
        if not total:
            return float("nan")
        i = bisect_left(cumulative, q * total)
        return _LAT_EDGES[min(i, len(_LAT_EDGES) - 1)]

    @property
    def accuracy(self) -> float:
        return self.correct / self.labelled if self.labelled else float("nan")


def psi(expected: list[int], actual: list[int]) -> float:
    """Population stability index of ``actual`` against ``expected`` (binned counts)."""
    e_total, a_total = sum(expected), sum(actual)
    if not e_total or not a_total:
        return 0.0
    value = 0.0
    for e, a in zip(expected, actual, strict=True):
        pe = max(e / e_total, 1e-4)
        pa = max(a / a_total, 1e-4)
        value += (pa - pe) * math.log(pa / pe)
    return value


def shift_bins(
    output: Any, value_edges: list[list[float]] | None, warmup: list[list[float]]
) -> list[int] | None:
    """The bin of each column of ``output`` (None: counted later, or nothing to count).
    A classifier: each class's score in tenths (two classes: the last only, the first
    being its mirror). A regressor: each target's value in the edges fixed from
    production's first values; before they are fixed the values wait in ``warmup``."""
    if output is None:
        return None
    if output.values is not None:
        if value_edges is None:
            if len(warmup) < 2 * EDGE_SAMPLES:
                warmup.append([float(v) for v in output.values])
            return None
        return value_bins(output.values, value_edges)
    if not output.scores:
        return None
    columns = output.scores if len(output.scores) > 2 else output.scores[-1:]
    return [min(int(float(s) * PSI_BINS), PSI_BINS - 1) for s in columns]


def decile_edges(first: list[list[float]]) -> list[list[float]]:
    """A regressor's bin edges from production's first values: each target's deciles
    (distinct ones) over them."""
    width = min(len(row) for row in first)
    edges = []
    for j in range(width):
        column = sorted(row[j] for row in first)
        n = len(column)
        edges.append(sorted({column[k * n // PSI_BINS] for k in range(1, PSI_BINS)}))
    return edges


def checked_output(arm: ArmResult) -> Any:
    """The arm's output, or None when it failed or its scores are not finite probabilities
    (such an output is the arm's error, not evidence)."""
    out = arm.output
    if out is None:
        return None
    if out.scores is not None and not all(
        isinstance(s, float | int) and math.isfinite(s) and 0.0 <= s <= 1.0 for s in out.scores
    ):
        return None
    if out.values is not None and not all(
        isinstance(v, float | int) and math.isfinite(v) for v in out.values
    ):
        return None  # a regressor's values must be finite
    return out


def value_bins(values: list[float], edges: list[list[float]]) -> list[int]:
    return [bisect_right(e, float(v)) for v, e in zip(values, edges, strict=False)]


def latency_exceeds(prod: ArmResult, cand: ArmResult, ratio: float, slack_ms: float) -> bool | None:
    """Whether the candidate was slower than ``ratio`` x production (plus the slack) on this
    request; None when either time is missing or not a finite non-negative number.

    The arms' CPU times are compared when both carry one: each is the model's own cost on
    this request, so a host's stall (a preempted call, charged to whichever arm it hit) does
    not count against the candidate. Records without them (older workers) compare the wall
    times, as before."""
    p, c = prod.cpu_ms, cand.cpu_ms
    if p is None or c is None:
        p, c = prod.latency_ms, cand.latency_ms
    if p is None or c is None or not (math.isfinite(p) and math.isfinite(c)) or p < 0 or c < 0:
        return None
    return c > ratio * p + slack_ms
