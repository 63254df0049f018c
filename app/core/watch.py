"""The post-promotion watch: does the new production degrade against the one it replaced?

After a promotion the deployment's state carries a ``Watch`` (``app.core.events``): the
previous production stays loaded in every worker, which scores it beside the new production
on the audit sample (``app.core.audit``) and emits paired ``Comparison``s marked
``watch: true`` (``production``: the new production, which served; ``candidate``: the
previous production, the version an automatic rollback restores). ``WatchAnalysis`` keeps the
evidence; ``decide_watch`` says roll back, end the watch, or hold. Pure: no I/O, no clock.

**The detector** (``ChangeDetector``) is an e-detector by betting (Shin, Ramdas & Rinaldo,
"E-detectors: a nonparametric framework for sequential change detection", 2023), in its
mixture-over-start-times form. For observations ``x_t`` in ``[lo, hi]`` and the null "no
change ever: ``E[x_t | past] <= m`` at every t", each start time ``j`` has the test
martingale ``C_t^j = prod_{i=j..t} (1 + lambda (x_i - m))`` (1 before ``j``); the detector is
``M_t = mean_lambda sum_j w_j C_t^j`` with ``w_j = 1 / (j (j + 1))`` (summing to 1), kept by
the recursion ``S_t = (S_{t-1} + w_t) e_t``, ``M_t = S_t + 1 / (t + 1)``. A mixture of test
supermartingales with weights summing to one is a test supermartingale (``M_0 = 1``), so by
Ville's inequality **the chance that ``M_t`` ever reaches ``1/alpha`` under the null is at
most alpha**, however long the window and however often it is looked at. After a change at
``j`` it grows like ``C^j`` and alarms once ``log C^j`` passes ``log(1/alpha) + log(1/w_j)``
(a CUSUM-like delay, ``~2 log j`` more than a test started at the change).

**What is watched** (each at a share of the watch's alpha, Bonferroni): per test of the
policy's metric (``app.core.metric``; per class for ``recall``), the degradation ``x`` =
previous production's metric minus the new production's on a labelled audit pair, against
the test's margin (the rollout's); and the disagreement between the two on every paired
audit request, against the guardrail ``max_disagreement``. So: if the new production is
never worse than the previous by more than the margin and never disagrees with it above the
ceiling, an automatic rollback happens with probability at most ``policy.watch.alpha``
(labels arriving in an order that does not depend on their outcome; biased labelling can
cause a false rollback, the safe error). A false rollback is the safe error; the default
alpha (1%) keeps it rare.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from app.core.audit import in_audit
from app.core.early_labels import EarlyLabels
from app.core.events import Comparison, DeploymentState, Evidence, Feedback, ModelOutput
from app.core.metric import MetricRule, Outcome, RegressionRule, Rule
from app.core.pending import CHUNK_ROWS, PendingStore
from app.core.policy import Metric, Policy

# Stakes, as shares of the largest safe bet 1 / (m - lo): a small grid mixed with equal
# weights, so that both small and large degradations are detected without tuning.
STAKES = (0.1, 0.25, 0.5, 0.75)
# Watch pairs awaiting ground truth (the compact store of app.core.pending); beyond, the
# oldest is dropped and counted (``dropped_pending``, in the evidence).
PENDING_LIMIT = 1_000_000
WATCH_SNAPSHOT_VERSION = 3  # 3: pending pairs in the compact store, persisted per chunk


@dataclass
class ChangeDetector:
    """Sequential change detector for ``[lo, hi]``-bounded observations: alarms when the mean
    has risen above ``m`` since some unknown time. ``update`` one observation at a time;
    ``alarmed`` turns true (and stays true) when the e-detector reaches ``1/alpha``."""

    m: float
    alpha: float
    lo: float = 0.0
    hi: float = 1.0
    n: int = 0
    sums: list[float] = field(default_factory=list)  # S_t, one per stake
    log_value: float = 0.0  # log M_t
    max_log_value: float = 0.0

    def __post_init__(self) -> None:
        if not self.lo <= self.m < self.hi:
            raise ValueError(f"m={self.m} must lie within [{self.lo}, {self.hi})")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError("alpha must lie within (0, 1)")
        if not self.sums:
            self.sums = [0.0] * len(STAKES)

    @property
    def threshold(self) -> float:
        return math.log(1.0 / self.alpha)

    @property
    def alarmed(self) -> bool:
        return self.max_log_value >= self.threshold

    def _lambdas(self) -> list[float]:
        # 1 + lambda (x - m) >= 1 - lambda (m - lo) > 0 for lambda < 1 / (m - lo); when
        # m = lo, x - m >= 0 and any stake is safe: 1 / (hi - lo) as the scale.
        room = self.m - self.lo if self.m > self.lo else self.hi - self.lo
        return [c / room for c in STAKES]

    def update(self, x: float) -> None:
        if not self.lo <= x <= self.hi:
            raise ValueError(f"observation {x} outside [{self.lo}, {self.hi}]")
        if self.alarmed:  # the alarm stands; nothing more to learn
            self.n += 1
            return
        self.n += 1
        t = self.n
        w = 1.0 / (t * (t + 1))
        self.sums = [
            (s + w) * (1.0 + lam * (x - self.m))
            for s, lam in zip(self.sums, self._lambdas(), strict=True)
        ]
        value = sum(self.sums) / len(self.sums) + 1.0 / (t + 1)
        self.log_value = math.log(value) if value > 0 else -math.inf
        self.max_log_value = max(self.max_log_value, self.log_value)

    def summary(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "null_mean_at_most": self.m,
            "log_value": self.log_value,
            "threshold": self.threshold,
            "alarmed": self.alarmed,
            "alpha": self.alpha,
        }

    def state(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "sums": list(self.sums),
            "log_value": self.log_value,
            "max_log_value": self.max_log_value,
        }


class WatchVerdict(StrEnum):
    HOLD = "hold"
    ROLLBACK = "rollback"  # restore the previous production
    END = "end"  # the window passed without degradation: production stays


@dataclass(frozen=True)
class WatchDecision:
    verdict: WatchVerdict
    reason: str
    evidence: Evidence = field(default_factory=Evidence)


@dataclass
class WatchAnalysis:
    """Evidence of one watch: ``production`` (the version promoted at ``start_epoch``) against
    ``previous`` (the production it replaced)."""

    deployment: str
    production: str
    previous: str
    start_epoch: int
    started_at: int
    until: int
    alpha: float
    margin: float
    disagreement_ceiling: float
    metric: Metric = field(default_factory=Metric)
    # A regressor is watched on its capped absolute error (``error_cap``; without one its
    # value feedback is not used and only the disagreement is watched).
    kind: str = "classifier"
    error_cap: float | None = None
    audit_rate: float = 1.0
    window_requests: int = 0
    clock: int = 0
    paired: int = 0
    disagreements: int = 0
    labelled: int = 0
    correct_production: int = 0
    correct_previous: int = 0
    production_errors: int = 0
    dropped_pending: int = 0
    pending_chunk_rows: int = CHUNK_ROWS
    # Pairs awaiting ground truth: the new production's outcome (as "prod"), the previous
    # production's (as "cand"), compared at.
    pending: PendingStore = field(init=False)
    # Labels read before their comparison, held until it comes (not in the snapshot).
    early: EarlyLabels = field(default_factory=EarlyLabels, compare=False, repr=False)
    rule: Rule = field(init=False)
    worse: dict[str, ChangeDetector] = field(init=False)
    disagree: ChangeDetector | None = field(init=False)

    def __post_init__(self) -> None:
        if self.kind == "regressor":
            self.rule = RegressionRule(self.error_cap or 1.0, self.margin)
        else:
            self.rule = MetricRule(self.metric, self.margin)
        tests = self.rule.tests
        # Half of alpha for the metric's tests (split between them), half for disagreement;
        # all of it for the metric when there is no disagreement ceiling to watch.
        watched_disagreement = self.disagreement_ceiling < 1.0
        share = self.alpha / 2 if watched_disagreement else self.alpha
        self.worse = {
            t: ChangeDetector(m=self.rule.margin_of(t), alpha=share / len(tests), lo=-1.0)
            for t in tests
        }
        self.disagree = (
            ChangeDetector(m=self.disagreement_ceiling, alpha=share)
            if watched_disagreement
            else None
        )
        self.clock = max(self.clock, self.started_at)
        self.pending = PendingStore(0, PENDING_LIMIT, self.pending_chunk_rows)

    @classmethod
    def for_state(
        cls, state: DeploymentState, kind: str = "classifier", error_cap: float | None = None
    ) -> WatchAnalysis:
        watch = state.watch
        if watch is None:
            raise ValueError(f"{state.deployment} is not being watched")
        p: Policy = state.policy
        return cls(
            deployment=state.deployment,
            production=state.production.version,
            previous=watch.previous.version,
            start_epoch=watch.epoch,
            started_at=watch.started_at,
            until=watch.until,
            alpha=p.watch.alpha,
            margin=p.non_inferiority_margin,
            disagreement_ceiling=p.guardrails.max_disagreement,
            metric=p.metric,
            audit_rate=p.audit_rate,
            window_requests=p.watch.window_requests,
            kind=kind,
            error_cap=error_cap,
        )

    def counts(self, c: Comparison) -> bool:
        return (
            c.watch
            and c.deployment == self.deployment
            and c.production.version == self.production
            and c.candidate.version == self.previous
            and c.epoch >= self.start_epoch
            and in_audit(self.deployment, c.request_id, self.audit_rate)
        )

    def add_comparison(self, c: Comparison, at: int = 0) -> bool:
        """Take a watch comparison (``production``: the new production, ``candidate``: the
        previous one); False if it is not this watch's."""
        if not self.counts(c):
            return False
        self.clock = max(self.clock, at)
        new, old = self._outcome(c.production.output), self._outcome(c.candidate.output)
        if new is None:
            self.production_errors += 1
        if new is not None and old is not None:
            self.paired += 1
            # A regressor's pair agrees within the tolerance (the worker's ``agree``).
            differ = not c.agree if self.kind == "regressor" else new != old
            self.disagreements += int(differ)
            if self.disagree is not None:
                self.disagree.update(1.0 if differ else 0.0)
        if old is not None:  # without the previous production's output nothing compares
            self._pend(c.request_id, new, old, at)
            joinable = self.early.joinable(self.pending, c.request_id, at)
            if joinable is not None:
                self._join(*joinable)
        return True

    def _pend(self, request_id: str, new: Outcome, old: Outcome, at: int) -> None:
        earlier = self.pending.find(request_id)
        if earlier is not None:
            self.pending.close(earlier)
        self.pending.add(request_id, new, old, at, self.start_epoch, 0, None)
        while len(self.pending) > self.pending.limit:
            oldest = self.pending.oldest()
            assert oldest is not None
            self.pending.close(oldest)
            self.dropped_pending += 1
        self.pending.release()

    def _outcome(self, output: ModelOutput | None) -> Outcome:
        if output is None:
            return None
        if self.kind == "regressor":
            return list(output.values) if output.values is not None else None
        return output.label

    def add_feedback(self, f: Feedback, at: int = 0) -> bool:
        """Join the truth of this kind (a regressor's only with an error cap, and with as many
        values as it predicts); False otherwise or when no pair waits for it."""
        truth: Outcome = f.values if self.kind == "regressor" else f.label
        if truth is None or (self.kind == "regressor" and self.error_cap is None):
            return False
        row = self.early.pending_or_hold(self.pending, f.request_id, truth, at)
        return row is not None and self._join(row, truth, at)

    def _join(self, row: int, truth: Outcome, at: int) -> bool:
        """Join ``truth`` to the pair in ``row``."""
        if truth is None:
            return False
        new, old = self.pending.get(row)[:2]
        if isinstance(old, list) and len(old) != len(truth):
            return False
        self.pending.close(row)
        self.clock = max(self.clock, at)
        self.labelled += 1
        self.correct_production += int(new == truth)
        self.correct_previous += int(old == truth)
        for t, detector in self.worse.items():
            # value(): "candidate minus production"; here the new production plays the
            # candidate and the previous production the baseline, so degradation is -value.
            value = self.rule.value(t, old, new, truth)
            if value is not None:
                detector.update(-value)
        return True

    def tick(self, now: int) -> None:
        self.clock = max(self.clock, now)

    @property
    def alarms(self) -> list[str]:
        out = [
            f"{t}: worse than version {self.previous} by more than {d.m:.1%} "
            f"(e-detector over {d.n} labelled pairs, alpha {d.alpha:.3g})"
            for t, d in self.worse.items()
            if d.alarmed
        ]
        if self.disagree is not None and self.disagree.alarmed:
            out.append(
                f"disagreement with version {self.previous} "
                f"{self.disagreement:.1%} above the ceiling {self.disagree.m:.1%} "
                f"(e-detector over {self.disagree.n} paired requests, alpha "
                f"{self.disagree.alpha:.3g})"
            )
        return out

    @property
    def disagreement(self) -> float:
        return self.disagreements / self.paired if self.paired else 0.0

    def accuracy(self, correct: int) -> float | None:
        return correct / self.labelled if self.labelled else None

    def evidence(self) -> Evidence:
        return Evidence(
            samples={
                "watch_paired": self.paired,
                "watch_labelled": self.labelled,
                "watch_disagreements": self.disagreements,
                "watch_production_errors": self.production_errors,
                "watch_pending": len(self.pending),
                "watch_pending_dropped": self.dropped_pending,
                "watch_labels_early": len(self.early),
                "watch_labels_early_dropped": self.early.dropped,
            },
            metrics={
                "watch_disagreement": self.disagreement,
                "watch_accuracy": {
                    "production": self.accuracy(self.correct_production),
                    "previous": self.accuracy(self.correct_previous),
                },
            },
            tests={
                "watch": {
                    "production": self.production,
                    "previous": self.previous,
                    "started_at": self.started_at,
                    "until": self.until,
                    "alpha": self.alpha,
                    "degradation": {t: _finite(d.summary()) for t, d in self.worse.items()},
                    "disagreement": (
                        _finite(self.disagree.summary()) if self.disagree is not None else None
                    ),
                }
            },
        )

    # -- snapshots -----------------------------------------------------------------------

    _SIMPLE = (
        "deployment",
        "production",
        "previous",
        "start_epoch",
        "started_at",
        "until",
        "alpha",
        "margin",
        "disagreement_ceiling",
        "audit_rate",
        "window_requests",
        "kind",
        "error_cap",
        "clock",
        "paired",
        "disagreements",
        "labelled",
        "correct_production",
        "correct_previous",
        "production_errors",
        "dropped_pending",
    )

    def to_json(self) -> dict[str, Any]:
        return {
            "version": WATCH_SNAPSHOT_VERSION,
            **{k: getattr(self, k) for k in self._SIMPLE},
            "metric": self.metric.model_dump(mode="json"),
            "pending": self.pending.meta(),
            "worse": {t: d.state() for t, d in self.worse.items()},
            "disagree": self.disagree.state() if self.disagree is not None else None,
        }

    @classmethod
    def from_json(
        cls, data: dict[str, Any], pending: Mapping[str, bytes] | None = None
    ) -> WatchAnalysis:
        """The watch ``to_json`` wrote, its pending pairs from their chunk records."""
        if data.get("version") != WATCH_SNAPSHOT_VERSION:
            raise ValueError(f"watch snapshot version {data.get('version')!r}")
        w = cls(**{k: data[k] for k in cls._SIMPLE}, metric=Metric.model_validate(data["metric"]))
        w.pending = PendingStore.restore(data["pending"], pending or {})
        for t, state in data["worse"].items():
            _restore(w.worse[t], state)
        if w.disagree is not None and data["disagree"] is not None:
            _restore(w.disagree, data["disagree"])
        return w


def _restore(detector: ChangeDetector, state: dict[str, Any]) -> None:
    detector.n = state["n"]
    detector.sums = list(state["sums"])
    detector.log_value = state["log_value"]
    detector.max_log_value = state["max_log_value"]


def _finite(value: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in value.items()
    }


def decide_watch(state: DeploymentState, w: WatchAnalysis) -> WatchDecision:
    """Roll back when a detector alarmed; end the watch when its window passed (time, or the
    policy's number of paired requests); otherwise hold."""
    if state.watch is None or state.production.version != w.production:
        return WatchDecision(WatchVerdict.HOLD, "not being watched")
    ev = w.evidence()
    alarms = w.alarms
    if alarms:
        return WatchDecision(
            WatchVerdict.ROLLBACK,
            (
                f"watch: version {w.production} degraded after promotion: "
                + "; ".join(alarms)
                + f"; version {w.previous} is production again"
            ),
            ev,
        )
    by_requests = w.window_requests > 0 and w.paired >= w.window_requests
    if w.clock >= w.until or by_requests:
        window = (
            f"{w.window_requests} paired requests"
            if by_requests
            else f"{(w.until - w.started_at) / 1000:.0f} s"
        )
        return WatchDecision(
            WatchVerdict.END,
            (
                f"watch ended: version {w.production} showed no degradation against "
                f"version {w.previous} over the window ({window}; {w.paired} paired, "
                f"{w.labelled} labelled requests, disagreement {w.disagreement:.1%})"
            ),
            ev,
        )
    return WatchDecision(WatchVerdict.HOLD, "watching", ev)
