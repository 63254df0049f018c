"""The replay gate (``app.core.replay``) replayed: how often it lets through a candidate worse
than the margin (its false-pass rate, at most alpha by construction) and how often it passes
an equal or better one, on a fixed replay of ``n`` requests with ground truth, judged once.

The requests, the two models and the labels are the decision-path simulation's
(``app.simulation.situations``): fraud at 7% prevalence, production recall 70% and
specificity 98%, the candidate ``delta`` accuracy points from it, 70% of requests equally easy
or hard for both. Seeded: the same seed gives the same figures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.core.events import (
    ArmResult,
    Comparison,
    DeploymentState,
    Feedback,
    Mode,
    Phase,
    Role,
)
from app.core.policy import Policy
from app.core.replay import judge, replay_analysis
from app.simulation.situations import (
    OUTPUT,
    PREVALENCE,
    PRODUCTION,
    SOURCE,
    V1,
    V2,
    Model,
    accuracy_shift,
)

SHARED = 0.7  # as the decision-path simulation (app.simulation.runner)


def _arm(version: str, flagged: bool) -> ArmResult:
    return ArmResult.model_construct(
        version=version, sha256=version * 64, output=OUTPUT[flagged], latency_ms=0.02, error=None
    )


def _flags(model: Model, fraud: bool, u: float) -> bool:
    return u < model.recall if fraud else u >= model.specificity


def _states(policy: Policy) -> tuple[DeploymentState, DeploymentState]:
    common = {"deployment": "sim", "mode": Mode.AUTOMATIC, "phase": Phase.STABLE}
    before = DeploymentState(**common, epoch=1, production=V1, policy=policy)
    after = DeploymentState(**common, epoch=2, production=V2, policy=policy)
    return before, after


def replay_once(delta: float, n: int, policy: Policy, seed: int) -> bool:
    """One replay of ``n`` labelled requests of a candidate ``delta`` accuracy points from
    production: whether the gate passed it."""
    rng = np.random.default_rng(seed)
    before, after = _states(policy)
    a = replay_analysis(before, after, n)
    candidate = accuracy_shift(delta)
    for i in range(n):
        fraud = bool(rng.random() < PREVALENCE)
        u = float(rng.random())
        v = u if rng.random() < SHARED else float(rng.random())
        prod, cand = _flags(PRODUCTION, fraud, u), _flags(candidate, fraud, v)
        rid = f"r{i}"
        a.add_comparison(
            Comparison.model_construct(
                request_id=rid,
                deployment="sim",
                mode=Mode.SHADOW,
                epoch=1,
                source=SOURCE,
                served_by=Role.PRODUCTION,
                production=_arm("1", prod),
                candidate=_arm("2", cand),
                agree=prod == cand,
                score_delta=0.0,
            )
        )
        a.add_feedback(
            Feedback.model_construct(
                request_id=rid,
                deployment="sim",
                label="fraud" if fraud else "legit",
                observed_at=0,
            )
        )
    return judge(after, a, n).passed


@dataclass(frozen=True)
class GateRate:
    delta: float  # accuracy points (as a fraction) of the candidate against production
    n: int  # replayed requests, every one labelled
    runs: int
    passed: int

    @property
    def rate(self) -> float:
        return self.passed / self.runs if self.runs else float("nan")


def gate_rate(
    delta: float, n: int, runs: int, seed: int = 21, margin: float = 0.02, alpha: float = 0.05
) -> GateRate:
    """How often the gate passes a candidate ``delta`` from production in ``runs`` replays of
    ``n`` labelled requests (accuracy metric, the given margin and alpha)."""
    policy = Policy(non_inferiority_margin=margin, alpha=alpha, replay_gate=n)
    passed = sum(replay_once(delta, n, policy, seed * 100_003 + k) for k in range(runs))
    return GateRate(delta, n, runs, passed)


if __name__ == "__main__":  # python -m app.simulation.replay_gate [runs]: the docs' figures
    import sys

    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    for delta, n, k in ((-0.02, 3000, 2), (-0.03, 3000, 1), (0.0, 3000, 1), (0.0, 1000, 1)):
        r = gate_rate(delta, n, runs * k)
        print(
            f"| {delta * 100:+.0f} pts | {n:,} | {r.passed} of {r.runs} ({r.rate:.1%}) |",
            flush=True,
        )
