"""The promotion routes' level and the in-order promote test, through RolloutAnalysis and the
real decision path (``decide`` then ``controller_step``)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import pytest

from app.core.analysis import RolloutAnalysis
from app.core.criterion_tests import AGREEMENT_ALPHA_SHARE
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
from app.core.policy import Policy
from app.core.promotion import decide
from app.core.state_machine import controller_step
from app.core.topics import Topic
from app.core.verdict import Verdict, WaitingFor
from tests import builders

ALPHA = 0.05
RECALL = {"kind": "recall", "classes": ["legit", "fraud"]}


@pytest.mark.parametrize(
    ("policy", "labels_alpha"),
    [
        ({}, ALPHA * (1 - AGREEMENT_ALPHA_SHARE)),
        ({"promote_on_agreement": False}, ALPHA),
        ({"metric": RECALL}, ALPHA),  # agreement never promotes on recall
        ({"metric": {"kind": "expected_cost", "costs": {"fraud": {"legit": 10}}}}, 0.04),
    ],
)
def test_the_two_promotion_routes_share_alpha(
    policy: dict[str, object], labels_alpha: float
) -> None:
    p = Policy.model_validate(policy)
    a = RolloutAnalysis.for_policy("fraud", "2", 1, p, started_at=1)
    for tests in (a.step_better, a.step_frontier):
        for t in tests.values():
            assert t.threshold == pytest.approx(math.log(1 / labels_alpha))
    assert a.agree_margin.threshold == pytest.approx(math.log(1 / (ALPHA * AGREEMENT_ALPHA_SHARE)))
    routes = labels_alpha + (ALPHA * AGREEMENT_ALPHA_SHARE if a.agreement_route else 0.0)
    assert routes == pytest.approx(ALPHA)


@dataclass(frozen=True)
class Pair:
    rid: str
    truth: str
    prod: str
    cand: str


def pairs(n: int, *, cand_acc: float, disagree: float, seed: int, prefix: str) -> list[Pair]:
    """``n`` requests: both models give the same answer (right 90% of the time) except on
    ``disagree`` of them, where exactly one is right: the candidate with probability
    ``cand_acc`` (a mean difference of ``disagree * (2 cand_acc - 1)``)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        truth = "fraud" if rng.random() < 0.1 else "legit"
        other = "legit" if truth == "fraud" else "fraud"
        if rng.random() < disagree:
            cand_right = rng.random() < cand_acc
            cand, prod = (truth, other) if cand_right else (other, truth)
        else:
            cand = prod = truth if rng.random() < 0.9 else other
        out.append(Pair(f"{prefix}{i}", truth, prod, cand))
    return out


def _arm(version: str, label: str) -> ArmResult:
    score = 0.8 if label == "fraud" else 0.2
    return ArmResult(
        version=version,
        sha256=version * 64,
        output=ModelOutput(label=label, scores=[1 - score, score]),
        latency_ms=0.02,
    )


def compare(a: RolloutAnalysis, st: DeploymentState, p: Pair, at: int) -> None:
    c = Comparison(
        request_id=p.rid,
        deployment="fraud",
        mode=Mode.CANARY,
        epoch=st.epoch,
        source=SourceOffset(topic=Topic.REQUESTS, partition=0, offset=0),
        served_by=Role.CANDIDATE,
        production=_arm("1", p.prod),
        candidate=_arm("2", p.cand),
        agree=p.prod == p.cand,
        score_delta=0.0,
    )
    assert a.add_comparison(c, at=at)


def label(a: RolloutAnalysis, p: Pair, at: int) -> None:
    f = Feedback(request_id=p.rid, deployment="fraud", label=p.truth, observed_at=at)
    assert a.add_feedback(f, at=at)


def test_the_in_order_test_is_not_held_back_by_labels_still_in_flight() -> None:
    """An equal candidate, labels 1,000 requests late: the in-order form takes the labelled
    prefix and passes; the all-in form carries ~40 disagreeing pairs at their worst case."""
    p = Policy(promote_on_agreement=False)
    a = RolloutAnalysis.for_policy("fraud", "2", 1, p, started_at=1)
    st = builders.state(Mode.CANARY, weight=1.0, policy=p)
    stream = pairs(2500, cand_acc=0.5, disagree=0.04, seed=1, prefix="r")
    for i, pair in enumerate(stream):
        compare(a, st, pair, at=i)
        if i >= 1000:
            label(a, stream[i - 1000], at=i)
    assert a.step_frontier["all"].rejected
    assert not a.step_better["all"].rejected
    assert a.tested_coverage > 0.9 and a.step_coverage < 0.61
    assert decide(st, a).verdict is Verdict.PROMOTE


def test_the_in_order_test_waits_at_an_unlabelled_disagreement_then_goes_on() -> None:
    p = Policy(promote_on_agreement=False, feedback_horizon_s=1)
    a = RolloutAnalysis.for_policy("fraud", "2", 1, p, started_at=0)
    st = builders.state(Mode.CANARY, weight=1.0, policy=p)
    agree = Pair("a", "legit", "legit", "legit")
    split = Pair("d", "legit", "fraud", "legit")
    compare(a, st, agree, at=0)
    compare(a, st, split, at=0)
    behind = [Pair(f"b{i}", "legit", "legit", "legit") for i in range(5)]
    for pair in behind:
        compare(a, st, pair, at=0)
    assert a.tested == 1 and a.pending.queued == 6  # the disagreeing pair holds the line
    label(a, split, at=1)
    assert a.tested == 7 and not a.pending.queued
    assert a.step_frontier["all"].n == 7 and a.step_frontier["all"].total == 1.0
    # A label that never comes: past the horizon the pair goes in at its worst case.
    lost = Pair("lost", "legit", "fraud", "legit")
    compare(a, st, lost, at=2)
    compare(a, st, Pair("next", "legit", "legit", "legit"), at=2)
    assert a.tested == 7
    a.tick(3_001)
    assert a.tested == 9 and a.step_frontier["all"].total == 0.0


def test_a_snapshot_keeps_the_in_order_test_and_its_queue() -> None:
    p = Policy(promote_on_agreement=False)
    a = RolloutAnalysis.for_policy("fraud", "2", 1, p, started_at=1)
    st = builders.state(Mode.CANARY, weight=1.0, policy=p)
    stream = pairs(400, cand_acc=0.5, disagree=0.1, seed=2, prefix="s")
    for i, pair in enumerate(stream):
        compare(a, st, pair, at=i)
    for pair in stream[:100]:
        label(a, pair, at=500)
    b = builders.reloaded(a)
    assert b.to_json() == a.to_json()
    for pair in stream[100:]:
        label(a, pair, at=600)
        label(b, pair, at=600)
    assert b.to_json() == a.to_json() and not b.pending.queued and b.tested == 400


# -- labels arrive only after the last step ---------------------------------------------------


def run_canary(cand_acc: float, disagree: float, seed: int) -> list[tuple[Verdict, WaitingFor]]:
    """A canary (steps 50%, 100%; 300 compared requests each) that sees no label until the
    last step has its samples, then every label; the verdicts of ``decide`` every 50
    requests, applied by ``controller_step`` (an advance starts the next step)."""
    p = Policy(canary_steps=[0.5, 1.0], min_samples_per_step=300, promote_on_agreement=False)
    st = builders.state(Mode.CANARY, weight=0.5, policy=p, updated_at=1)
    a = RolloutAnalysis.for_policy("fraud", "2", st.epoch, p, started_at=1)
    stream = pairs(2400, cand_acc=cand_acc, disagree=disagree, seed=seed, prefix="q")
    seen: list[tuple[Verdict, WaitingFor]] = []
    labelled = 0
    for i, pair in enumerate(stream):
        at = 1000 * (i + 2)
        compare(a, st, pair, at=at)
        if st.canary_weight == 1.0 and a.step_samples >= 600:
            while labelled <= i:  # the labels come, in compared order, two per request
                label(a, stream[labelled], at=at)
                labelled += 1
        if i % 50 != 49:
            continue
        d = decide(st, a)
        seen.append((d.verdict, d.waiting_for))
        if d.verdict is Verdict.HOLD:
            continue
        out = controller_step(st, d.verdict, d.reason, at, d.evidence, d.next_weight)
        assert out.state is not None
        if d.verdict is Verdict.ADVANCE:
            st = out.state
            a.new_step(st.epoch, at)
            continue
        break
    return seen


@pytest.mark.parametrize(
    ("cand_acc", "disagree", "final"),
    [
        (0.5, 0.01, Verdict.PROMOTE),  # equal: half the disagreements go each way
        (0.8, 0.03, Verdict.PROMOTE),  # better
        (0.1, 0.15, Verdict.ROLLBACK),  # worse by ~12 points: production is kept
    ],
)
def test_labels_only_after_the_last_step(cand_acc: float, disagree: float, final: Verdict) -> None:
    seen = run_canary(cand_acc, disagree, seed=3)
    verdicts = [v for v, _ in seen]
    assert verdicts[-1] is final, seen
    assert verdicts.count(Verdict.ADVANCE) == 1
    last_step = seen[verdicts.index(Verdict.ADVANCE) + 1 :]
    # At the last step, before any label: it holds, waiting for labels, and never promotes
    # on agreement (the policy needs labels), though the candidate barely disagrees.
    before_labels = last_step[: 600 // 50 - 1]
    assert before_labels and all(v is Verdict.HOLD for v, _ in before_labels)
    assert any(w is WaitingFor.LABELS for _, w in before_labels)
    assert Verdict.PROMOTE not in verdicts[: len(verdicts) - 1]


def _early_run(n: int, lead: int, gap_ms: int) -> RolloutAnalysis:
    """An equal candidate's ``n`` requests, each label read ``lead`` records BEFORE its
    comparison (a lagging worker, a fast label), its comparison's record ``gap_ms`` later."""
    p = Policy(promote_on_agreement=False)
    a = RolloutAnalysis.for_policy("fraud", "2", 1, p, started_at=1)
    st = builders.state(Mode.CANARY, weight=1.0, policy=p)
    stream = pairs(n, cand_acc=0.5, disagree=0.04, seed=3, prefix="e")
    for i in range(n + lead):
        if i < n:
            truth = stream[i].truth
            f = Feedback(request_id=stream[i].rid, deployment="fraud", label=truth, observed_at=i)
            assert not a.add_feedback(f, at=1_000 + i)  # nothing compared yet: held
        if i >= lead:
            compare(a, st, stream[i - lead], at=1_000 + i - lead + gap_ms)
    return a


@pytest.mark.parametrize(
    ("n", "lead", "gap_ms", "labelled", "let_go"),
    [
        (600, 1, 0, 600, 0),  # each label one record ahead of its comparison: all joined
        (600, 600, 0, 600, 0),  # all 600 labels first: all joined
        (2_500, 2_500, 0, 2_000, 500),  # 2,500 held: the oldest 500 past the limit let go
        (600, 1, 59_000, 600, 0),  # comparisons 59 s after their labels: joined
        (600, 1, 61_000, 0, 600),  # a minute after: the labels were let go, and counted
    ],
)
def test_a_label_read_before_its_comparison_is_held_and_joined(
    n: int, lead: int, gap_ms: int, labelled: int, let_go: int
) -> None:
    a = _early_run(n, lead, gap_ms)
    samples = a.samples()
    assert (samples["labelled"], samples["labels_early_dropped"]) == (labelled, let_go)
    assert samples["labels_early"] == 0  # nothing left held once every comparison came
