"""The evidence about one rollout: what the controller knows of a candidate against production.

Fed with ``Comparison`` events (paired outputs of the same request) and ``Feedback`` (ground
truth, possibly hours later), it keeps per-arm counts, error rates and latency quantiles, the
paired disagreement rate, the shift of the candidate's scores against production's on the
same records (PSI), accuracy of both arms on the same labelled requests, feedback coverage,
and the anytime-valid tests of ``app.core.sequential``. Only comparisons of this rollout
(its candidate, from the epoch it started) count. It serialises to JSON for snapshots.

Pure: no I/O, no clock (times are passed in).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from app.core.events import Comparison, Feedback, Role
from app.core.sequential import BettingTest, Side, non_inferiority, rate_tests

# Latency histogram: log-spaced bucket edges from 1 µs to ~100 s.
_LAT_EDGES = [10 ** (k / 10) / 1000 for k in range(0, 81)]
_PSI_BINS = 10
_PENDING_LIMIT = 100_000  # compared requests awaiting ground truth (they ride in snapshots)


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
    scored: int = 0
    errors: int = 0
    served: int = 0
    latency: list[int] = field(default_factory=lambda: [0] * (len(_LAT_EDGES) + 1))
    scores: list[int] = field(default_factory=lambda: [0] * _PSI_BINS)
    labelled: int = 0
    correct: int = 0

    def add(self, latency_ms: float | None, score: float | None, error: bool) -> None:
        if error:
            self.errors += 1
            return
        self.scored += 1
        if latency_ms is not None:
            self.latency[_bucket(latency_ms)] += 1
        if score is not None:
            self.scores[min(int(score * _PSI_BINS), _PSI_BINS - 1)] += 1

    @property
    def error_rate(self) -> float:
        total = self.scored + self.errors
        return self.errors / total if total else 0.0

    def quantile(self, q: float) -> float:
        total = sum(self.latency)
        if not total:
            return float("nan")
        target, seen = q * total, 0
        for i, count in enumerate(self.latency):
            seen += count
            if seen >= target:
                return _LAT_EDGES[min(i, len(_LAT_EDGES) - 1)]
        return _LAT_EDGES[-1]

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


@dataclass
class RolloutAnalysis:
    """Evidence for the rollout of ``candidate`` (a version) that began at ``start_epoch``."""

    deployment: str
    candidate: str
    start_epoch: int
    alpha: float
    margin: float
    disagreement_ceiling: float
    error_ceiling: float
    step_epoch: int = 0
    step_samples: int = 0
    production: ArmStats = field(default_factory=ArmStats)
    candidate_arm: ArmStats = field(default_factory=ArmStats)
    paired: int = 0
    disagreements: int = 0
    compared: int = 0
    labelled: int = 0
    shed: int = 0
    shed_sampled: int = 0
    horizon_ms: int = 24 * 3600 * 1000
    # request_id -> (production label | None, candidate label | None, compared at), in the
    # order compared, awaiting ground truth for at most ``horizon_ms``.
    pending: OrderedDict[str, tuple[str | None, str | None, int]] = field(
        default_factory=OrderedDict
    )
    expired_pending: int = 0
    dropped_pending: int = 0
    better: BettingTest = field(init=False)
    worse: BettingTest = field(init=False)
    agree_ok: BettingTest = field(init=False)
    disagree_over: BettingTest = field(init=False)
    errors_over: BettingTest = field(init=False)

    def __post_init__(self) -> None:
        self.better, self.worse = non_inferiority(self.margin, self.alpha)
        self.agree_ok, self.disagree_over = rate_tests(self.disagreement_ceiling, self.alpha)
        _, self.errors_over = rate_tests(self.error_ceiling, self.alpha)
        if not self.step_epoch:
            self.step_epoch = self.start_epoch

    def counts(self, comparison: Comparison) -> bool:
        return (
            comparison.deployment == self.deployment
            and comparison.candidate.version == self.candidate
            and comparison.epoch >= self.start_epoch
        )

    def add_comparison(self, c: Comparison, at: int = 0) -> bool:
        """Take ``c`` (compared at ``at``, epoch ms) into the evidence; False (and nothing
        changes) if it is not this rollout's."""
        if not self.counts(c):
            return False
        self.compared += 1
        if c.epoch >= self.step_epoch:
            self.step_samples += 1
        prod, cand = c.production, c.candidate
        cand_failed = cand.output is None
        self.production.add(prod.latency_ms, _score(prod.output), prod.output is None)
        self.candidate_arm.add(cand.latency_ms, _score(cand.output), cand_failed)
        self.errors_over.update(1.0 if cand_failed else 0.0)
        arm = self.candidate_arm if c.served_by is Role.CANDIDATE else self.production
        arm.served += 1
        if prod.output is not None and cand.output is not None:
            self.paired += 1
            disagree = 0.0 if c.agree else 1.0
            self.disagreements += int(disagree)
            self.agree_ok.update(disagree)
            self.disagree_over.update(disagree)
        self.pending[c.request_id] = (
            prod.output.label if prod.output else None,
            cand.output.label if cand.output else None,
            at,
        )
        while len(self.pending) > _PENDING_LIMIT:
            self.pending.popitem(last=False)
            self.dropped_pending += 1
        self.expire(at)
        return True

    def expire(self, now: int) -> None:
        """Stop waiting for ground truth of requests compared more than a horizon ago."""
        while self.pending:
            request_id, (_, _, at) = next(iter(self.pending.items()))
            if at >= now - self.horizon_ms:
                break
            del self.pending[request_id]
            self.expired_pending += 1

    def add_feedback(self, f: Feedback) -> bool:
        """Join ground truth to a compared request of this rollout; False if none waits for it."""
        outputs = self.pending.pop(f.request_id, None)
        if outputs is None:
            return False
        prod_label, cand_label, _ = outputs
        self.labelled += 1
        if prod_label is not None:
            self.production.labelled += 1
            self.production.correct += int(prod_label == f.label)
        if cand_label is not None:
            self.candidate_arm.labelled += 1
            self.candidate_arm.correct += int(cand_label == f.label)
        if prod_label is not None:
            # A failed candidate counts as wrong: errors are not a way to dodge the test.
            d = int(cand_label == f.label) - int(prod_label == f.label)
            self.better.update(float(d))
            self.worse.update(float(d))
        return True

    def new_step(self, epoch: int) -> None:
        self.step_epoch = epoch
        self.step_samples = 0

    @property
    def coverage(self) -> float:
        return self.labelled / self.compared if self.compared else 0.0

    @property
    def disagreement(self) -> float:
        return self.disagreements / self.paired if self.paired else 0.0

    @property
    def score_shift(self) -> float:
        return psi(self.production.scores, self.candidate_arm.scores)

    @property
    def latency_ratio(self) -> float:
        p, c = self.production.quantile(0.99), self.candidate_arm.quantile(0.99)
        return c / p if p and p == p and c == c else float("nan")

    def metrics(self) -> dict[str, Any]:
        return {
            "candidate_error_rate": self.candidate_arm.error_rate,
            "disagreement": self.disagreement,
            "score_shift_psi": self.score_shift,
            "latency_p50_ms": {
                "production": self.production.quantile(0.5),
                "candidate": self.candidate_arm.quantile(0.5),
            },
            "latency_p99_ms": {
                "production": self.production.quantile(0.99),
                "candidate": self.candidate_arm.quantile(0.99),
            },
            "latency_ratio_p99": self.latency_ratio,
            "accuracy": {
                "production": self.production.accuracy,
                "candidate": self.candidate_arm.accuracy,
            },
            "feedback_coverage": self.coverage,
            "shed_fraction": self.shed / self.shed_sampled if self.shed_sampled else 0.0,
        }

    def samples(self) -> dict[str, int]:
        return {
            "compared": self.compared,
            "paired": self.paired,
            "labelled": self.labelled,
            "step": self.step_samples,
            "candidate_served": self.candidate_arm.served,
            "production_served": self.production.served,
            "candidate_errors": self.candidate_arm.errors,
        }

    # -- snapshots -----------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        tests = {
            name: _test_state(getattr(self, name))
            for name in ("better", "worse", "agree_ok", "disagree_over", "errors_over")
        }
        return {
            "deployment": self.deployment,
            "candidate": self.candidate,
            "start_epoch": self.start_epoch,
            "alpha": self.alpha,
            "margin": self.margin,
            "disagreement_ceiling": self.disagreement_ceiling,
            "error_ceiling": self.error_ceiling,
            "step_epoch": self.step_epoch,
            "step_samples": self.step_samples,
            "paired": self.paired,
            "disagreements": self.disagreements,
            "compared": self.compared,
            "labelled": self.labelled,
            "shed": self.shed,
            "shed_sampled": self.shed_sampled,
            "dropped_pending": self.dropped_pending,
            "horizon_ms": self.horizon_ms,
            "expired_pending": self.expired_pending,
            "production": vars(self.production),
            "candidate_arm": vars(self.candidate_arm),
            "pending": [[k, *v] for k, v in self.pending.items()],
            "tests": tests,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RolloutAnalysis:
        simple = {
            k: data[k]
            for k in (
                "deployment",
                "candidate",
                "start_epoch",
                "alpha",
                "margin",
                "disagreement_ceiling",
                "error_ceiling",
                "step_epoch",
                "step_samples",
                "paired",
                "disagreements",
                "compared",
                "labelled",
                "shed",
                "shed_sampled",
                "dropped_pending",
            )
        }
        analysis = cls(**simple)
        analysis.production = ArmStats(**data["production"])
        analysis.candidate_arm = ArmStats(**data["candidate_arm"])
        analysis.pending = OrderedDict((k, (p, c, at)) for k, p, c, at in data["pending"])
        for name, state in data["tests"].items():
            test: BettingTest = getattr(analysis, name)
            for attr, value in state.items():
                setattr(test, attr, value)
        return analysis


def _test_state(test: BettingTest) -> dict[str, Any]:
    return {
        "n": test.n,
        "log_wealth": test.log_wealth,
        "max_log_wealth": test.max_log_wealth,
        "_sum": test._sum,
        "_sum_sq": test._sum_sq,
    }


def _score(output: Any) -> float | None:
    return float(output.scores[-1]) if output is not None and output.scores else None


__all__ = ["ArmStats", "RolloutAnalysis", "Side", "psi"]
