"""Rollout analysis and the promotion decision, as tables over synthetic evidence."""

from __future__ import annotations

import random
from functools import partial
from typing import Any

import pytest

from app.core.analysis import RolloutAnalysis
from app.core.arm_stats import psi
from app.core.events import (
    ArmResult,
    Comparison,
    DeploymentState,
    Feedback,
    Mode,
    ModelOutput,
    Phase,
    Role,
    SourceOffset,
)
from app.core.policy import Policy
from app.core.promotion import Verdict, decide
from app.core.topics import Topic
from tests import builders
from tests.builders import reloaded

POLICY = Policy(min_samples_per_step=200)
state = partial(builders.state, epoch=10, weight=0.05, policy=POLICY)


def analysis(st: DeploymentState) -> RolloutAnalysis:
    g = st.policy.guardrails
    return RolloutAnalysis(
        deployment="fraud",
        candidate="2",
        start_epoch=10,
        alpha=0.05,
        margin=st.policy.non_inferiority_margin,
        disagreement_ceiling=g.max_disagreement,
        error_ceiling=g.max_candidate_error_rate,
    )


def out(label: str, score: float) -> ModelOutput:
    return ModelOutput(label=label, scores=[1 - score, score])


def feed(
    a: RolloutAnalysis,
    n: int,
    *,
    disagree: float = 0.02,
    cand_errors: float = 0.0,
    prod_acc: float = 0.85,
    cand_acc: float = 0.85,
    coverage: float = 0.0,
    cand_latency: float = 0.02,
    epoch: int = 10,
    seed: int = 0,
) -> None:
    """``n`` paired comparisons (and ground truth for ``coverage`` of them)."""
    rng = random.Random(seed)
    for i in range(n):
        truth = "fraud" if rng.random() < 0.2 else "legit"
        other = "legit" if truth == "fraud" else "fraud"
        u = rng.random()
        prod_label = truth if u < prod_acc else other
        cand_label = (
            (truth if u < cand_acc else other)
            if rng.random() > disagree
            else (other if prod_label == truth else truth)
        )
        failed = rng.random() < cand_errors
        rid = f"r{seed}-{i}"
        c = Comparison(
            request_id=rid,
            deployment="fraud",
            mode=Mode.CANARY,
            epoch=epoch,
            source=SourceOffset(topic=Topic.REQUESTS, partition=0, offset=i),
            served_by=Role.CANDIDATE,
            production=ArmResult(
                version="1", sha256="1" * 64, output=out(prod_label, 0.3), latency_ms=0.02
            ),
            candidate=ArmResult(
                version="2",
                sha256="2" * 64,
                output=None if failed else out(cand_label, 0.3),
                latency_ms=None if failed else cand_latency,
                error="boom" if failed else None,
            ),
            agree=not failed and prod_label == cand_label,
            score_delta=0.0,
        )
        assert a.add_comparison(c)
        if rng.random() < coverage:
            assert a.add_feedback(
                Feedback(request_id=rid, deployment="fraud", label=truth, observed_at=1)
            )


CASES: list[tuple[str, DeploymentState, dict[str, Any], Verdict]] = [
    ("canary: too few samples in the step", state(Mode.CANARY), {"n": 100}, Verdict.HOLD),
    ("canary: healthy step advances", state(Mode.CANARY), {"n": 400}, Verdict.ADVANCE),
    (
        "canary: disagreement guardrail",
        state(Mode.CANARY),
        {"n": 300, "disagree": 0.5},
        Verdict.ROLLBACK,
    ),
    (
        "canary: candidate errors",
        state(Mode.CANARY),
        {"n": 300, "cand_errors": 0.2},
        Verdict.ROLLBACK,
    ),
    (
        "canary: latency guardrail",
        state(Mode.CANARY),
        {"n": 600, "cand_latency": 5.0},
        Verdict.ROLLBACK,
    ),
    (
        "canary: a slower but still fast candidate",
        state(Mode.CANARY),
        {"n": 600, "cand_latency": 0.1},
        Verdict.ADVANCE,
    ),
    (
        "canary: last step, no labels, disagreement shown below the margin",
        state(Mode.CANARY, weight=1.0),
        {"n": 3000, "disagree": 0.002},
        Verdict.PROMOTE,
    ),
    (
        "canary: last step, no labels, disagreement under the ceiling but not the margin",
        state(Mode.CANARY, weight=1.0),
        {"n": 3000, "disagree": 0.1},
        Verdict.HOLD,
    ),
    (
        "canary: last step, labels for 30% (below the coverage) show a worse candidate",
        state(Mode.CANARY, weight=1.0),
        {"n": 3000, "cand_acc": 0.75, "coverage": 0.3, "disagree": 0.0},
        Verdict.ROLLBACK,
    ),
    (
        "canary: last step, labels for 30% of an equal candidate: waits for labels",
        state(Mode.CANARY, weight=1.0),
        {"n": 3000, "coverage": 0.3, "disagree": 0.05},
        Verdict.HOLD,
    ),
    (
        "canary: last step, error rate 2% against a 1% ceiling is never shown below it",
        state(Mode.CANARY, weight=1.0),
        {"n": 3000, "disagree": 0.002, "cand_errors": 0.011, "seed": 3},
        Verdict.HOLD,
    ),
    (
        "canary: worse on ground truth",
        state(Mode.CANARY, weight=0.25),
        {"n": 3000, "cand_acc": 0.6, "coverage": 0.8, "disagree": 0.0},
        Verdict.ROLLBACK,
    ),
    (
        "canary: better on ground truth, last step",
        state(Mode.CANARY, weight=1.0),
        {"n": 3000, "prod_acc": 0.75, "cand_acc": 0.9, "coverage": 0.8, "disagree": 0.0},
        Verdict.PROMOTE,
    ),
    ("canary: paused holds", state(Mode.CANARY, phase=Phase.PAUSED), {"n": 3000}, Verdict.HOLD),
    (
        "shadow: agreement passes",
        state(Mode.SHADOW, weight=0.0),
        {"n": 3000, "disagree": 0.002},
        Verdict.PROMOTE,
    ),
    (
        "shadow: approval required",
        state(Mode.SHADOW, weight=0.0, shadow_requires_approval=True),
        {"n": 3000, "disagree": 0.002},
        Verdict.AWAIT_APPROVAL,
    ),
    (
        "shadow: disagreement retires",
        state(Mode.SHADOW, weight=0.0),
        {"n": 300, "disagree": 0.5},
        Verdict.RETIRE,
    ),
    (
        "manual: recommends",
        state(Mode.MANUAL, weight=0.0, phase=Phase.AWAITING_APPROVAL),
        {"n": 3000, "disagree": 0.002},
        Verdict.RECOMMEND_PROMOTE,
    ),
    (
        "manual: recommends against",
        state(Mode.MANUAL, weight=0.0, phase=Phase.AWAITING_APPROVAL),
        {"n": 300, "disagree": 0.5},
        Verdict.RECOMMEND_REJECT,
    ),
]


@pytest.mark.parametrize(("name", "st", "evidence", "verdict"), CASES, ids=[c[0] for c in CASES])
def test_decision_table(
    name: str, st: DeploymentState, evidence: dict[str, Any], verdict: Verdict
) -> None:
    a = analysis(st)
    feed(a, **evidence)
    decision = decide(st, a)
    assert decision.verdict is verdict, decision.reason
    if verdict is not Verdict.HOLD:
        assert decision.evidence.samples["compared"] == evidence["n"]
        assert "thresholds" in decision.evidence.tests
        assert decision.reason


def test_advance_goes_to_the_next_policy_step() -> None:
    st = state(Mode.CANARY, weight=0.10)
    a = analysis(st)
    feed(a, 400)
    assert decide(st, a).next_weight == 0.25


def test_manual_recommends_only_once() -> None:
    st = state(Mode.MANUAL, weight=0.0, phase=Phase.AWAITING_APPROVAL)
    a = analysis(st)
    feed(a, 3000)
    assert decide(st, a, recommended=True).verdict is Verdict.HOLD


def test_only_the_rollouts_own_comparisons_count() -> None:
    st = state(Mode.CANARY)
    a = analysis(st)
    feed(a, 10)
    stale = analysis(st)
    with pytest.raises(AssertionError):
        feed(stale, 1, epoch=9)  # an older epoch than the rollout's start
    assert a.compared == 10


def test_a_new_step_counts_its_own_samples() -> None:
    st = state(Mode.CANARY)
    a = analysis(st)
    feed(a, 300)
    a.new_step(12)
    feed(a, 50, epoch=11, seed=1)
    feed(a, 70, epoch=12, seed=2)
    assert (a.step_samples, a.compared) == (70, 420)


def test_snapshot_round_trip_keeps_every_count_and_test() -> None:
    st = state(Mode.CANARY)
    a = analysis(st)
    feed(a, 500, coverage=0.5, disagree=0.1)
    b = reloaded(a)
    assert b.to_json() == a.to_json()
    better, b_better = a.step_better["all"], b.step_better["all"]
    assert b_better.log_wealth == better.log_wealth
    assert b.pending.chunk_records() == a.pending.chunk_records() and len(a.pending) == 250
    assert decide(st, b).verdict is decide(st, a).verdict


def test_psi_is_zero_for_equal_distributions_and_grows_with_shift() -> None:
    same = [10] * 10
    assert psi(same, same) == pytest.approx(0.0)
    assert psi(same, [1] * 5 + [19] * 5) > psi(same, [8] * 5 + [12] * 5) > 0


def test_ground_truth_is_awaited_for_the_horizon_only() -> None:
    st = state(Mode.CANARY)
    a = analysis(st)
    a.horizon_ms = 1000
    feed(a, 5)
    c = "r0-0"  # the first request fed
    assert len(a.pending) == 5 and a.pending.find(c) is not None
    a.expire(now=10_000)
    assert not a.pending and a.expired_pending == 5
    assert not a.add_feedback(Feedback(request_id=c, deployment="fraud", label="x", observed_at=1))


def test_a_slow_tail_alone_does_not_trip_the_latency_guardrail() -> None:
    """The candidate's slowest 2% of calls are 5 ms (a scheduler hiccup), its median is
    production's: no rollback. The same tail with a slow median is a regression."""
    st = state(Mode.CANARY)
    hiccups = analysis(st)
    feed(hiccups, 600)
    for _ in range(12):
        hiccups.candidate_arm.add(5.0, [3], False)  # score 0.3: bin 3
    assert decide(st, hiccups).verdict is Verdict.ADVANCE
    slow = analysis(st)
    feed(slow, 600, cand_latency=5.0)
    assert decide(st, slow).verdict is Verdict.ROLLBACK


@pytest.mark.parametrize(
    ("margin", "disagreement", "errors", "verdict"),
    [
        # Bounds at the edges of their ranges are valid policy ("never roll back on this").
        (1.0, 1.0, 1.0, Verdict.HOLD),
        (0.0, 0.0, 0.0, Verdict.RETIRE),  # any disagreement is over a ceiling of 0
        (1.0, 1.0, 0.0, Verdict.HOLD),
    ],
)
def test_policy_bounds_at_their_edges_still_decide(
    margin: float, disagreement: float, errors: float, verdict: Verdict
) -> None:
    # A ceiling of 1.0 once crashed the controller's analyst (the betting test's null mean
    # must lie strictly inside [0, 1]); the policy had passed validation.
    st = state(Mode.SHADOW, non_inferiority_margin=margin, min_samples_per_step=10**9)
    st = st.model_copy(
        update={
            "policy": st.policy.model_copy(
                update={
                    "guardrails": st.policy.guardrails.model_copy(
                        update={
                            "max_disagreement": disagreement,
                            "max_candidate_error_rate": errors,
                        }
                    )
                }
            )
        }
    )
    a = analysis(st)
    feed(a, 400, disagree=0.1)
    assert decide(st, a).verdict is verdict


def test_at_the_horizon_without_evidence_production_is_kept() -> None:
    """Labels never come for a candidate that disagrees too much to pass on agreement: it
    holds, saying it waits for labels, then at the feedback horizon it is rolled back."""
    st = state(Mode.CANARY, weight=1.0, feedback_horizon_s=3600)
    a = analysis(st)
    a.horizon_ms = 3600 * 1000
    feed(a, 3000, disagree=0.1)
    held = decide(st, a)
    assert held.verdict is Verdict.HOLD and held.waiting_for.value == "labels", held.reason
    a.tick(a.step_started_at + 3600 * 1000)
    decision = decide(st, a)
    assert decision.verdict is Verdict.ROLLBACK, decision.reason
    assert "evidence never came" in decision.reason


def test_a_worse_test_rejected_at_an_earlier_step_blocks_promotion() -> None:
    st = state(Mode.CANARY, weight=0.5)
    a = analysis(st)
    feed(a, 3000, cand_acc=0.6, coverage=1.0, disagree=0.0)
    assert a.worse_now()
    a.new_step(11)
    feed(a, 3000, epoch=11, seed=9, disagree=0.002)  # an unremarkable last step
    last = st.model_copy(update={"canary_weight": 1.0})
    assert decide(last, a).verdict is Verdict.ROLLBACK
