"""What the evidence says to do with a rollout: a pure function of state, policy and analysis.

Worst wins. Guardrails refuted (a sequential test shows the error rate or the disagreement
above its ceiling; score shift; latency) roll a canary back or retire a shadow candidate at
once. Then the success criterion, on the audit sample (``app.core.analysis``):

- **failed** when a "worse" test rejected, at this step, over the whole rollout, or at any
  earlier step: the candidate is rolled back (worse is checked before better, and a conflict
  between tests is a failure);
- **passed** when every test of the metric shows the candidate non-inferior within the margin
  on this step's audit sample (with at least the policy's coverage of it labelled), or,
  without labels, when the disagreement on this step is shown below the margin (valid
  because the metric can differ by at most the disagreement; never for ``recall``);
- **pending** otherwise, saying what it waits for.

Promotion needs the criterion passed *and* the guardrails shown (error rate below its
ceiling, latency within its ratio: an intersection-union test, each at alpha). When the
evidence has not come within the feedback horizon of the step's start, the policy's
``at_horizon`` says what happens (default: keep production).

- canary: a step advances once it has its minimum samples and nothing failed; the last step
  promotes on its own evidence.
- shadow: promote (or wait for approval, per policy) as the last step would; retire on failure.
- manual: recommend (once), never act.
- automatic: nothing to decide here (the deploy already promoted).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from app.core.analysis import RolloutAnalysis
from app.core.events import DeploymentState, Evidence, Mode, Phase
from app.core.policy import AtHorizon
from app.core.verdict import Criterion, Verdict, WaitingFor

MIN_SHIFT_SAMPLES = 500  # PSI is biased upwards, and p99 is noise, on fewer samples

__all__ = ["Criterion", "Decision", "Verdict", "WaitingFor", "decide"]


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str
    next_weight: float | None = None
    evidence: Evidence = field(default_factory=Evidence)
    waiting_for: WaitingFor = WaitingFor.NOTHING


@dataclass(frozen=True)
class Judgement:
    """The success criterion: outcome, which test decided (or waits), why, what it awaits."""

    outcome: Criterion
    kind: str
    why: str
    waiting_for: WaitingFor = WaitingFor.NOTHING


def guardrail_failures(state: DeploymentState, a: RolloutAnalysis) -> list[str]:
    """Guardrails shown crossed (or, for shift and latency, measured crossed)."""
    g = state.policy.guardrails
    failed: list[str] = []
    if a.errors_over.rejected:
        failed.append(
            f"candidate error rate {a.candidate_arm.error_rate:.2%} is above "
            f"{g.max_candidate_error_rate:.2%} (sequential test, alpha {a.alpha})"
        )
    if a.disagree_over.rejected:
        failed.append(
            f"disagreement with production {a.disagreement:.1%} is above the ceiling "
            f"{g.max_disagreement:.1%} (sequential test, alpha {a.alpha})"
        )
    scored = min(a.candidate_arm.scored, a.production.scored)
    if scored >= MIN_SHIFT_SAMPLES and a.score_shift > g.max_score_shift:
        failed.append(f"score shift PSI {a.score_shift:.3f} is above {g.max_score_shift:.3f}")
    if scored >= MIN_SHIFT_SAMPLES and _slow(state, a):
        failed.append(
            f"p99 latency is {a.latency_ratio:.2f}x production's, "
            f"{a.candidate_arm.quantile(0.99) - a.production.quantile(0.99):.2f} ms slower "
            f"(limits {g.max_latency_ratio}x and {g.min_latency_regression_ms} ms)"
        )
    return failed


def _slow(state: DeploymentState, a: RolloutAnalysis) -> bool:
    # A slow candidate is slow for the typical request too: the median confirms the tail, so a
    # scheduler hiccup in one arm's few slowest calls does not roll a canary back.
    g = state.policy.guardrails
    ratio = a.latency_ratio
    slower_ms = a.candidate_arm.quantile(0.99) - a.production.quantile(0.99)
    median_ratio = a.candidate_arm.quantile(0.5) / a.production.quantile(0.5)
    return (
        not math.isnan(ratio)
        and ratio > g.max_latency_ratio
        and slower_ms >= g.min_latency_regression_ms
        and median_ratio > g.max_latency_ratio
    )


def guardrails_unshown(state: DeploymentState, a: RolloutAnalysis) -> list[str]:
    """Guardrails not yet shown within their limits (each a test at alpha): promotion waits."""
    g = state.policy.guardrails
    missing: list[str] = []
    if not a.errors_under.rejected:
        missing.append(
            f"error rate {a.candidate_arm.error_rate:.2%} not yet shown below "
            f"{g.max_candidate_error_rate:.2%} ({a.errors_under.n} requests)"
        )
    if not a.latency_under.rejected:
        missing.append(
            f"latency (model CPU time) not yet shown within {g.max_latency_ratio}x production's "
            f"(+{g.min_latency_regression_ms} ms) on 99% of {a.latency_under.n} paired requests"
        )
    return missing


def criterion(state: DeploymentState, a: RolloutAnalysis) -> Judgement:
    """The success criterion on the current step's evidence (worse first)."""
    p = state.policy
    kind = "non_inferiority"  # of the policy's metric (evidence.tests["metric"])
    worse = [*a.worse_seen, *a.worse_now()]
    if worse:
        return Judgement(
            Criterion.FAILED,
            kind,
            f"candidate worse than production by more than the margin on {', '.join(worse)}; "
            f"accuracy {_accuracies(a)}",
        )
    if a.unbounded:
        return Judgement(
            Criterion.PENDING,
            kind,
            "a regressor without regression.error_cap in its deployment.yaml: its value "
            "feedback cannot be bounded, so it cannot promote on it (set the cap, or promote "
            "by hand)",
            WaitingFor.LABELS,
        )
    if labels_show_it(a, p.min_feedback_coverage):
        return Judgement(
            Criterion.PASSED,
            kind,
            f"{_metric_name(a, p.metric.kind.value)} non-inferior within the margin on "
            f"{_tested(a)} of this "
            f"step's audit sample (coverage {_coverage(a):.0%}, alpha {a.alpha_labels:g}); "
            f"accuracy {_accuracies(a)}",
        )
    # The two routes share alpha (the analysis splits it), so their union stays at alpha.
    if p.promote_on_agreement and a.agreement_route and a.agree_margin.rejected:
        return Judgement(
            Criterion.PASSED,
            "agreement",
            f"disagreement {a.step_disagreement:.2%} shown below the margin "
            f"{p.non_inferiority_margin:.1%} on {a.step_paired} paired requests of this step "
            f"(alpha {a.alpha_agreement:g}; so the {p.metric.kind.value} differs by less than "
            "the margin)",
        )
    return _pending(state, a, kind)


def labels_show_it(a: RolloutAnalysis, coverage: float) -> bool:
    """Every test of the metric rejects "worse than the margin" on this step's audit sample,
    in either form (all requests at their worst case until labelled, with ``coverage`` of
    the step labelled; or in compared order up to the labels, with ``coverage`` of what it
    took labelled). Both forms are bounded by one test supermartingale, so either passing is
    a test at the promote test's alpha (analysis module docstring)."""
    all_in = a.step_coverage >= coverage
    in_order = a.tested_coverage >= coverage
    return all(
        (all_in and a.step_better[t].rejected) or (in_order and a.step_frontier[t].rejected)
        for t in a.step_better
    )


def _coverage(a: RolloutAnalysis) -> float:
    return max(a.step_coverage, a.tested_coverage)


def _pending(state: DeploymentState, a: RolloutAnalysis, kind: str) -> Judgement:
    p = state.policy
    if _coverage(a) < p.min_feedback_coverage:
        return Judgement(
            Criterion.PENDING,
            kind,
            f"waiting for labels: {a.step_coverage:.0%} of this step's audit sample "
            f"({a.step_audit_compared} requests) labelled, and {a.tested_coverage:.0%} of the "
            f"{a.tested} taken in compared order; {p.min_feedback_coverage:.0%} needed"
            + _dropped(a),
            WaitingFor.LABELS,
        )
    if a.open_labels:
        return Judgement(
            Criterion.PENDING,
            kind,
            f"waiting for labels: {a.open_labels} audit requests of this step count as the "
            f"candidate's losses until labelled; {_tested(a)} so far" + _dropped(a),
            WaitingFor.LABELS,
        )
    return Judgement(
        Criterion.PENDING, kind, f"not enough evidence yet ({_tested(a)})", WaitingFor.EVIDENCE
    )


def _dropped(a: RolloutAnalysis) -> str:
    """Requests given up because the rollout kept more than its limit awaiting labels."""
    if not a.dropped_pending:
        return ""
    return (
        f"; {a.dropped_pending} compared requests dropped unlabelled (more than "
        f"{a.pending_limit} awaiting labels at once): they count at their worst case"
    )


def _tested(a: RolloutAnalysis) -> str:
    return ", ".join(
        f"{t}: {test.n} pairs ({a.step_frontier[t].n} in compared order)"
        for t, test in a.step_better.items()
    )


def _metric_name(a: RolloutAnalysis, name: str) -> str:
    return "capped absolute error" if a.regressor else name


def _accuracies(a: RolloutAnalysis) -> str:
    if a.regressor:
        m = a.metrics()["mean_capped_absolute_error"]
        return (
            f"mean absolute error (capped at {a.error_cap}) candidate {m['candidate']:.4g} vs "
            f"production {m['production']:.4g} on all {a.labelled} labelled requests of the "
            "rollout (shown, not tested)"
        )
    return (
        f"candidate {a.candidate_arm.accuracy:.2%} vs production {a.production.accuracy:.2%} "
        f"on all {a.labelled} labelled requests of the rollout (audit sample or not; shown, "
        "not tested)"
    )


def evidence(state: DeploymentState, a: RolloutAnalysis, j: Judgement) -> Evidence:
    g = state.policy.guardrails
    p = state.policy
    tests: dict[str, Any] = {
        "criterion": j.kind,
        "outcome": j.outcome.value,
        "waiting_for": j.waiting_for.value,
        "alpha": a.alpha,
        "metric": _finite(p.metric.model_dump(mode="json")),
        "non_inferiority": {
            t: {
                "promote": a.step_better[t].summary(),
                "promote_in_order": a.step_frontier[t].summary(),
                "reject": a.rollout_worse[t].summary(),
            }
            for t in a.step_better
        },
        "inferiority_whole_rollout": {t: w.summary() for t, w in a.rollout_worse.items()},
        "worse_seen": list(a.worse_seen),
        "agreement": {
            "below_margin": a.agree_margin.summary(),
            "over_ceiling": a.disagree_over.summary(),
        },
        "candidate_errors": a.errors_over.summary(),
        "guardrails_shown": {
            "errors_below_ceiling": a.errors_under.summary(),
            "latency_within_ratio": a.latency_under.summary(),
        },
        "thresholds": _finite(
            {
                "max_candidate_error_rate": g.max_candidate_error_rate,
                "max_disagreement": g.max_disagreement,
                "max_score_shift": g.max_score_shift,
                "max_latency_ratio": g.max_latency_ratio,
                "min_latency_regression_ms": g.min_latency_regression_ms,
                "non_inferiority_margin": p.non_inferiority_margin,
                "min_feedback_coverage": p.min_feedback_coverage,
                "min_samples_per_step": p.min_samples_per_step,
                "audit_rate": p.audit_rate,
                "feedback_horizon_s": p.feedback_horizon_s,
            }
        ),
    }
    # The tests' summaries are finite by construction (bets keep every factor >= 1/2, an
    # empty test's mean reads 0); what the policy or the measurements hold may not be.
    return Evidence(samples=a.samples(), metrics=_finite(a.metrics()), tests=tests)


@dataclass(frozen=True)
class _Context:
    state: DeploymentState
    a: RolloutAnalysis
    judgement: Judgement
    failures: list[str]
    ev: Evidence
    recommended: bool

    def decision(
        self,
        verdict: Verdict,
        reason: str,
        weight: float | None = None,
        waiting: WaitingFor = WaitingFor.NOTHING,
    ) -> Decision:
        return Decision(verdict, reason, weight, self.ev, waiting)

    def hold(self, reason: str, waiting: WaitingFor) -> Decision:
        return self.decision(Verdict.HOLD, reason, waiting=waiting)


def decide(state: DeploymentState, a: RolloutAnalysis, recommended: bool = False) -> Decision:
    """The decision for ``state``'s rollout given evidence ``a`` (``recommended``: a manual
    rollout's recommendation was already published)."""
    if state.candidate is None or (
        state.phase is not Phase.PROGRESSING
        and not (state.mode is Mode.MANUAL and state.phase is Phase.AWAITING_APPROVAL)
    ):
        return Decision(Verdict.HOLD, "nothing in progress")
    j = criterion(state, a)
    ctx = _Context(state, a, j, guardrail_failures(state, a), evidence(state, a, j), recommended)
    by_mode = _BY_MODE.get(state.mode)
    if by_mode is None:
        return ctx.hold(j.why, j.waiting_for)
    return by_mode(ctx)


def _decide_canary(ctx: _Context) -> Decision:
    state, a, j = ctx.state, ctx.a, ctx.judgement
    if ctx.failures:
        return ctx.decision(Verdict.ROLLBACK, "guardrail failed: " + "; ".join(ctx.failures), 0.0)
    if j.outcome is Criterion.FAILED:
        return ctx.decision(Verdict.ROLLBACK, f"{j.kind} failed: {j.why}", 0.0)
    if a.step_samples < state.policy.min_samples_per_step:
        return ctx.hold(f"step has {a.step_samples} samples", WaitingFor.SAMPLES)
    later = [w for w in state.policy.canary_steps if w > state.canary_weight + 1e-9]
    if later:
        return ctx.decision(
            Verdict.ADVANCE,
            (
                f"step at {state.canary_weight:.0%} healthy over {a.step_samples} samples; "
                f"advancing to {later[0]:.0%}"
            ),
            later[0],
        )
    return _final(ctx, Verdict.PROMOTE, Verdict.ROLLBACK, "last step passed")


def _final(ctx: _Context, promote: Verdict, reject: Verdict, passed: str) -> Decision:
    """The last step (or a shadow): promote on this step's evidence with the guardrails
    shown; at the horizon without it, do what the policy says."""
    state, a, j = ctx.state, ctx.a, ctx.judgement
    unshown = guardrails_unshown(state, a)
    if j.outcome is Criterion.PASSED and not unshown:
        return ctx.decision(promote, f"{passed}; {j.kind}: {j.why}")
    waiting = j.waiting_for if j.outcome is not Criterion.PASSED else WaitingFor.GUARDRAILS
    why = j.why if j.outcome is not Criterion.PASSED else "; ".join(unshown)
    horizon = state.policy.feedback_horizon_s * 1000
    if a.clock - a.step_started_at >= horizon:
        if state.policy.at_horizon is AtHorizon.KEEP_PRODUCTION:
            return ctx.decision(
                reject,
                (
                    f"the evidence never came: after the feedback horizon "
                    f"({state.policy.feedback_horizon_s} s) {why}; keeping production"
                ),
                0.0 if reject is Verdict.ROLLBACK else None,
                waiting,
            )
        return ctx.hold(f"past the feedback horizon, holding for an operator: {why}", waiting)
    return ctx.hold(f"{j.kind}: {why}", waiting)


def _decide_shadow(ctx: _Context) -> Decision:
    state, a, j = ctx.state, ctx.a, ctx.judgement
    if ctx.failures:
        return ctx.decision(Verdict.RETIRE, "guardrail failed: " + "; ".join(ctx.failures))
    if j.outcome is Criterion.FAILED:
        return ctx.decision(Verdict.RETIRE, f"{j.kind} failed: {j.why}")
    if a.compared < state.policy.min_samples_per_step:
        return ctx.hold(f"{a.compared} samples compared", WaitingFor.SAMPLES)
    promote = Verdict.AWAIT_APPROVAL if state.policy.shadow_requires_approval else Verdict.PROMOTE
    return _final(ctx, promote, Verdict.RETIRE, "shadow analysis passed")


def _decide_manual(ctx: _Context) -> Decision:
    state, a, j = ctx.state, ctx.a, ctx.judgement
    if ctx.recommended:
        return ctx.hold(f"{j.kind}: {j.why}", j.waiting_for)
    if ctx.failures or j.outcome is Criterion.FAILED:
        reason = "; ".join(ctx.failures) if ctx.failures else f"{j.kind} failed: {j.why}"
        return ctx.decision(Verdict.RECOMMEND_REJECT, f"recommend not promoting: {reason}")
    unshown = guardrails_unshown(state, a)
    if (
        j.outcome is Criterion.PASSED
        and not unshown
        and a.compared >= state.policy.min_samples_per_step
    ):
        return ctx.decision(Verdict.RECOMMEND_PROMOTE, f"recommend promoting; {j.kind}: {j.why}")
    return ctx.hold(f"{j.kind}: {j.why}", j.waiting_for)


_BY_MODE: dict[Mode, Callable[[_Context], Decision]] = {
    Mode.CANARY: _decide_canary,
    Mode.SHADOW: _decide_shadow,
    Mode.MANUAL: _decide_manual,
}


def _finite(value: Any) -> Any:
    """JSON has no NaN/inf: report them as null."""
    kind = type(value)
    if kind is float:
        return value if value - value == 0.0 else None  # inf - inf and nan - nan are nan
    if kind is dict:
        return {k: _finite(v) for k, v in value.items()}
    if kind is list:
        return [_finite(v) for v in value]
    return value
