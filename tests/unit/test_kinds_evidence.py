"""Model kinds in the evidence core: a regressor's capped-error criterion, the score shift
per class and per target, and snapshots of both (tables over synthetic evidence)."""

from __future__ import annotations

import random

import pytest

from app.core.analysis import RolloutAnalysis
from app.core.analysis_snapshot import SNAPSHOT_VERSION, OldSnapshot
from app.core.events import ArmResult, Comparison, Feedback, Mode, ModelOutput, Role, SourceOffset
from app.core.metric import RegressionRule, bound
from app.core.policy import Policy
from app.core.promotion import Criterion, Verdict, criterion, decide
from app.core.topics import Topic
from app.core.watch import WatchAnalysis
from tests import builders
from tests.builders import reloaded

RULE = RegressionRule(error_cap=2.0, margin=0.05)


@pytest.mark.parametrize(
    ("prod", "cand", "truth", "expected"),
    [
        ([1.0], [1.0], [5.0], 0.0),  # the same prediction: no difference, whatever the truth
        ([1.0], [2.0], [2.0], 0.5),  # candidate exact, production 1 off: (0.5 - 0) on cap 2
        ([2.0], [1.0], [2.0], -0.5),
        ([0.0], [10.0], [10.0], 1.0),  # production beyond the cap: loss 1
        ([0.0, 0.0], [1.0, 0.0], [1.0, 0.0], 0.25),  # mean over targets
        ([1.0], None, [1.0], -1.0),  # a failed candidate: loss 1
    ],
)
def test_the_capped_loss_difference(
    prod: list[float], cand: list[float] | None, truth: list[float], expected: float
) -> None:
    assert RULE.value("all", prod, cand, truth) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("prod", "cand"),
    [([1.0], [1.5]), ([0.0], [9.0]), ([1.0, 3.0], [2.0, 3.5]), ([1.0], None), ([4.0], [4.0])],
)
def test_the_worst_case_bounds_every_truth(prod: list[float], cand: list[float] | None) -> None:
    """The unlabelled pair's worst case on each side is a bound of what any truth gives."""
    possible = RULE.possible("all", prod, cand)
    low, high = bound(possible, 0.0, True), bound(possible, 0.0, False)
    rng = random.Random(0)
    for _ in range(500):
        truth = [rng.uniform(-10, 15) for _ in prod]
        x = RULE.value("all", prod, cand, truth)
        assert (low if low is not None else 0.0) - 1e-12 <= x
        assert x <= (high if high is not None else 0.0) + 1e-12


def _regressor(cap: float | None, policy: Policy) -> RolloutAnalysis:
    return RolloutAnalysis.for_policy(
        "price", "2", 10, policy, started_at=1, kind="regressor", error_cap=cap
    )


def _comparison(i: int, prod: list[float], cand: list[float], agree: bool) -> Comparison:
    def arm(version: str, values: list[float]) -> ArmResult:
        return ArmResult(
            version=version, sha256="0" * 64, output=ModelOutput(values=values), latency_ms=1.0
        )

    return Comparison(
        request_id=f"r{i}",
        deployment="price",
        mode=Mode.CANARY,
        epoch=10,
        source=SourceOffset(topic=Topic.REQUESTS, partition=0, offset=i),
        served_by=Role.PRODUCTION,
        production=arm("1", prod),
        candidate=arm("2", cand),
        agree=agree,
        score_delta=cand[0] - prod[0],
    )


def _feed_regressor(a: RolloutAnalysis, n: int, cand_noise: float, seed: int = 0) -> None:
    rng = random.Random(seed)
    for i in range(n):
        truth = rng.uniform(0, 20)
        prod = truth + rng.gauss(0, 0.3)
        cand = truth + rng.gauss(0, cand_noise)
        a.add_comparison(_comparison(i, [prod], [cand], abs(cand - prod) <= 0.1), at=100 + i)
        a.add_feedback(
            Feedback(request_id=f"r{i}", deployment="price", value=truth, observed_at=0), at=100 + i
        )


# Decided on the feedback alone: the tolerance (0.1) makes most pairs disagree.
POLICY = Policy.model_validate(
    {
        "min_samples_per_step": 200,
        "canary_steps": [1.0],
        "min_feedback_coverage": 0.5,
        "guardrails": {"max_disagreement": 1.0},
    }
)


@pytest.mark.parametrize(
    ("cand_noise", "verdict"),
    [(0.1, Verdict.PROMOTE), (3.0, Verdict.ROLLBACK)],
)
def test_a_regressor_is_decided_on_value_feedback(cand_noise: float, verdict: Verdict) -> None:
    st = builders.state(Mode.CANARY, epoch=10, weight=1.0, policy=POLICY)
    a = _regressor(1.0, POLICY)
    _feed_regressor(a, 1500, cand_noise)
    assert a.labelled == 1500
    assert decide(st, a).verdict is verdict, decide(st, a).reason


def test_a_regressor_without_a_cap_holds_and_says_why() -> None:
    st = builders.state(Mode.CANARY, epoch=10, weight=1.0, policy=POLICY)
    a = _regressor(None, POLICY)
    _feed_regressor(a, 600, 0.1)
    assert a.labelled == 0  # its value feedback is not used
    j = criterion(st, a)
    assert j.outcome is Criterion.PENDING and "error_cap" in j.why
    assert decide(st, a).verdict is not Verdict.PROMOTE


def test_regressor_feedback_with_the_wrong_number_of_values_changes_nothing() -> None:
    a = _regressor(1.0, POLICY)
    a.add_comparison(_comparison(0, [1.0], [1.2], False), at=1)
    bad = Feedback(request_id="r0", deployment="price", value=[1.0, 2.0], observed_at=0)
    assert not a.add_feedback(bad)
    assert not a.add_feedback(
        Feedback(request_id="r0", deployment="price", label="x", observed_at=0)
    )
    assert a.add_feedback(Feedback(request_id="r0", deployment="price", value=1.0, observed_at=0))


def test_a_regressor_disagrees_by_the_tolerance_not_by_labels() -> None:
    a = _regressor(1.0, POLICY)
    a.add_comparison(_comparison(0, [1.0], [1.05], True), at=1)
    a.add_comparison(_comparison(1, [1.0], [3.0], False), at=2)
    assert (a.paired, a.disagreements) == (2, 1)
    assert not a.agreement_route


def test_the_value_shift_is_binned_on_productions_first_values_and_survives_snapshots() -> None:
    a = _regressor(1.0, POLICY)
    rng = random.Random(1)
    for i in range(300):
        v = rng.uniform(0, 10)
        a.add_comparison(_comparison(i, [v], [v + 5.0], False), at=i)
        if i == 150:  # round trip while the edges are not fixed yet
            a = reloaded(a)
    assert a.value_edges is not None and len(a.value_edges[0]) == 9
    assert sum(a.production.shift[0]) == sum(a.candidate_arm.shift[0]) == 300
    assert a.score_shift > 1.0  # a candidate shifted by half the range
    back = reloaded(a)
    assert back.score_shift == a.score_shift and back.value_edges == a.value_edges
    same = _regressor(1.0, POLICY)
    for i in range(300):
        v = rng.uniform(0, 10)
        same.add_comparison(_comparison(i, [v], [v], True), at=i)
    assert same.score_shift < 0.05


def _classifier_comparison(i: int, prod: list[float], cand: list[float]) -> Comparison:
    labels = ["a", "b", "c"][: len(prod)]

    def arm(version: str, scores: list[float]) -> ArmResult:
        label = labels[max(range(len(scores)), key=scores.__getitem__)]
        out = ModelOutput(label=label, scores=scores)
        return ArmResult(version=version, sha256="0" * 64, output=out, latency_ms=1.0)

    p, c = arm("1", prod), arm("2", cand)
    assert p.output is not None and c.output is not None
    return Comparison(
        request_id=f"r{i}",
        deployment="fraud",
        mode=Mode.CANARY,
        epoch=10,
        source=SourceOffset(topic=Topic.REQUESTS, partition=0, offset=i),
        served_by=Role.PRODUCTION,
        production=p,
        candidate=c,
        agree=p.output.label == c.output.label,
        score_delta=0.0,
    )


def _classifier() -> RolloutAnalysis:
    return RolloutAnalysis.for_policy("fraud", "2", 10, Policy(), started_at=1)


def test_the_score_shift_sees_a_class_other_than_the_last() -> None:
    """Three classes: the candidate moves mass between the first two, the last unchanged;
    the shift is the largest over the classes (here the first two's)."""
    a = _classifier()
    rng = random.Random(2)
    for i in range(500):
        last = rng.uniform(0.0, 0.2)
        x = rng.uniform(0.0, 1.0 - last)
        a.add_comparison(
            _classifier_comparison(
                i, [x, 1 - last - x, last], [0.8 - last * 0.5, 0.2 - last * 0.5, last]
            ),
            at=i,
        )
    assert len(a.production.shift) == 3
    assert a.score_shift > 1.0


@pytest.mark.parametrize("shift", [0.0, 0.3])
def test_a_binary_classifiers_shift_is_the_positive_class_scores(shift: float) -> None:
    """Two classes: only the last score is binned (the first is its mirror), in tenths, as
    before: ``max_score_shift`` keeps its meaning."""
    a = _classifier()
    rng = random.Random(3)
    expected_p, expected_c = [0] * 10, [0] * 10
    for i in range(400):
        s = rng.uniform(0.0, 0.69)
        t = s + shift
        a.add_comparison(_classifier_comparison(i, [1 - s, s], [1 - t, t]), at=i)
        expected_p[min(int(s * 10), 9)] += 1
        expected_c[min(int(t * 10), 9)] += 1
    assert a.production.shift == [expected_p] and a.candidate_arm.shift == [expected_c]


def test_an_earlier_snapshot_is_refused() -> None:
    data = _classifier().to_json()
    assert data["version"] == SNAPSHOT_VERSION
    data["version"] = SNAPSHOT_VERSION - 1
    with pytest.raises(OldSnapshot):
        RolloutAnalysis.from_json(data)


def _watch(cap: float | None) -> WatchAnalysis:
    return WatchAnalysis(
        deployment="price",
        production="2",
        previous="1",
        start_epoch=10,
        started_at=0,
        until=10**12,
        alpha=0.01,
        margin=0.05,
        disagreement_ceiling=1.0,
        kind="regressor",
        error_cap=cap,
    )


def _watch_comparison(i: int, new: float, old: float, agree: bool) -> Comparison:
    c = _comparison(i, [new], [old], agree)
    production = c.production.model_copy(update={"version": "2"})
    candidate = c.candidate.model_copy(update={"version": "1"})
    return c.model_copy(update={"watch": True, "production": production, "candidate": candidate})


@pytest.mark.parametrize(("new_noise", "alarmed"), [(0.3, False), (3.0, True)])
def test_a_promoted_regressor_is_watched_on_value_feedback(new_noise: float, alarmed: bool) -> None:
    w = _watch(1.0)
    rng = random.Random(4)
    for i in range(1500):
        truth = rng.uniform(0, 20)
        new, old = truth + rng.gauss(0, new_noise), truth + rng.gauss(0, 0.3)
        assert w.add_comparison(_watch_comparison(i, new, old, abs(new - old) <= 0.1), at=i)
        assert w.add_feedback(
            Feedback(request_id=f"r{i}", deployment="price", value=truth, observed_at=0)
        )
    assert w.production_errors == 0 and w.paired == 1500
    assert bool(w.alarms) is alarmed, w.alarms
    back = WatchAnalysis.from_json(w.to_json(), w.pending.chunk_records())
    assert (back.kind, back.error_cap, back.labelled) == ("regressor", 1.0, 1500)


def test_a_watched_regressor_without_a_cap_ignores_value_feedback() -> None:
    w = _watch(None)
    w.add_comparison(_watch_comparison(0, 1.0, 1.0, True), at=0)
    assert not w.add_feedback(
        Feedback(request_id="r0", deployment="price", value=1.0, observed_at=0)
    )
