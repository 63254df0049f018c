"""The evidence about one rollout: what the controller knows of a candidate against production.

Fed with ``Comparison`` events (paired outputs of the same request) and ``Feedback`` (ground
truth, possibly hours later), it keeps per-arm counts, error rates and latency quantiles, the
paired disagreement rate, the shift of the candidate's scores against production's on the
same records (PSI), accuracy of both arms on the same labelled requests, feedback coverage of
the audit sample, and the anytime-valid tests of ``app.core.sequential``. Only comparisons of
this rollout (its candidate, from the epoch it started) count. It serialises to JSON for
snapshots.

The success criterion's tests (``app.core.metric``) take only the audit sample
(``app.core.audit``), each request with bets fixed when it is compared (``StakedTest``), in
two forms bounded by the same process (the test fed every true value in compared order):
``step_better`` takes every request as it is compared, at its worst case until its label
comes; ``step_frontier`` takes them in compared order but lets no request in at a costly worst
case (``OPEN_LIMIT`` of them): it waits for that request's label (or for the horizon, then its
worst case) while the next ones wait behind it, so late labels cost time, not evidence. Either
form rejecting passes the test at ``alpha``: each is at every moment at most the bounding
process at some point of its path, so both together cross ``1/alpha`` no more often than it
does (Ville). Labels late, missing, or arriving first for frauds cannot pass a worse
candidate. The promote tests are kept per canary step (reset by ``new_step``: a promotion
rests on the last step's own data); they run at ``alpha`` less the share given to the
agreement route (``AGREEMENT_ALPHA_SHARE``) when that route can promote, so that the two
routes together promote a candidate worse than the margin at most ``alpha`` of the time.
The roll-back ("worse") test runs over the
whole rollout on labelled observations, its level split between the metric's tests; once
rejected it stays rejected (``worse_seen`` keeps it across steps). Guardrails have tests both
ways: refuted (roll back at once) and shown (needed to promote): error rate below its
ceiling, latency within its ratio.

Pure: no I/O, no clock (times are passed in).
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

import numpy as np

from app.core.audit import in_audit
from app.core.events import ArmResult, Comparison, Feedback, Role
from app.core.metric import MetricRule, Outcome, RegressionRule, Rule, bound
from app.core.pending import (
    AUDIT,
    CHUNK_ROWS,
    GIVEN_UP,
    IN_TEST,
    OPEN,
    QUEUED,
    PendingStore,
    Row,
)
from app.core.policy import Metric, Policy
from app.core.sequential import BettingTest, Side, StakedTest, rate_tests, staked_pair, staked_worse

# Latency histogram: log-spaced bucket edges from 1 µs to ~100 s.
_LAT_EDGES = [10 ** (k / 10) / 1000 for k in range(0, 81)]
_PSI_BINS = 10
# The rate of compared requests per second per rollout its pending store is sized for: it
# holds at most horizon x rate of them (``pending_limit``); beyond, the oldest is dropped,
# counted and shown, and counts at its worst case (docs/decisions.md, "Pending requests").
PENDING_RATE = 100.0
PENDING_MIN = 10_000
SNAPSHOT_VERSION = 5  # 5: pending requests in a compact store, persisted per chunk
# A regressor's shift bins: the deciles of production's first values (per target).
_EDGE_SAMPLES = 200
# The in-order promote test (``step_frontier``) holds at most this many audit requests at a
# worst case that costs it evidence (label still missing); later ones wait in compared order.
OPEN_LIMIT = 0
# Share of alpha for promotion without labels (disagreement shown below the margin) when that
# route is open; the labelled route gets the rest (Bonferroni over the two routes).
AGREEMENT_ALPHA_SHARE = 0.2
# The latency guardrail is shown when the candidate is within its ratio (plus the slack) of
# production on the same request for all but this share of paired requests.
LATENCY_TAIL = 0.01


class OldSnapshot(ValueError):
    """A snapshot written by an earlier controller, without the evidence this one keeps."""


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

    def count(self, bins: list[int] | None, width: int = _PSI_BINS) -> None:
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
    # test name -> [observations known, sum of squares]: the second moment the bets use.
    moments: dict[str, list[float]] = field(default_factory=dict)
    worse_seen: list[str] = field(default_factory=list)
    # A regressor's shift: per target the bin edges (fixed from production's first
    # ``_EDGE_SAMPLES`` values), and until then both arms' values ([production, candidate]).
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

    @property
    def regressor(self) -> bool:
        return self.kind == "regressor"

    @property
    def unbounded(self) -> bool:
        """A regressor without an error cap: its feedback cannot be bounded, so it is not
        used, and the criterion cannot pass on labels."""
        return self.regressor and self.error_cap is None

    @property
    def agreement_route(self) -> bool:
        """Whether a disagreement shown below the margin may promote (then alpha is split)."""
        return self.promote_on_agreement and self.rule.agreement_bounds_it

    @property
    def alpha_labels(self) -> float:
        share = AGREEMENT_ALPHA_SHARE if self.agreement_route else 0.0
        return self.alpha * (1.0 - share)

    @property
    def alpha_agreement(self) -> float:
        return self.alpha * AGREEMENT_ALPHA_SHARE

    def _fresh_step_tests(self) -> None:
        self.step_better = {
            t: staked_pair(self.rule.margin_of(t), self.alpha_labels)[0] for t in self.rule.tests
        }
        self.step_frontier = {
            t: staked_pair(self.rule.margin_of(t), self.alpha_labels)[0] for t in self.rule.tests
        }
        self.agree_margin, _ = rate_tests(self.margin, self.alpha_agreement)

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
        prod, cand = _checked(c.production), _checked(c.candidate)
        invalid = int(prod is None and c.production.output is not None) + int(
            cand is None and c.candidate.output is not None
        )
        audit = prod is not None and in_audit(self.deployment, c.request_id, self.audit_rate)
        p_label, c_label = self._outcome(prod), self._outcome(cand)
        plan = self._plan(p_label, c_label) if audit else None
        latency = _latency_exceeds(
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
        self.expire(at)
        self._admit()
        return True

    def _pend(
        self,
        request_id: str,
        p_label: Outcome,
        c_label: Outcome,
        at: int,
        step: int,
        audit: bool,
        open_: bool,
        plan: dict[str, tuple[float, list[float | None]]] | None,
    ) -> None:
        """Keep the compared request until its label comes (and queue this step's audit
        requests for the in-order test). The same request id compared again replaces the
        earlier one, which is given up. Past ``pending_limit`` the oldest is dropped."""
        earlier = self.pending.find(request_id)
        if earlier is not None:
            self._close(earlier)
        flags = AUDIT * audit | OPEN * open_
        flags |= QUEUED * (plan is not None and step == self.step_epoch)
        bets = [spread for spread, _ in plan.values()] if plan is not None else None
        self.pending.add(request_id, p_label, c_label, at, step, flags, bets)
        while len(self.pending) > self.pending_limit:
            oldest = self.pending.oldest()
            assert oldest is not None
            self.dropped_pending += 1
            self._close(oldest)

    def _close(self, row: int) -> Row:
        """No label will be joined to ``row`` any more (it came, or is given up)."""
        entry = self.pending.get(row)
        self.pending.close(row)
        self._closed(row, entry)
        return entry

    def _outcome(self, output: Any) -> Outcome:
        if output is None:
            return None
        if self.regressor:
            return [float(v) for v in output.values] if output.values is not None else None
        return output.label  # type: ignore[no-any-return]

    # -- the score shift ------------------------------------------------------------------

    def _bins(self, output: Any, arm: int) -> list[int] | None:
        """The bin of each column of ``output`` (None: counted later, or nothing to count).
        A classifier: each class's score in tenths (two classes: the last only, the first
        being its mirror). A regressor: each target's value in the edges fixed from
        production's first values; before they are fixed the values wait in the warm-up."""
        if output is None:
            return None
        if output.values is not None:
            if self.value_edges is None:
                warmup = self.value_warmup[arm]
                if len(warmup) < 2 * _EDGE_SAMPLES:
                    warmup.append([float(v) for v in output.values])
                return None
            return _value_bins(output.values, self.value_edges)
        if not output.scores:
            return None
        columns = output.scores if len(output.scores) > 2 else output.scores[-1:]
        return [min(int(float(s) * _PSI_BINS), _PSI_BINS - 1) for s in columns]

    def _fix_edges(self) -> None:
        """Fix a regressor's bin edges once production has ``_EDGE_SAMPLES`` values: each
        target's deciles (distinct ones) over them; the warm-up is then counted."""
        first = self.value_warmup[0]
        if self.value_edges is not None or len(first) < _EDGE_SAMPLES:
            return
        width = min(len(row) for row in first)
        edges = []
        for j in range(width):
            column = sorted(row[j] for row in first)
            n = len(column)
            edges.append(sorted({column[k * n // _PSI_BINS] for k in range(1, _PSI_BINS)}))
        self.value_edges = edges
        for arm, stats in ((0, self.production), (1, self.candidate_arm)):
            for row in self.value_warmup[arm]:
                stats.count(_value_bins(row, edges), _PSI_BINS)
        self.value_warmup = [[], []]

    # -- the criterion's tests ------------------------------------------------------------

    def _spread(self, test: str) -> float:
        """The second moment the next bets assume: the test's known observations, shrunk
        towards the disagreement rate (|x| <= 1 on a disagreeing pair, 0 otherwise)."""
        n, sq = self.moments.get(test, (0.0, 0.0))
        prior = (self.disagreements + 1) / (self.paired + 2)
        return (sq + 10 * prior) / (n + 10)

    def _plan(self, prod: Outcome, cand: Outcome) -> dict[str, tuple[float, list[float | None]]]:
        """Per test: the bet size (rounded to float32: the pending store keeps it so, and a
        label's revision must bet what was bet) and the values the label may give."""
        return {
            t: (float(np.float32(self._spread(t))), self.rule.possible(t, prod, cand))
            for t in self.rule.tests
        }

    def _enter(
        self, plan: dict[str, tuple[float, list[float | None]]], this_step: bool
    ) -> list[float] | None:
        """Enter one audit observation into the roll-back tests (its value when known; else
        they wait for the label) and, when it is of this step, into ``step_better`` (its
        worst case until the label comes); the bet sizes if its value is still open, else
        None."""
        open_ = False
        for t, (spread, values) in plan.items():
            if this_step:
                better = self.step_better[t]
                better.add(bound(values, better.m, True), better.stakes(spread))
            worse = self.rollout_worse[t]
            if len(set(values)) > 1:
                open_ = True
            else:
                worse.add(values[0], worse.stakes(spread))
                self._moment(t, values[0])
        return [spread for spread, _ in plan.values()] if open_ else None

    def _costly(self, prod: Outcome, cand: Outcome) -> bool:
        """Whether an open request's worst case costs the promote test evidence (a factor
        below 1 in some test): the ones ``OPEN_LIMIT`` counts."""
        for t, test in self.step_frontier.items():
            values = self.rule.possible(t, prod, cand)
            x = bound(values, test.m, True)
            if len(set(values)) > 1 and x is not None and x < test.m:
                return True
        return False

    def _admit(self) -> None:
        """Move this step's waiting audit requests into the in-order promote test, in compared
        order, while the head's value is known (or given up) or there is room for one more
        open."""
        while (row := self.pending.next_queued()) is not None:
            prod, cand, _, _, flags, truth, bets = self.pending.get(row)
            given_up = bool(flags & GIVEN_UP)
            costly = truth is None and not given_up and self._costly(prod, cand)
            if costly and self.open_in_test >= OPEN_LIMIT:
                return
            self.pending.set_flags(row, off=QUEUED)
            assert bets is not None
            for (t, test), spread in zip(self.step_frontier.items(), bets, strict=True):
                if truth is not None:
                    x = self.rule.value(t, prod, cand, truth)
                else:
                    x = bound(self.rule.possible(t, prod, cand), test.m, True)
                test.add(x, test.stakes(spread))
            self.tested += 1
            self.tested_labelled += int(truth is not None)
            if truth is None and not given_up:
                self.pending.set_flags(row, on=IN_TEST)
                self.open_in_test += int(costly)

    def _moment(self, test: str, x: float | None) -> None:
        if x is None:
            return
        entry = self.moments.setdefault(test, [0.0, 0.0])
        entry[0] += 1
        entry[1] += x * x

    def expire(self, now: int) -> None:
        """Stop waiting for ground truth of requests compared more than a horizon ago (their
        worst case stays in the promote test)."""
        expired = self.pending.expired(now - self.horizon_ms)
        for row in expired:
            self.expired_pending += 1
            self._close(row)
        if expired:
            self._admit()
        self.pending.release()

    def _closed(self, row: int, entry: Row) -> None:
        """What closing ``row`` (``entry`` as it was) changes: this step's open count, a
        queued request is given up, an in-test one leaves the open ones."""
        if not entry.flags & AUDIT or entry.step != self.step_epoch:
            return
        open_ = bool(entry.flags & OPEN)
        self.step_open -= int(open_)
        if entry.flags & QUEUED:
            self.pending.set_flags(row, on=GIVEN_UP)
        elif entry.flags & IN_TEST:
            self.pending.set_flags(row, off=IN_TEST)
            self.open_in_test -= int(open_ and self._costly(entry.prod, entry.cand))

    def tick(self, now: int) -> None:
        """Time passes (the controller's clock) even when no evidence comes."""
        self.clock = max(self.clock, now)
        self.expire(now)

    def add_feedback(self, f: Feedback, at: int = 0) -> bool:
        """Join ground truth to a compared request of this rollout; False if none waits for it,
        or it is not this kind's truth (a label for a classifier; for a regressor as many
        values as it predicts, and only with an error cap: unbounded, its pair stays at its
        worst case and the rollout cannot promote on it)."""
        truth: Outcome = f.values if self.regressor else f.label
        if truth is None or (self.regressor and self.error_cap is None):
            return False
        row = self.pending.find(f.request_id)
        if row is None:
            return False
        prod_label, cand_label, _, step, flags, _, bets = self.pending.get(row)
        wrong_width = isinstance(prod_label, list) and len(truth) != len(prod_label)
        if wrong_width:
            return False  # not this deployment's targets: bad feedback, nothing changes
        audit = bool(flags & AUDIT)
        spreads = bets if flags & OPEN else None
        current = audit and step == self.step_epoch
        queued = current and bool(flags & QUEUED)
        in_test = current and bool(flags & IN_TEST)
        self._close(row)
        self.clock = max(self.clock, at)
        self._count_truth(prod_label, cand_label, truth, audit, step)
        if queued:
            self.pending.set_truth(row, truth)
            self.pending.set_flags(row, off=GIVEN_UP)
        self.tested_labelled += int(in_test)
        if audit and spreads is not None:
            self._revise_tests(prod_label, cand_label, truth, spreads, current, in_test)
        if current:
            self._admit()
        return True

    def _count_truth(
        self, prod_label: Any, cand_label: Any, truth: Outcome, audit: bool, step: int
    ) -> None:
        """The shown figures: labelled, correct and absolute error per arm, audit counts."""
        self.labelled += 1
        if prod_label is not None:
            self.production.labelled += 1
            self.production.correct += int(prod_label == truth)
        # A failed candidate counts as wrong: errors are not a way to dodge the test.
        self.candidate_arm.labelled += int(prod_label is not None)
        self.candidate_arm.correct += int(cand_label == truth and prod_label is not None)
        if (
            isinstance(self.rule, RegressionRule)
            and isinstance(truth, list)
            and isinstance(prod_label, list)
        ):
            cap = self.rule.error_cap
            self.production.abs_error += self.rule.loss(prod_label, truth) * cap
            self.candidate_arm.abs_error += (
                self.rule.loss(cand_label if isinstance(cand_label, list) else None, truth) * cap
            )
        if audit:
            self.audit_labelled += 1
            self.step_audit_labelled += int(step == self.step_epoch)
            self.audit_correct_production += int(prod_label == truth)
            self.audit_correct_candidate += int(cand_label == truth)

    def _revise_tests(
        self,
        prod_label: Any,
        cand_label: Any,
        truth: Outcome,
        spreads: Any,
        current: bool,
        in_test: bool,
    ) -> None:
        """A labelled audit pair: its worst case in every test it entered becomes its value."""
        for (test, worse), spread in zip(self.rollout_worse.items(), spreads, strict=True):
            values = self.rule.possible(test, prod_label, cand_label)
            x = self.rule.value(test, prod_label, cand_label, truth)
            worse.revise(None, x, worse.stakes(spread))
            promote = [self.step_better[test]] if current else []
            promote += [self.step_frontier[test]] if in_test else []
            for better in promote:
                better.revise(bound(values, better.m, True), x, better.stakes(spread))
            self._moment(test, x)

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

    def worse_now(self) -> list[str]:
        """Tests that show the candidate worse than the margin over the whole rollout."""
        return [f"{t} (whole rollout)" for t, w in self.rollout_worse.items() if w.rejected]

    @property
    def coverage(self) -> float:
        """Labelled share of the audit sample (the whole rollout)."""
        return self.audit_labelled / self.audit_compared if self.audit_compared else 0.0

    @property
    def step_coverage(self) -> float:
        """Labelled share of this step's audit sample."""
        if not self.step_audit_compared:
            return 0.0
        return self.step_audit_labelled / self.step_audit_compared

    @property
    def tested_coverage(self) -> float:
        """Labelled share of the audit requests the promote test has taken (this step's
        audit sample up to where the test has reached, in compared order)."""
        return self.tested_labelled / self.tested if self.tested else 0.0

    @property
    def step_disagreement(self) -> float:
        return self.step_disagreements / self.step_paired if self.step_paired else 0.0

    @property
    def open_labels(self) -> int:
        """Audit requests of this step whose label could still change the criterion."""
        return self.step_open

    @property
    def disagreement(self) -> float:
        return self.disagreements / self.paired if self.paired else 0.0

    @property
    def score_shift(self) -> float:
        """The largest PSI over the columns (classes' scores, or targets' values)."""
        shifts = [
            psi(p, c)
            for p, c in zip(self.production.shift, self.candidate_arm.shift, strict=False)
            if len(p) == len(c)
        ]
        return max(shifts, default=0.0)

    @property
    def latency_ratio(self) -> float:
        p, c = self.production.quantile(0.99), self.candidate_arm.quantile(0.99)
        return c / p if p and p == p and c == c else float("nan")

    def metrics(self) -> dict[str, Any]:
        return {
            "candidate_error_rate": self.candidate_arm.error_rate,
            "disagreement": self.disagreement,
            "step_disagreement": self.step_disagreement,
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
            # Shown, never tested: every labelled request of the rollout (audit or not, so
            # biased if labels come for a chosen subset) ...
            "accuracy": {
                "production": self.production.accuracy,
                "candidate": self.candidate_arm.accuracy,
            },
            # ... and the labelled audit sample only (a random sample; the tests use it).
            "accuracy_audit_sample": {
                "production": self._audit_accuracy(self.audit_correct_production),
                "candidate": self._audit_accuracy(self.audit_correct_candidate),
            },
            # A regressor's mean absolute error (each target's capped at ``error_cap``).
            "mean_capped_absolute_error": {
                "production": self._mae(self.production),
                "candidate": self._mae(self.candidate_arm),
            },
            "feedback_coverage": self.coverage,
            "step_feedback_coverage": self.step_coverage,
            "tested_feedback_coverage": self.tested_coverage,
            "shed_fraction": self.shed / self.shed_sampled if self.shed_sampled else 0.0,
        }

    def _mae(self, arm: ArmStats) -> float:
        return arm.abs_error / arm.labelled if self.regressor and arm.labelled else float("nan")

    def _audit_accuracy(self, correct: int) -> float:
        return correct / self.audit_labelled if self.audit_labelled else float("nan")

    def samples(self) -> dict[str, int]:
        return {
            "compared": self.compared,
            "paired": self.paired,
            "labelled": self.labelled,
            "step": self.step_samples,
            "candidate_served": self.candidate_arm.served,
            "production_served": self.production.served,
            "candidate_errors": self.candidate_arm.errors,
            "audit": self.audit_compared,
            "audit_labelled": self.audit_labelled,
            "step_audit": self.step_audit_compared,
            "step_audit_labelled": self.step_audit_labelled,
            "open_labels": self.open_labels,
            "promote_tested": self.tested,
            "promote_tested_labelled": self.tested_labelled,
            "promote_waiting": self.pending.queued,
            "invalid_scores": self.invalid_scores,
            # Compared requests awaiting ground truth, the most the rollout keeps (horizon x
            # the rate it is sized for), and those given up: past the horizon, or dropped
            # over the limit (each at its worst case, never silently).
            "pending": len(self.pending),
            "pending_limit": self.pending_limit,
            "pending_expired": self.expired_pending,
            "pending_dropped": self.dropped_pending,
        }

    # -- snapshots -----------------------------------------------------------------------

    _SIMPLE = (
        "deployment",
        "candidate",
        "start_epoch",
        "alpha",
        "margin",
        "disagreement_ceiling",
        "error_ceiling",
        "kind",
        "error_cap",
        "audit_rate",
        "latency_ratio_limit",
        "latency_slack_ms",
        "step_epoch",
        "step_samples",
        "step_started_at",
        "clock",
        "paired",
        "disagreements",
        "compared",
        "labelled",
        "audit_compared",
        "audit_labelled",
        "audit_correct_production",
        "audit_correct_candidate",
        "step_audit_compared",
        "step_audit_labelled",
        "step_paired",
        "step_disagreements",
        "step_open",
        "shed",
        "shed_sampled",
        "invalid_scores",
        "horizon_ms",
        "promote_on_agreement",
        "tested",
        "tested_labelled",
        "open_in_test",
        "expired_pending",
        "dropped_pending",
        "pending_limit",
    )
    _BETTING = ("agree_margin", "disagree_over", "errors_over", "errors_under", "latency_under")

    def to_json(self) -> dict[str, Any]:
        return {
            "version": SNAPSHOT_VERSION,
            **{k: getattr(self, k) for k in self._SIMPLE},
            "metric": self.metric.model_dump(mode="json"),
            "moments": self.moments,
            "worse_seen": self.worse_seen,
            "value_edges": self.value_edges,
            "value_warmup": self.value_warmup,
            "production": vars(self.production),
            "candidate_arm": vars(self.candidate_arm),
            "pending": self.pending.meta(),
            "tests": {name: _test_state(getattr(self, name)) for name in self._BETTING},
            "staked": {
                group: {t: test.state() for t, test in getattr(self, group).items()}
                for group in ("step_better", "step_frontier", "rollout_worse")
            },
        }

    @classmethod
    def from_json(
        cls, data: dict[str, Any], pending: Mapping[str, bytes] | None = None
    ) -> RolloutAnalysis:
        """The analysis ``to_json`` wrote, with its pending requests from the chunk records
        ``pending`` (suffix -> value, as ``pending.records`` gave them). Raises
        ``OldSnapshot`` for a snapshot of an earlier version (start afresh), ValueError
        when a chunk record is missing."""
        if data.get("version") != SNAPSHOT_VERSION:
            raise OldSnapshot(f"analysis snapshot version {data.get('version')!r}")
        analysis = cls(
            **{k: data[k] for k in cls._SIMPLE}, metric=Metric.model_validate(data["metric"])
        )
        analysis.moments = {k: list(v) for k, v in data["moments"].items()}
        analysis.worse_seen = list(data["worse_seen"])
        analysis.value_edges = data["value_edges"]
        analysis.value_warmup = data["value_warmup"]
        analysis.production = ArmStats(**data["production"])
        analysis.candidate_arm = ArmStats(**data["candidate_arm"])
        analysis.pending = PendingStore.restore(data["pending"], pending or {})
        for name, state in data["tests"].items():
            test: BettingTest = getattr(analysis, name)
            for attr, value in state.items():
                setattr(test, attr, value)
        for group, tests in data["staked"].items():
            for t, state in tests.items():
                staked: StakedTest = getattr(analysis, group)[t]
                for attr, value in state.items():
                    setattr(staked, attr, value)
        return analysis


def _test_state(test: BettingTest) -> dict[str, Any]:
    return {
        "n": test.n,
        "log_wealth": test.log_wealth,
        "max_log_wealth": test.max_log_wealth,
        "_sum": test._sum,
        "_sum_sq": test._sum_sq,
    }


def _checked(arm: ArmResult) -> Any:
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


def _value_bins(values: list[float], edges: list[list[float]]) -> list[int]:
    return [bisect_right(e, float(v)) for v, e in zip(values, edges, strict=False)]


def _latency_exceeds(
    prod: ArmResult, cand: ArmResult, ratio: float, slack_ms: float
) -> bool | None:
    """Whether the candidate was slower than ``ratio`` x production (plus the slack) on this
    request; None when either latency is missing or not a finite non-negative number."""
    p, c = prod.latency_ms, cand.latency_ms
    if p is None or c is None or not (math.isfinite(p) and math.isfinite(c)) or p < 0 or c < 0:
        return None
    return c > ratio * p + slack_ms


__all__ = ["ArmStats", "RolloutAnalysis", "Side", "psi"]
