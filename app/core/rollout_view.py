"""What the dashboard and its JSON API show of a deployment, as plain JSON-ready data.

Pure: built from a ``DeploymentState``, the live ``RolloutAnalysis`` of its rollout (if this
controller holds it) and its recent ``DecisionEvent``s. No I/O, no clock (``now`` is passed).

- ``analysis_view``: the candidate-vs-production comparison — samples, agreement, score shift,
  latency, accuracy with feedback coverage, the success criterion, failed guardrails, and each
  sequential test's evidence against its threshold (log-wealth vs ``log(1/alpha)``).
- ``weight_timeline``: the candidate's traffic share over time, one point per decision that
  moved it (the state holds the current one).
- ``watch_view``: a promotion under watch: the previous production kept loaded, the window,
  and (when this controller holds it) the watch's evidence and detectors.
- ``deployment_view``: all of it for one deployment.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from app.core.analysis import RolloutAnalysis
from app.core.events import DecisionEvent, DeploymentState, Mode
from app.core.promotion import criterion, guardrail_failures
from app.core.sequential import BettingTest, StakedTest
from app.core.watch import WatchAnalysis

# Test name in the API -> (attribute of RolloutAnalysis, what rejecting its null means).
TESTS: dict[str, tuple[str, str]] = {
    "agreement": ("agree_margin", "promote without labels: disagreement below the margin"),
    "disagreement": ("disagree_over", "guardrail: disagreement above the ceiling"),
    "candidate_errors": ("errors_over", "guardrail: candidate error rate above the ceiling"),
    "errors_shown": ("errors_under", "guardrail shown: error rate below the ceiling"),
    "latency_shown": ("latency_under", "guardrail shown: latency within the ratio"),
}


def _criterion_tests(a: RolloutAnalysis) -> dict[str, tuple[BettingTest | StakedTest, str]]:
    """The criterion's tests: ``non_inferiority`` / ``inferiority`` are this step's (for a
    metric with several tests, the one furthest from deciding), then each by name."""
    tests: dict[str, tuple[BettingTest | StakedTest, str]] = {
        "non_inferiority": (
            min(a.step_better.values(), key=lambda t: t.max_log_wealth),
            "promote: candidate not worse than the margin (this step)",
        ),
        "inferiority": (
            max(a.rollout_worse.values(), key=lambda t: t.max_log_wealth),
            "roll back: candidate worse than the margin (whole rollout)",
        ),
    }
    if len(a.step_better) > 1:
        for name in a.step_better:
            tests[f"non_inferiority:{name}"] = (a.step_better[name], f"promote on {name}")
            tests[f"inferiority:{name}"] = (a.rollout_worse[name], f"roll back on {name}")
    return tests


def finite_dict(value: dict[str, Any]) -> dict[str, Any]:
    return {k: finite(v) for k, v in value.items()}


def finite(value: Any) -> Any:
    """JSON has no NaN/inf: ``None`` in their place, in nested dicts and lists too."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def sequential_test_view(test: BettingTest | StakedTest, meaning: str) -> dict[str, Any]:
    """A test's evidence against its threshold; ``progress`` is log-wealth over threshold
    (1.0 = rejected), floored at 0."""
    summary = test.summary()
    return finite_dict(
        {
            **summary,
            "meaning": meaning,
            "progress": max(test.max_log_wealth, 0.0) / test.threshold,
        }
    )


def analysis_view(state: DeploymentState, a: RolloutAnalysis) -> dict[str, Any]:
    j = criterion(state, a)
    tests = {
        name: (getattr(a, attr), meaning) for name, (attr, meaning) in TESTS.items()
    } | _criterion_tests(a)
    return finite_dict(
        {
            "candidate": a.candidate,
            "start_epoch": a.start_epoch,
            "step_epoch": a.step_epoch,
            "samples": a.samples(),
            "metrics": a.metrics(),
            "criterion": {
                "kind": j.kind,
                "outcome": j.outcome.value,
                "why": j.why,
                "waiting_for": j.waiting_for.value,
            },
            "guardrails_failed": guardrail_failures(state, a),
            "tests": {
                name: sequential_test_view(test, meaning) for name, (test, meaning) in tests.items()
            },
        }
    )


def weight_timeline(
    state: DeploymentState, decisions: Sequence[DecisionEvent], now: int
) -> list[dict[str, Any]]:
    """``[{at, weight, epoch, action}]`` in time order: each accepted decision's resulting
    weight (the candidate's share: canary weight, 0 outside canary), then the state now."""
    points = [
        {"at": d.at, "weight": d.to.weight, "epoch": d.epoch, "action": d.action}
        for d in sorted(decisions, key=lambda d: (d.at, d.epoch))
        if d.accepted and d.to is not None
    ]
    current = state.canary_weight if state.mode is Mode.CANARY and state.candidate else 0.0
    points.append({"at": max(now, state.updated_at), "weight": current, "epoch": state.epoch})
    points[-1]["action"] = "now"
    return points


def decision_view(d: DecisionEvent) -> dict[str, Any]:
    data: dict[str, Any] = d.model_dump(mode="json", by_alias=True)
    return finite_dict(data)


def deployment_view(
    state: DeploymentState,
    analysis: RolloutAnalysis | None,
    decisions: Sequence[DecisionEvent],
    now: int,
    watch: WatchAnalysis | None = None,
) -> dict[str, Any]:
    """Everything the dashboard shows of one deployment (decisions newest first)."""
    live = (
        analysis
        if analysis is not None
        and state.candidate is not None
        and analysis.candidate == state.candidate.version
        else None
    )
    return {
        "deployment": state.deployment,
        "state": state.model_dump(mode="json"),
        "analysis": analysis_view(state, live) if live is not None else None,
        "traffic": weight_timeline(state, decisions, now),
        "watch": watch_view(state, watch, now),
        "decisions": [decision_view(d) for d in sorted(decisions, key=lambda d: -d.at)],
    }


def watch_view(
    state: DeploymentState, watch: WatchAnalysis | None, now: int
) -> dict[str, Any] | None:
    """The watch after a promotion, or None when the deployment is not being watched."""
    w = state.watch
    if w is None:
        return None
    live = watch if watch is not None and watch.start_epoch == w.epoch else None
    return finite_dict(
        {
            "production": state.production.version,
            "previous": w.previous.version,
            "started_at": w.started_at,
            "until": w.until,
            "remaining_s": max(w.until - now, 0) / 1000,
            "evidence": live.evidence().model_dump(mode="json") if live is not None else None,
        }
    )
