"""What the dashboard shows: the comparison, the tests against their thresholds, the traffic
split over time, the decisions. Pure, from real events."""

from __future__ import annotations

from functools import partial

import orjson

from app.core.analysis import RolloutAnalysis
from app.core.events import (
    ArmResult,
    Comparison,
    DecisionEvent,
    Mode,
    ModelOutput,
    Phase,
    Role,
    SourceOffset,
    StateSummary,
)
from app.core.rollout_view import deployment_view, weight_timeline
from app.core.topics import Topic
from tests import builders

# A canary at 25 %, epoch 3, last updated at 5 s.
state = partial(builders.state, weight=0.25, epoch=3, updated_at=5_000)


def decision(
    action: str, epoch: int, weight: float, at: int, accepted: bool = True
) -> DecisionEvent:
    return DecisionEvent(
        deployment="fraud",
        epoch=epoch,
        action=action,
        command_id=None,
        accepted=accepted,
        reason=f"{action} reason",
        decided_by="controller",
        to=StateSummary(mode=Mode.CANARY, phase=Phase.PROGRESSING, weight=weight),
        at=at,
    )


def comparison(i: int, agree: bool) -> Comparison:
    out_p = ModelOutput(label="legit", scores=[0.9, 0.1])
    out_c = out_p if agree else ModelOutput(label="fraud", scores=[0.2, 0.8])
    return Comparison(
        request_id=f"r{i}",
        deployment="fraud",
        mode=Mode.CANARY,
        epoch=2,
        source=SourceOffset(topic=Topic.REQUESTS, partition=0, offset=i),
        served_by=Role.CANDIDATE,
        production=ArmResult(version="1", sha256="a" * 64, output=out_p, latency_ms=0.02),
        candidate=ArmResult(version="2", sha256="b" * 64, output=out_c, latency_ms=0.03),
        agree=agree,
        score_delta=out_c.scores[-1] - out_p.scores[-1],
    )


def test_weight_timeline_steps_through_accepted_decisions_in_time_order() -> None:
    decisions = [
        decision("advance", 3, 0.25, at=3_000),
        decision("deploy", 2, 0.10, at=1_000),
        decision("set_weight", 3, 0.9, at=2_000, accepted=False),  # rejected: no move
    ]
    points = weight_timeline(state(), decisions, now=9_000)
    assert [(p["at"], p["weight"], p["action"]) for p in points] == [
        (1_000, 0.10, "deploy"),
        (3_000, 0.25, "advance"),
        (9_000, 0.25, "now"),
    ]


def test_without_a_candidate_the_share_now_is_zero() -> None:
    points = weight_timeline(state(candidate=None, weight=0.0), [], now=9_000)
    assert points == [{"at": 9_000, "weight": 0.0, "epoch": 3, "action": "now"}]


def test_deployment_view_shows_comparison_tests_and_decisions_as_json() -> None:
    st = state()
    a = RolloutAnalysis("fraud", "2", 2, 0.05, 0.2, 0.2, 0.01)  # a margin of 20 points
    for i in range(200):
        a.add_comparison(comparison(i, agree=i % 10 != 0), at=i)  # 10% disagreement
    decisions = [decision("deploy", 2, 0.1, at=1_000), decision("advance", 3, 0.25, at=2_000)]
    view = deployment_view(st, a, decisions, now=9_000)
    orjson.dumps(view)  # JSON-ready: no NaN, no models
    analysis = view["analysis"]
    assert analysis["samples"]["paired"] == 200
    assert analysis["metrics"]["disagreement"] == 0.1
    assert analysis["metrics"]["accuracy"] == {"production": None, "candidate": None}
    agreement = analysis["tests"]["agreement"]
    assert agreement["threshold"] > 0 and agreement["n"] == 200
    # 10% against a 20-point margin over 200 pairs: the "below the margin" test has rejected.
    assert agreement["rejected"] and agreement["progress"] >= 1.0
    assert not analysis["tests"]["disagreement"]["rejected"]
    assert analysis["criterion"]["kind"] == "agreement"
    assert [d["action"] for d in view["decisions"]] == ["advance", "deploy"]  # newest first
    assert view["decisions"][0]["to"]["weight"] == 0.25
    assert view["state"]["canary_weight"] == 0.25


def test_an_analysis_of_another_candidate_is_not_shown() -> None:
    a = RolloutAnalysis("fraud", "3", 2, 0.05, 0.02, 0.2, 0.01)
    assert deployment_view(state(), a, [], now=1)["analysis"] is None
