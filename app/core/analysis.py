"""The evidence about one rollout: what the controller knows of a candidate against production.

Fed with ``Comparison`` events (paired outputs of the same request) and ``Feedback`` (ground
truth, possibly hours later), it keeps per-arm counts, error rates and latency quantiles
(``app.core.arm_stats``), the paired disagreement rate, the shift of the candidate's scores
against production's on the same records (PSI), accuracy of both arms on the same labelled
requests, feedback coverage of the audit sample (``app.core.evidence_figures``), the
compared requests awaiting their labels (``app.core.feedback_join``), and the anytime-valid
tests of ``app.core.sequential``: the success criterion's (``app.core.criterion_tests``) and
the guardrails'. Only comparisons of this rollout (its candidate, from the epoch it started)
count. It serialises to JSON for snapshots (``app.core.analysis_snapshot``).

``RolloutAnalysis`` owns the rollout's fields, its start (``for_policy``), what a comparison
adds (``add_comparison``) and a new canary step (``new_step``); the parts named above are
mixed into it, each owning its methods over the same fields. Guardrails have tests both
ways: refuted (roll back at once) and shown (needed to promote): error rate below its
ceiling, latency within its ratio.

Pure: no I/O, no clock (times are passed in).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from app.core import analysis_snapshot
from app.core.arm_stats import (
    EDGE_SAMPLES,
    PSI_BINS,
    ArmStats,
    checked_output,
    decile_edges,
    latency_exceeds,
    shift_bins,
    value_bins,
)
from app.core.audit import in_audit
from app.core.early_labels import EarlyLabels
from app.core.events import Comparison, Role
from app.core.evidence_figures import EvidenceFigures
from app.core.feedback_join import FeedbackJoin
from app.core.metric import MetricRule, Outcome, RegressionRule, Rule
from app.core.pending import CHUNK_ROWS, IN_TEST, QUEUED, PendingStore
from app.core.policy import Metric, Policy
from app.core.sequential import BettingTest, StakedTest, rate_tests, staked_worse

# The rate of compared requests per second per rollout its pending store is sized for: it
# holds at most horizon x rate of them (``pending_limit``); beyond, the oldest is dropped,
# counted and shown, and counts at its worst case (docs/decisions.md, "Pending requests").
PENDING_RATE = 100.0
PENDING_MIN = 10_000
# The latency guardrail is shown when the candidate is within its ratio (plus the slack) of
# production on the same request for all but this share of paired requests.
LATENCY_TAIL = 0.01


@dataclass
class RolloutAnalysis(FeedbackJoin, EvidenceFigures):
    """Evidence for the rollout of ``candidate`` (a version) that began at ``start_epoch``."""

    deployment: str
    candidate: str
    start_epoch: int
    alpha: float
    margin: float
    disagreement_ceiling: float
    error_ceiling: float
    metric: Metric = field(default_factory=Metric)
    # "classifier" or "regressor" (the deployment's signature); a regressor's criterion is
    # the capped absolute error (``error_cap``, RegressionSpec; None: no feedback criterion).
    kind: str = "classifier"
    error_cap: float | None = None
    audit_rate: float = 1.0
    latency_ratio_limit: float = 2.0
    latency_slack_ms: float = 1.0
    step_epoch: int = 0
    step_samples: int = 0
    step_started_at: int = 0
    clock: int = 0  # the latest time seen (record timestamps, or the controller's clock)
    production: ArmStats = field(default_factory=ArmStats)
    candidate_arm: ArmStats = field(default_factory=ArmStats)
    paired: int = 0
    disagreements: int = 0
    compared: int = 0
    labelled: int = 0
    audit_compared: int = 0
    audit_labelled: int = 0
    audit_correct_production: int = 0
    audit_correct_candidate: int = 0
    step_audit_compared: int = 0
    step_audit_labelled: int = 0
    step_paired: int = 0
    step_disagreements: int = 0
    step_open: int = 0  # audit requests of this step whose label could change the criterion
    shed: int = 0
    shed_sampled: int = 0
    invalid_scores: int = 0
    horizon_ms: int = 24 * 3600 * 1000
    promote_on_agreement: bool = True
    tested: int = 0  # audit requests of this step the in-order promote test has taken
    tested_labelled: int = 0  # ...of which labelled
    open_in_test: int = 0  # costly open requests the promote test holds (<= OPEN_LIMIT)
    # Compared requests awaiting ground truth for at most ``horizon_ms``, in compared order
    # (``app.core.pending``): both outcomes, compared at, step epoch, audit, whether the
    # label can still change a test (open), an audit request's bet sizes; and, flagged in
    # the same rows, this step's audit requests waiting to enter the in-order promote test
    # (queued: with the label once it came, or given up past the horizon) and those in it
    # whose label has not come yet (in test). At most ``pending_limit`` of them (0: horizon
    # x ``PENDING_RATE``); beyond, the oldest is dropped (``dropped_pending``).
    pending_limit: int = 0
    pending_chunk_rows: int = CHUNK_ROWS
    expired_pending: int = 0
    dropped_pending: int = 0
    pending: PendingStore = field(init=False)
    # Labels read before their comparison (``app.core.feedback_join``: held for a while,
    # joined when it comes). Not in the snapshot: a restart forgets them.
    early: EarlyLabels = field(default_factory=EarlyLabels, compare=False, repr=False)
    # test name -> [observations known, sum of squares]: the second moment the bets use.
    moments: dict[str, list[float]] = field(default_factory=dict)
    worse_seen: list[str] = field(default_factory=list)
    # A regressor's shift: per target the bin edges (fixed from production's first
    # ``EDGE_SAMPLES`` values), and until then both arms' values ([production, candidate]).
    value_edges: list[list[float]] | None = None
    value_warmup: list[list[list[float]]] = field(default_factory=lambda: [[], []])
    rule: Rule = field(init=False)
    step_better: dict[str, StakedTest] = field(init=False)
    step_frontier: dict[str, StakedTest] = field(init=False)
    rollout_worse: dict[str, StakedTest] = field(init=False)
    agree_margin: BettingTest = field(init=False)
    disagree_over: BettingTest = field(init=False)
    errors_over: BettingTest = field(init=False)
    errors_under: BettingTest = field(init=False)
    latency_under: BettingTest = field(init=False)

    def __post_init__(self) -> None:
        if self.regressor:
            self.rule = RegressionRule(self.error_cap or 1.0, self.margin)
        else:
            self.rule = MetricRule(self.metric, self.margin)
        self._fresh_step_tests()
        # One "worse" test per metric test over the whole rollout, the level split between
        # them (Bonferroni): a candidate no worse than the margin is rolled back on labels
        # at most alpha of the time.
        tests = self.rule.tests
        self.rollout_worse = {
            t: staked_worse(self.rule.margin_of(t), self.alpha / len(tests)) for t in tests
        }
        _, self.disagree_over = rate_tests(self.disagreement_ceiling, self.alpha)
        self.errors_under, self.errors_over = rate_tests(self.error_ceiling, self.alpha)
        self.latency_under, _ = rate_tests(LATENCY_TAIL, self.alpha)
        if not self.step_epoch:
            self.step_epoch = self.start_epoch
        if not self.pending_limit:
            rate = math.ceil(self.horizon_ms / 1000 * PENDING_RATE)
            self.pending_limit = max(rate, PENDING_MIN)
        self.pending = PendingStore(len(tests), self.pending_limit, self.pending_chunk_rows)

    @classmethod
    def for_policy(
        cls,
        deployment: str,
        candidate: str,
        start_epoch: int,
        policy: Policy,
        started_at: int,
        kind: str = "classifier",
        error_cap: float | None = None,
        pending_rate: float = PENDING_RATE,
        pending_limit: int | None = None,
        pending_chunk_rows: int = CHUNK_ROWS,
    ) -> RolloutAnalysis:
        """The analysis of a rollout that starts now under ``policy``. Its pending requests
        are bounded by ``pending_limit``, by default the horizon x ``pending_rate`` (at least
        ``PENDING_MIN``)."""
        g = policy.guardrails
        return cls(
            deployment=deployment,
            candidate=candidate,
            start_epoch=start_epoch,
            alpha=policy.alpha,
            margin=policy.non_inferiority_margin,
            disagreement_ceiling=g.max_disagreement,
            error_ceiling=max(g.max_candidate_error_rate, 1e-4),
            metric=policy.metric,
            kind=kind,
            error_cap=error_cap,
            audit_rate=policy.audit_rate,
            latency_ratio_limit=g.max_latency_ratio,
            latency_slack_ms=g.min_latency_regression_ms,
            horizon_ms=policy.feedback_horizon_s * 1000,
            promote_on_agreement=policy.promote_on_agreement,
            step_started_at=started_at,
            clock=started_at,
            pending_limit=pending_limit
            or max(math.ceil(policy.feedback_horizon_s * pending_rate), PENDING_MIN),
            pending_chunk_rows=pending_chunk_rows,
        )

    def counts(self, comparison: Comparison) -> bool:
        return (
            comparison.deployment == self.deployment
            and comparison.candidate.version == self.candidate
            and comparison.epoch >= self.start_epoch
        )

    def add_comparison(self, c: Comparison, at: int = 0) -> bool:
        """Take ``c`` (compared at ``at``, epoch ms) into the evidence; False (and nothing
        changes) if it is not this rollout's. An arm whose scores are not finite
        probabilities counts as failed. Everything is computed before anything changes, so
        a record is applied whole or not at all."""
        if not self.counts(c):
            return False
        prod, cand = checked_output(c.production), checked_output(c.candidate)
        invalid = int(prod is None and c.production.output is not None) + int(
            cand is None and c.candidate.output is not None
        )
        audit = prod is not None and in_audit(self.deployment, c.request_id, self.audit_rate)
        p_label, c_label = self._outcome(prod), self._outcome(cand)
        plan = self._plan(p_label, c_label) if audit else None
        latency = latency_exceeds(
            c.production, c.candidate, self.latency_ratio_limit, self.latency_slack_ms
        )
        # -- from here on, nothing raises --
        self.invalid_scores += invalid
        self.clock = max(self.clock, at)
        if not self.step_started_at:
            self.step_started_at = at
        self.compared += 1
        if c.epoch >= self.step_epoch:
            self.step_samples += 1
        self.production.add(c.production.latency_ms, self._bins(prod, 0), prod is None)
        self.candidate_arm.add(c.candidate.latency_ms, self._bins(cand, 1), cand is None)
        self._fix_edges()
        failed = 1.0 if cand is None else 0.0
        self.errors_over.update(failed)
        self.errors_under.update(failed)
        if latency is not None:
            self.latency_under.update(1.0 if latency else 0.0)
        arm = self.candidate_arm if c.served_by is Role.CANDIDATE else self.production
        arm.served += 1
        if prod is not None and cand is not None:
            # A regressor's pair agrees within the tolerance (the worker's ``agree``).
            same = c.agree if self.regressor else p_label == c_label
            disagree = 0.0 if same else 1.0
            self.paired += 1
            self.disagreements += int(disagree)
            self.disagree_over.update(disagree)
            if c.epoch >= self.step_epoch:
                self.step_paired += 1
                self.step_disagreements += int(disagree)
                self.agree_margin.update(disagree)
        step = self.step_epoch if c.epoch >= self.step_epoch else c.epoch
        spreads = self._enter(plan, step == self.step_epoch) if plan is not None else None
        if audit:
            self.audit_compared += 1
            self.step_audit_compared += int(step == self.step_epoch)
            self.step_open += int(spreads is not None and step == self.step_epoch)
        self._pend(c.request_id, p_label, c_label, at, step, audit, spreads is not None, plan)
        self._join_early(c.request_id, at)
        self.expire(at)
        self._admit()
        return True

    def _outcome(self, output: Any) -> Outcome:
        if output is None:
            return None
        if self.regressor:
            return [float(v) for v in output.values] if output.values is not None else None
        return output.label  # type: ignore[no-any-return]

    # -- the score shift ------------------------------------------------------------------

    def _bins(self, output: Any, arm: int) -> list[int] | None:
        """The bin of each column of ``output`` (``shift_bins``; a regressor's values wait in
        the arm's warm-up until its edges are fixed)."""
        return shift_bins(output, self.value_edges, self.value_warmup[arm])

    def _fix_edges(self) -> None:
        """Fix a regressor's bin edges once production has ``EDGE_SAMPLES`` values: each
        target's deciles (distinct ones) over them; the warm-up is then counted."""
        first = self.value_warmup[0]
        if self.value_edges is not None or len(first) < EDGE_SAMPLES:
            return
        edges = decile_edges(first)
        self.value_edges = edges
        for arm, stats in ((0, self.production), (1, self.candidate_arm)):
            for row in self.value_warmup[arm]:
                stats.count(value_bins(row, edges), PSI_BINS)
        self.value_warmup = [[], []]

    def new_step(self, epoch: int, at: int = 0) -> None:
        """A canary step begins (weight changed at ``epoch``): the criterion starts afresh on
        this step's evidence; a "worse" already shown is remembered."""
        self.worse_seen.extend(self.worse_now())
        self.step_epoch = epoch
        self.step_samples = 0
        self.step_audit_compared = self.step_audit_labelled = 0
        self.step_paired = self.step_disagreements = self.step_open = 0
        self.tested = self.tested_labelled = self.open_in_test = 0
        self.pending.clear(QUEUED | IN_TEST)
        self.step_started_at = max(at, self.clock)
        self._fresh_step_tests()

    # -- snapshots (``app.core.analysis_snapshot``) ---------------------------------------

    def to_json(self) -> dict[str, Any]:
        return analysis_snapshot.to_json(self)

    @classmethod
    def from_json(
        cls, data: dict[str, Any], pending: Mapping[str, bytes] | None = None
    ) -> RolloutAnalysis:
        """The analysis ``to_json`` wrote (``analysis_snapshot.from_json``)."""
        return analysis_snapshot.from_json(cls, data, pending)


__all__ = ["RolloutAnalysis"]
