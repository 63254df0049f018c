"""What the evidence says to do with a rollout: a pure function of state, policy and analysis.

Guardrails are checked first and win (worst wins): a candidate that fails one is rolled back
(canary) or retired (shadow) at once, not at the end of a window. Then the success
criterion: with enough ground truth (feedback coverage at least the policy's), the candidate
must be non-inferior to production within the margin on the same labelled requests; without
it, its disagreement with production must be below the ceiling. Both are anytime-valid tests
(``app.core.sequential``), so looking after every batch is sound.

- canary: a step advances once it has its minimum samples and no guardrail failed; reaching
  the last step promotes only when the criterion passed.
- shadow: promote (or wait for approval, per policy) when the criterion passes and enough
  samples are in; retire when it fails.
- manual: recommend (once), never act.
- automatic: nothing to decide here (the deploy already promoted).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from app.core.analysis import RolloutAnalysis
from app.core.events import DeploymentState, Evidence, Mode, Phase

MIN_SHIFT_SAMPLES = 500  # PSI is biased upwards, and p99 is noise, on fewer samples


class Verdict(StrEnum):
    HOLD = "hold"
    ADVANCE = "advance"
    PROMOTE = "promote"
    AWAIT_APPROVAL = "await_approval"
    ROLLBACK = "rollback"
    RETIRE = "retire"
    RECOMMEND_PROMOTE = "recommend_promote"
    RECOMMEND_REJECT = "recommend_reject"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str
    next_weight: float | None = None
    evidence: Evidence = field(default_factory=Evidence)


class Criterion(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    PENDING = "pending"


def guardrail_failures(state: DeploymentState, a: RolloutAnalysis) -> list[str]:
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
    ratio = a.latency_ratio
    slower_ms = a.candidate_arm.quantile(0.99) - a.production.quantile(0.99)
    # A slow candidate is slow for the typical request too: the median confirms the tail, so a
    # scheduler hiccup in one arm's few slowest calls does not roll a canary back.
    median_ratio = a.candidate_arm.quantile(0.5) / a.production.quantile(0.5)
    if (
        scored >= MIN_SHIFT_SAMPLES
        and not math.isnan(ratio)
        and ratio > g.max_latency_ratio
        and slower_ms >= g.min_latency_regression_ms
        and median_ratio > g.max_latency_ratio
    ):
        failed.append(
            f"p99 latency is {ratio:.2f}x production's, {slower_ms:.2f} ms slower "
            f"(limits {g.max_latency_ratio}x and {g.min_latency_regression_ms} ms)"
        )
    return failed


def criterion(state: DeploymentState, a: RolloutAnalysis) -> tuple[Criterion, str, str]:
    """(outcome, which criterion, why)."""
    p = state.policy
    if a.coverage >= p.min_feedback_coverage and a.labelled > 0:
        kind = "non_inferiority"
        if a.better.rejected:
            return (
                Criterion.PASSED,
                kind,
                (
                    f"candidate accuracy {a.candidate_arm.accuracy:.2%} vs production "
                    f"{a.production.accuracy:.2%} on {a.labelled} labelled requests: "
                    f"non-inferior within {p.non_inferiority_margin:.1%}"
                ),
            )
        if a.worse.rejected:
            return (
                Criterion.FAILED,
                kind,
                (
                    f"candidate accuracy {a.candidate_arm.accuracy:.2%} vs production "
                    f"{a.production.accuracy:.2%} on {a.labelled} labelled requests: "
                    f"worse by more than {p.non_inferiority_margin:.1%}"
                ),
            )
        return Criterion.PENDING, kind, "not enough labelled requests yet"
    kind = "agreement"
    if a.agree_ok.rejected:
        return (
            Criterion.PASSED,
            kind,
            (
                f"disagreement {a.disagreement:.1%} below {p.guardrails.max_disagreement:.1%} "
                f"on {a.paired} paired requests (feedback coverage {a.coverage:.0%})"
            ),
        )
    if a.disagree_over.rejected:
        return Criterion.FAILED, kind, f"disagreement {a.disagreement:.1%} is too high"
    return Criterion.PENDING, kind, "not enough paired requests yet"


def evidence(state: DeploymentState, a: RolloutAnalysis, outcome: Criterion, kind: str) -> Evidence:
    g = state.policy.guardrails
    tests: dict[str, Any] = {
        "criterion": kind,
        "outcome": outcome.value,
        "alpha": a.alpha,
        "non_inferiority": {"promote": a.better.summary(), "reject": a.worse.summary()},
        "agreement": {"ok": a.agree_ok.summary(), "over_ceiling": a.disagree_over.summary()},
        "candidate_errors": a.errors_over.summary(),
        "thresholds": {
            "max_candidate_error_rate": g.max_candidate_error_rate,
            "max_disagreement": g.max_disagreement,
            "max_score_shift": g.max_score_shift,
            "max_latency_ratio": g.max_latency_ratio,
            "min_latency_regression_ms": g.min_latency_regression_ms,
            "non_inferiority_margin": state.policy.non_inferiority_margin,
            "min_feedback_coverage": state.policy.min_feedback_coverage,
            "min_samples_per_step": state.policy.min_samples_per_step,
        },
    }
    return Evidence(samples=a.samples(), metrics=_finite(a.metrics()), tests=_finite(tests))


def decide(state: DeploymentState, a: RolloutAnalysis, recommended: bool = False) -> Decision:
    """The decision for ``state``'s rollout given evidence ``a`` (``recommended``: a manual
    rollout's recommendation was already published)."""
    if state.candidate is None or (
        state.phase is not Phase.PROGRESSING
        and not (state.mode is Mode.MANUAL and state.phase is Phase.AWAITING_APPROVAL)
    ):
        return Decision(Verdict.HOLD, "nothing in progress")
    outcome, kind, why = criterion(state, a)
    ev = evidence(state, a, outcome, kind)
    failures = guardrail_failures(state, a)
    if state.mode is Mode.CANARY:
        if failures:
            return Decision(Verdict.ROLLBACK, "guardrail failed: " + "; ".join(failures), 0.0, ev)
        if outcome is Criterion.FAILED:
            return Decision(Verdict.ROLLBACK, f"{kind} failed: {why}", 0.0, ev)
        if a.step_samples < state.policy.min_samples_per_step:
            return Decision(Verdict.HOLD, f"step has {a.step_samples} samples", evidence=ev)
        later = [w for w in state.policy.canary_steps if w > state.canary_weight + 1e-9]
        if later:
            return Decision(
                Verdict.ADVANCE,
                (
                    f"step at {state.canary_weight:.0%} healthy over {a.step_samples} samples; "
                    f"advancing to {later[0]:.0%}"
                ),
                later[0],
                ev,
            )
        if outcome is Criterion.PASSED:
            return Decision(Verdict.PROMOTE, f"last step passed; {kind}: {why}", evidence=ev)
        return Decision(Verdict.HOLD, f"at the last step; {kind}: {why}", evidence=ev)
    if state.mode is Mode.SHADOW:
        if failures:
            return Decision(Verdict.RETIRE, "guardrail failed: " + "; ".join(failures), evidence=ev)
        if outcome is Criterion.FAILED:
            return Decision(Verdict.RETIRE, f"{kind} failed: {why}", evidence=ev)
        if outcome is Criterion.PASSED and a.compared >= state.policy.min_samples_per_step:
            verdict = (
                Verdict.AWAIT_APPROVAL if state.policy.shadow_requires_approval else Verdict.PROMOTE
            )
            return Decision(verdict, f"shadow analysis passed; {kind}: {why}", evidence=ev)
        return Decision(Verdict.HOLD, f"{kind}: {why}", evidence=ev)
    if state.mode is Mode.MANUAL and not recommended:
        if failures or outcome is Criterion.FAILED:
            reason = "; ".join(failures) if failures else f"{kind} failed: {why}"
            return Decision(
                Verdict.RECOMMEND_REJECT, f"recommend not promoting: {reason}", evidence=ev
            )
        if outcome is Criterion.PASSED and a.compared >= state.policy.min_samples_per_step:
            return Decision(
                Verdict.RECOMMEND_PROMOTE, f"recommend promoting; {kind}: {why}", evidence=ev
            )
    return Decision(Verdict.HOLD, f"{kind}: {why}", evidence=ev)


def _finite(value: Any) -> Any:
    """JSON has no NaN/inf: report them as null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def replay_gate(state: DeploymentState, a: RolloutAnalysis) -> tuple[bool, str, Evidence]:
    """Automatic mode's optional gate: the candidate has scored the last requests beside
    production (one fixed sample, looked at once). It passes when no guardrail fails and its
    disagreement and error rate are within the policy's ceilings."""
    g = state.policy.guardrails
    problems = guardrail_failures(state, a)
    if a.disagreement > g.max_disagreement:
        problems.append(f"disagreement {a.disagreement:.1%} above {g.max_disagreement:.1%}")
    if a.candidate_arm.error_rate > g.max_candidate_error_rate:
        problems.append(
            f"error rate {a.candidate_arm.error_rate:.2%} above {g.max_candidate_error_rate:.2%}"
        )
    outcome = Criterion.FAILED if problems else Criterion.PASSED
    ev = evidence(state, a, outcome, "replay")
    if not a.paired:
        return False, "replay gate: no recent requests to replay", ev
    if problems:
        return (
            False,
            f"replay gate failed on {a.paired} recent requests: " + "; ".join(problems),
            ev,
        )
    return (
        True,
        (
            f"replay gate passed on {a.paired} recent requests "
            f"(disagreement {a.disagreement:.1%}, error rate {a.candidate_arm.error_rate:.2%})"
        ),
        ev,
    )
