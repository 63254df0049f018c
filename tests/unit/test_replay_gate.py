"""The replay gate's judgement (``app.core.replay``), as a table over synthetic replays: a
fixed sample of paired requests of a candidate against production, with ground truth for some
of them, judged once by the policy's own tests."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from app.core.analysis import RolloutAnalysis
from app.core.events import (
    ArmResult,
    Comparison,
    DeploymentState,
    Feedback,
    Mode,
    ModelOutput,
    Role,
    SourceOffset,
)
from app.core.policy import Metric, MetricKind, Policy
from app.core.replay import judge, needs, replay_analysis, requests_needed
from app.core.topics import Topic
from tests import builders
from tests.builders import V1, V2

ACCURACY = Policy(non_inferiority_margin=0.02, replay_gate=5000)
RECALL = ACCURACY.model_copy(
    update={
        "metric": Metric(
            kind=MetricKind.RECALL,
            classes=["legit", "fraud"],
            class_margins={"fraud": 0.05, "legit": 0.02},
        )
    }
)


def states(policy: Policy) -> tuple[DeploymentState, DeploymentState]:
    """Before the deploy (production V1) and the state it would make (V2, automatic)."""
    before = builders.state(Mode.AUTOMATIC, None, epoch=10, policy=policy)
    after = builders.state(Mode.AUTOMATIC, None, epoch=11, production=V2, policy=policy)
    return before, after


@dataclass(frozen=True)
class Replay:
    n: int
    prod_acc: float = 0.85
    cand_acc: float = 0.85
    disagree: float = 0.10  # share of requests where the two differ (before accuracy)
    labelled: float = 1.0  # share of requests with ground truth
    cand_errors: float = 0.0
    fraud_recall: float | None = None  # the candidate's recall on frauds, when set
    seed: int = 0


def _out(label: str) -> ModelOutput:
    return ModelOutput(label=label, scores=[0.2, 0.8] if label == "fraud" else [0.8, 0.2])


def _flip(r: Replay, right: bool) -> float:
    """P(the candidate differs | production right or wrong): a disagreement rate
    ``r.disagree`` whose disagreements favour the candidate by ``cand_acc - prod_acc``."""
    if not r.disagree:
        return 0.0
    q = (1 + (r.cand_acc - r.prod_acc) / r.disagree) / 2  # share where the candidate is right
    return r.disagree * (1 - q) / r.prod_acc if right else r.disagree * q / (1 - r.prod_acc)


def replayed(policy: Policy, r: Replay) -> RolloutAnalysis:
    """``r.n`` replayed requests scored by both versions, and their ground truth."""
    before, after = states(policy)
    a = replay_analysis(before, after, r.n)
    rng = random.Random(r.seed)
    for i in range(r.n):
        truth = "fraud" if rng.random() < 0.2 else "legit"
        other = "legit" if truth == "fraud" else "fraud"
        u = rng.random()
        prod = truth if u < r.prod_acc else other
        if r.fraud_recall is not None and truth == "fraud":
            cand = truth if rng.random() < r.fraud_recall else other
        elif rng.random() < _flip(r, right=prod == truth):
            cand = other if prod == truth else truth
        else:
            cand = prod
        failed = rng.random() < r.cand_errors
        rid = f"r{i}"
        comparison = Comparison(
            request_id=rid,
            deployment="fraud",
            mode=Mode.SHADOW,
            epoch=10,
            source=SourceOffset(topic=Topic.REQUESTS, partition=0, offset=i),
            served_by=Role.PRODUCTION,
            production=ArmResult(version="1", sha256=V1.sha256, output=_out(prod), latency_ms=0.02),
            candidate=ArmResult(
                version="2",
                sha256=V2.sha256,
                output=None if failed else _out(cand),
                latency_ms=None if failed else 0.02,
                error="boom" if failed else None,
            ),
            agree=not failed and prod == cand,
            score_delta=0.0,
        )
        assert a.add_comparison(comparison)
        if rng.random() < r.labelled:
            a.add_feedback(Feedback(request_id=rid, deployment="fraud", label=truth, observed_at=1))
    return a


CASES: list[tuple[str, Policy, Replay, bool, list[str]]] = [
    ("equal, labelled", ACCURACY, Replay(5000), True, ["passed", "non-inferior", "labelled"]),
    ("better, labelled", ACCURACY, Replay(3000, cand_acc=0.88), True, ["passed"]),
    (
        "10 points worse: the labels refuse it",
        ACCURACY,
        Replay(3000, cand_acc=0.75, disagree=0.15),
        False,
        ["failed", "labels show it worse", "all: "],
    ),
    (
        "equal but too few labels: had and needed",
        ACCURACY,
        Replay(300),
        False,
        ["refused", "300 replayed", "would be needed", "set replay_gate to about"],
    ),
    (
        "labels for 30%: coverage below the policy's 50%",
        ACCURACY,
        Replay(5000, labelled=0.3),
        False,
        ["refused", "coverage", "50% needed"],
    ),
    (
        "no ground truth at all: refused",
        ACCURACY,
        Replay(3000, labelled=0.0),
        False,
        ["no ground truth", "min_feedback_coverage 0.5"],
    ),
    (
        "no ground truth, and the policy requires none: the guardrails alone",
        ACCURACY.model_copy(update={"min_feedback_coverage": 0.0}),
        Replay(3000, labelled=0.0),
        True,
        ["guardrails alone", "requires none"],
    ),
    (
        "no ground truth, none required, but the disagreement ceiling crossed",
        ACCURACY.model_copy(update={"min_feedback_coverage": 0.0}),
        Replay(3000, labelled=0.0, disagree=0.5),
        False,
        ["disagreement"],
    ),
    (
        "candidate errors",
        ACCURACY,
        Replay(3000, cand_errors=0.1),
        False,
        ["error rate"],
    ),
    (
        "nothing to replay",
        ACCURACY,
        Replay(0),
        False,
        ["no recent requests"],
    ),
    (
        "recall: never flags fraud",
        RECALL,
        Replay(3000, fraud_recall=0.0, disagree=0.0),
        False,
        ["recall:fraud"],
    ),
    (
        "recall: equal on both classes",
        RECALL,
        Replay(8000, disagree=0.04),
        True,
        ["passed", "recall:fraud", "recall:legit"],
    ),
]


@pytest.mark.parametrize(
    ("policy", "replay", "passes", "words"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_the_gate_judges_the_replayed_labels(
    policy: Policy, replay: Replay, passes: bool, words: list[str]
) -> None:
    _, after = states(policy)
    a = replayed(policy, replay)
    result = judge(after, a, policy.replay_gate)
    assert result.passed is passes, result.reason
    for word in words:
        assert word in result.reason, (word, result.reason)
    gate = result.evidence.tests["replay"]
    assert gate["replayed"] == replay.n
    assert gate["wanted"] == policy.replay_gate


def test_the_gate_runs_at_the_policys_whole_alpha_on_labels_only() -> None:
    before, after = states(ACCURACY)
    a = replay_analysis(before, after, 10)
    assert not a.agreement_route
    assert a.alpha_labels == ACCURACY.alpha


def test_the_estimate_of_what_is_needed_is_enough() -> None:
    """An equal candidate refused on 400 labelled requests: the number the refusal names
    (the estimate) is, fed afresh, enough to pass in most seeds."""
    short = replayed(ACCURACY, Replay(400, seed=1))
    found = needs(short)
    needed = requests_needed(short, found)
    assert needed is not None and needed > 400
    passed = [
        judge(states(ACCURACY)[1], replayed(ACCURACY, Replay(needed, seed=s)), needed).passed
        for s in range(2, 8)
    ]
    assert sum(passed) >= 4, (needed, passed)


def test_a_worse_candidate_is_not_given_a_number_that_would_pass_it() -> None:
    a = replayed(ACCURACY, Replay(400, cand_acc=0.80, disagree=0.15))
    result = judge(states(ACCURACY)[1], a, 400)
    assert not result.passed
    assert "would be needed" not in result.reason or "labels show it worse" in result.reason
