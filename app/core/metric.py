"""The per-request evidence a success criterion tests: candidate minus production, in [-1, 1].

A ``MetricRule`` (from the policy's ``Metric`` and margin) names one or more tests and, for a
paired request with production's and the candidate's predicted labels and a true label,
gives each test its observation, or ``None`` when the request is not part of that test:

- ``accuracy``: ``1[cand = y] - 1[prod = y]``; one test.
- ``weighted_accuracy``: the same times the weight of class ``y`` over the largest weight.
- ``expected_cost``: ``(cost[y][prod] - cost[y][cand]) / max cost`` (positive: candidate
  cheaper).
- ``recall``: one test per class ``k`` on the requests whose truth is ``k``:
  ``1[cand = k] - 1[prod = k]`` (per-class recall non-inferiority; promoted only when every
  class passes, an intersection-union test).

For every kind, a pair whose predictions agree gives 0 (or is outside a recall test), so the
mean difference is at most the disagreement rate in size: a disagreement shown below the
margin is a valid criterion without labels for the first three kinds (not for recall, whose
tests are conditional on a class). ``bound`` is the worst case over the truths still
possible, used while a label is missing.

``RegressionRule`` is the regressors' criterion (``RegressionSpec.error_cap``): per request
and arm the loss is ``min(|value - truth|, cap) / cap`` (the mean over targets), and the
observation is production's loss minus the candidate's, in [-1, 1] (positive: candidate
closer). Capping is 1-Lipschitz, so the difference is at most ``min(|prod - cand|, cap) /
cap`` in size whatever the truth: that is the worst case of an unlabelled pair (0 when the
two predict the same), and a failed candidate counts as loss 1. Pure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

from app.core.policy import Metric, MetricKind

# A prediction as the criterion sees it: a classifier's label, a regressor's values, or None
# (the arm failed). A truth: a label or the true values.
Outcome = str | list[float] | None


class Rule(Protocol):
    """What the analysis asks of a criterion (``MetricRule``, ``RegressionRule``)."""

    @property
    def tests(self) -> list[str]: ...

    def margin_of(self, test: str) -> float: ...

    @property
    def agreement_bounds_it(self) -> bool: ...

    def value(self, test: str, prod: Any, cand: Any, truth: Any) -> float | None: ...

    def possible(self, test: str, prod: Any, cand: Any) -> list[float | None]: ...


OTHER = "\x00other"  # a true label that neither arm predicted
ALL = "all"


@dataclass(frozen=True)
class MetricRule:
    metric: Metric
    margin: float

    @property
    def tests(self) -> list[str]:
        if self.metric.kind is MetricKind.RECALL:
            return [f"recall:{k}" for k in self.metric.classes]
        return [ALL]

    def margin_of(self, test: str) -> float:
        if test.startswith("recall:"):
            return self.metric.class_margins.get(test[len("recall:") :], self.margin)
        return self.margin

    @property
    def agreement_bounds_it(self) -> bool:
        """Whether |mean difference| <= disagreement rate (agreement promotion is valid)."""
        return self.metric.kind is not MetricKind.RECALL

    def truths(self, prod: str | None, cand: str | None) -> list[str]:
        known = set(self.metric.classes) | set(self.metric.class_weights) | set(self.metric.costs)
        known |= {label for label in (prod, cand) if label is not None}
        return [*sorted(known), OTHER]

    def value(self, test: str, prod: str | None, cand: str | None, truth: str) -> float | None:
        """The observation of ``test`` for one request (a failed candidate, ``cand`` None,
        counts as wrong)."""
        kind = self.metric.kind
        if kind is MetricKind.RECALL:
            k = test[len("recall:") :]
            if truth != k:
                return None
            return float(cand == k) - float(prod == k)
        diff = float(cand == truth) - float(prod == truth)
        if kind is MetricKind.ACCURACY:
            return diff
        if kind is MetricKind.WEIGHTED_ACCURACY:
            weights = self.metric.class_weights
            top = max([1.0, *weights.values()]) if weights else 1.0
            return diff * weights.get(truth, 1.0) / top
        return self._cost_value(prod, cand, truth)

    def _cost_value(self, prod: str | None, cand: str | None, truth: str) -> float:
        costs = self.metric.costs
        top = max(c for row in costs.values() for c in row.values())
        row = costs.get(truth, {})
        worst = max(row.values(), default=0.0)
        prod_cost = row.get(prod, 0.0) if prod is not None else worst
        cand_cost = row.get(cand, 0.0) if cand is not None else worst
        return (prod_cost - cand_cost) / top

    def possible(self, test: str, prod: str | None, cand: str | None) -> list[float | None]:
        """The observation under each truth still possible."""
        return [self.value(test, prod, cand, t) for t in self.truths(prod, cand)]


@dataclass(frozen=True)
class RegressionRule:
    """Non-inferiority of the capped absolute error (module docstring); one test."""

    error_cap: float
    margin: float

    @property
    def tests(self) -> list[str]:
        return [ALL]

    def margin_of(self, test: str) -> float:
        return self.margin

    @property
    def agreement_bounds_it(self) -> bool:
        # Agreeing within a tolerance does not make the losses equal: no agreement route.
        return False

    def loss(self, values: list[float] | None, truth: list[float]) -> float:
        """One arm's capped loss in [0, 1] (1 for a failed arm or a wrong number of values)."""
        if values is None or len(values) != len(truth) or not truth:
            return 1.0
        cap = self.error_cap
        return math.fsum(
            min(abs(v - t), cap) / cap for v, t in zip(values, truth, strict=True)
        ) / len(truth)

    def value(
        self, test: str, prod: list[float] | None, cand: list[float] | None, truth: list[float]
    ) -> float:
        return max(-1.0, min(1.0, self.loss(prod, truth) - self.loss(cand, truth)))

    def spread(self, prod: list[float] | None, cand: list[float] | None) -> float:
        """The largest ``|value|`` any truth can give this pair."""
        if prod is None or cand is None or len(prod) != len(cand) or not prod:
            return 1.0
        cap = self.error_cap
        return math.fsum(min(abs(p - c), cap) / cap for p, c in zip(prod, cand, strict=True)) / len(
            prod
        )

    def possible(
        self, test: str, prod: list[float] | None, cand: list[float] | None
    ) -> list[float | None]:
        if cand is None:  # the candidate's loss is 1: production's loss minus 1
            return [-1.0, 0.0]
        if prod is None:
            return [0.0, 1.0]
        d = self.spread(prod, cand)
        return [-d, d] if d > 0 else [0.0]


def bound(values: list[float | None], m: float, above: bool) -> float | None:
    """The worst case for a test on the ``above`` (promote) or below (roll back) side with
    null mean ``m``: the observation whose factor ``1 + lambda (x - m)`` is smallest, or None
    (leave it out, a factor of 1) when leaving it out is worse."""
    xs = [x for x in values if x is not None]
    if not xs:
        return None
    x = min(xs) if above else max(xs)
    can_omit = len(xs) < len(values)
    if can_omit and ((above and x >= m) or (not above and x <= m)):
        return None
    return x
