"""Replays a situation through the controller's own decision path: ``RolloutAnalysis`` fed
``Comparison`` and ``Feedback`` events (in the order they would arrive), ``promotion.decide``
after every ``look_every`` compared requests, and ``state_machine.controller_step`` applying
each verdict (an advance starts the next canary step). A replication ends at promote or roll
back, or holds at ``max_compared``. Seeded: the same seed gives the same table.
"""

from __future__ import annotations

import functools
from collections import deque
from dataclasses import dataclass

import numpy as np

from app.core.analysis import RolloutAnalysis
from app.core.events import (
    ArmResult,
    Comparison,
    DeploymentState,
    Feedback,
    Mode,
    Phase,
    Role,
)
from app.core.promotion import decide
from app.core.sequential import staked_pair
from app.core.state_machine import controller_step
from app.core.verdict import Verdict
from app.simulation.situations import (
    OUTPUT,
    PREVALENCE,
    PRODUCTION,
    SOURCE,
    V1,
    V2,
    Model,
    Situation,
)

_MS = 1000  # one compared request per simulated second
SHARED = 0.7  # share of requests equally easy or hard for both models


@dataclass(frozen=True)
class Replication:
    outcome: str  # "promote", "rollback" (on evidence), "horizon" (production kept), "hold"
    compared: int
    labelled: int  # audit labels joined when it decided


def _predict(model: Model, fraud: bool, u: float) -> bool:
    return u < model.recall if fraud else u >= model.specificity


@functools.cache
def _arm(version: str, flagged: bool | None, latency: float) -> ArmResult:
    return ArmResult.model_construct(
        version=version,
        sha256=version * 64,
        output=None if flagged is None else OUTPUT[flagged],
        latency_ms=None if flagged is None else latency,
        error=None if flagged is not None else "failed",
    )


def _labelled(s: Situation, rng: np.random.Generator, fraud: bool, prod_flag: bool) -> bool:
    if s.labels == "all":
        return True
    if s.labels == "random":
        return bool(rng.random() < s.label_share)
    if s.labels == "flagged":
        return prod_flag
    if s.labels == "frauds":
        return fraud
    return False


def replicate(s: Situation, seed: int) -> Replication:
    rng = np.random.default_rng(seed)
    policy = s.policy_model()
    state = DeploymentState(
        deployment="sim",
        epoch=1,
        mode=Mode.CANARY,
        phase=Phase.PROGRESSING,
        production=V1,
        candidate=V2,
        canary_weight=policy.canary_steps[0],
        policy=policy,
        updated_at=_MS,
    )
    a = RolloutAnalysis.for_policy("sim", "2", 1, policy, started_at=_MS)
    labels: deque[tuple[int, str, str]] = deque()
    i = 0
    while i < s.max_compared:
        for _ in range(s.look_every):
            i += 1
            at = _MS * (i + 1)
            _one(s, rng, a, state, i, at, labels)
            while labels and labels[0][0] <= i:
                _, rid, label = labels.popleft()
                a.add_feedback(
                    Feedback.model_construct(
                        request_id=rid, deployment="sim", label=label, observed_at=at
                    ),
                    at=at,
                )
        decision = decide(state, a)
        if decision.verdict is Verdict.HOLD:
            continue
        outcome = controller_step(
            state,
            decision.verdict,
            decision.reason,
            _MS * (i + 1),
            decision.evidence,
            decision.next_weight,
        )
        if outcome.state is None:
            continue
        if decision.verdict is Verdict.ADVANCE:
            state = outcome.state
            a.new_step(state.epoch, _MS * (i + 1))
            continue
        if "evidence never came" in decision.reason:
            return Replication("horizon", i, a.audit_labelled)
        return Replication(decision.verdict.label, i, a.audit_labelled)
    return Replication("hold", i, a.audit_labelled)


def _one(
    s: Situation,
    rng: np.random.Generator,
    a: RolloutAnalysis,
    state: DeploymentState,
    i: int,
    at: int,
    labels: deque[tuple[int, str, str]],
) -> None:
    h = rng.random() * state.canary_weight  # the entity, among those the canary serves
    cand = s.candidate(i, h)
    fraud = bool(rng.random() < PREVALENCE)
    u = float(rng.random())
    v = u if rng.random() < SHARED else float(rng.random())
    prod_flag = _predict(PRODUCTION, fraud, u)
    cand_flag: bool | None = _predict(cand, fraud, v)
    if cand.error_rate and rng.random() < cand.error_rate:
        cand_flag = None
    rid = f"r{i}"
    comparison = Comparison.model_construct(
        request_id=rid,
        deployment="sim",
        mode=Mode.CANARY,
        epoch=state.epoch,
        source=SOURCE,
        served_by=Role.CANDIDATE,
        production=_arm("1", prod_flag, PRODUCTION.latency_ms),
        candidate=_arm("2", cand_flag, cand.latency_ms),
        agree=cand_flag == prod_flag,
        score_delta=0.0,
    )
    a.add_comparison(comparison, at=at)
    if _labelled(s, rng, fraud, prod_flag):
        labels.append((i + s.delay, rid, "fraud" if fraud else "legit"))


@dataclass(frozen=True)
class Result:
    situation: Situation
    runs: list[Replication]

    def rate(self, outcome: str) -> float:
        return sum(r.outcome == outcome for r in self.runs) / len(self.runs)

    def count(self, outcome: str) -> int:
        return sum(r.outcome == outcome for r in self.runs)

    def median(self, attr: str) -> float:
        decided = [getattr(r, attr) for r in self.runs if r.outcome != "hold"]
        return float(np.median(decided)) if decided else float("nan")


def run(s: Situation, replications: int | None = None, seed: int = 11) -> Result:
    n = replications if replications is not None else s.replications
    return Result(s, [replicate(s, seed * 100_003 + k) for k in range(n)])


def run_runs(index: int, replications: int | None, seed: int) -> list[Replication]:
    """``run`` of ``SITUATIONS[index]``'s replications (picklable, for a process pool)."""
    from app.simulation.situations import SITUATIONS

    return run(SITUATIONS[index], replications, seed).runs


def pure_test_samples(
    delta: float, margin: float, alpha: float, replications: int, seed: int = 7
) -> tuple[float, float]:
    """The bare promotion test on labelled pairs, as ``app.simulation.bare_test`` measures the
    previous one: (promote rate, median pairs to promote), for the staked test."""
    from app.simulation.bare_test import paired_outcomes

    rng = np.random.default_rng(seed)
    promoted, samples = 0, []
    for _ in range(replications):
        better, _worse = staked_pair(margin, alpha)
        d = paired_outcomes(rng, 6000, 0.85, delta).tolist()
        disagreements = 0
        for k, x in enumerate(d):
            spread = (disagreements + 1) / (k + 2)
            better.add(float(x), better.stakes(spread))
            disagreements += int(x != 0)
            if better.rejected:
                promoted += 1
                samples.append(k + 1)
                break
    return promoted / replications, float(np.median(samples)) if samples else float("nan")
