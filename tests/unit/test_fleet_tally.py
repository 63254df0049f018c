"""The fleet's tally: each version's fate from the states and decisions the controller wrote,
judged against its measured quality; lost and duplicated requests; the goals."""

from __future__ import annotations

import pytest

from app.core.events import DecisionAction, DecisionEvent, Evidence, Mode
from app.harness.fleet_tally import (
    Bands,
    Outcome,
    Published,
    goals,
    outcomes,
    percentile,
    request_tally,
    summarize,
)
from tests.builders import model_ref, state

BANDS = Bands(margin=0.03)
INITIAL = {"fraud": ("1", 0.80)}


def published(version: str, kind: str = "equal", quality: float | None = 0.80) -> Published:
    return Published("fraud", version, f"pub-{version}", "canary", kind, quality, 1_000)


def decision(
    action: DecisionAction,
    epoch: int,
    accepted: bool = True,
    command_id: str | None = None,
    reason: str = "",
) -> DecisionEvent:
    return DecisionEvent(
        deployment="fraud",
        epoch=epoch,
        action=action,
        command_id=command_id,
        accepted=accepted,
        reason=reason,
        decided_by="controller",
        evidence=Evidence(),
        at=5_000,
    )


def at(epoch: int, production: str, candidate: str | None) -> object:
    return state(
        Mode.CANARY,
        model_ref(candidate) if candidate else None,
        production=model_ref(production),
        epoch=epoch,
        updated_at=1_000 + 1_000 * epoch,
    )


@pytest.mark.parametrize(
    ("delta", "truth"),
    [
        (0.05, "better"),
        (0.011, "better"),
        (0.01, "equal"),
        (-0.01, "equal"),
        (-0.02, "worse_within"),
        (-0.03, "worse_within"),
        (-0.031, "worse_beyond"),
        (-0.149, "worse_beyond"),
        (-0.15, "much_worse"),
    ],
)
def test_bands_classify_the_measured_difference(delta: float, truth: str) -> None:
    assert BANDS.classify(delta) == truth


@pytest.mark.parametrize(
    ("quality", "states", "decisions", "outcome", "truth", "served"),
    [
        # candidate, then production: promoted; judged against the production it replaced
        (0.85, [("1", None), ("1", "2"), ("2", None)], [], Outcome.PROMOTED, "better", True),
        # candidate, then gone with production unchanged: rolled back
        (0.60, [("1", None), ("1", "2"), ("1", None)], [], Outcome.ROLLED_BACK, "much_worse", True),
        # promoted, then production restored to the one it replaced (the watch): rolled back
        (
            0.75,
            [("1", None), ("1", "2"), ("2", None), ("1", None)],
            [],
            Outcome.ROLLED_BACK,
            "worse_beyond",
            True,
        ),
        # automatic: production directly
        (0.80, [("1", None), ("2", None)], [], Outcome.PROMOTED, "equal", True),
        # a candidate replaced by another under a supersede decision at that epoch
        (
            0.80,
            [("1", None), ("1", "2"), ("1", "3")],
            [decision(DecisionAction.SUPERSEDE, 2)],
            Outcome.SUPERSEDED,
            "equal",
            True,
        ),
        # refused at validation, named by its publish id: never served
        (
            None,
            [("1", None)],
            [decision(DecisionAction.VALIDATE, 0, accepted=False, command_id="pub-2")],
            Outcome.REJECTED,
            "broken",
            False,
        ),
        # refused by a full queue, named by its publish id
        (
            0.80,
            [("1", None), ("1", "3")],
            [decision(DecisionAction.QUEUE, 1, accepted=False, command_id="pub-2")],
            Outcome.REJECTED,
            "equal",
            False,
        ),
        # nothing happened yet
        (0.80, [("1", None)], [], Outcome.IN_FLIGHT, "equal", False),
    ],
)
def test_outcomes_follow_states_and_decisions(
    quality: float | None,
    states: list[tuple[str, str | None]],
    decisions: list[DecisionEvent],
    outcome: Outcome,
    truth: str,
    served: bool,
) -> None:
    kind = "broken" if quality is None else "equal"
    versions = [published("2", kind, quality), published("3", "equal", 0.80)]
    seen = [at(epoch, p, c) for epoch, (p, c) in enumerate(states)]
    fate = outcomes(versions, seen, decisions, BANDS, INITIAL)[0]  # type: ignore[arg-type]
    assert (fate.outcome, fate.truth, fate.served) == (outcome, truth, served)
    assert (fate.decided_ms is None) == (outcome is Outcome.IN_FLIGHT)


def test_supersede_retires_the_candidate_not_the_version_that_named_it() -> None:
    # the controller names a supersede by the new publication's id, retires the candidate
    # (epoch 2: no candidate), then starts the new version (epoch 3)
    versions = [published("2", quality=0.80), published("3", quality=0.85)]
    seen = [at(0, "1", None), at(1, "1", "2"), at(2, "1", None), at(3, "1", "3"), at(4, "3", None)]
    decisions = [decision(DecisionAction.SUPERSEDE, 2, command_id="pub-3")]
    two, three = outcomes(versions, seen, decisions, BANDS, INITIAL)  # type: ignore[arg-type]
    assert (two.outcome, three.outcome) == (Outcome.SUPERSEDED, Outcome.PROMOTED)
    assert three.truth == "better"


def test_a_version_refused_once_that_serves_later_is_not_rejected() -> None:
    versions = [published("2", quality=0.85)]
    seen = [at(0, "1", None), at(1, "1", "2"), at(2, "2", None)]
    decisions = [decision(DecisionAction.DEPLOY, 0, accepted=False, command_id="pub-2")]
    fate = outcomes(versions, seen, decisions, BANDS, INITIAL)[0]  # type: ignore[arg-type]
    assert fate.outcome is Outcome.PROMOTED


def test_a_stale_state_is_ignored() -> None:
    versions = [published("2", quality=0.85)]
    seen = [at(0, "1", None), at(2, "2", None), at(1, "1", "2")]
    fate = outcomes(versions, seen, [], BANDS, INITIAL)[0]  # type: ignore[arg-type]
    assert fate.outcome is Outcome.PROMOTED


@pytest.mark.parametrize(
    ("sent", "predicted", "dead", "answered", "lost", "duplicated"),
    [
        (3, [0, 1, 2], [], 3, 0, 0),
        (3, [0, 2], [], 2, 1, 0),
        (3, [0, 1, 1, 2, 2, 2], [], 3, 0, 3),
        (3, [0, 1], [2], 3, 0, 0),
        (3, [0, 1, 2], [2], 3, 0, 1),
        (2, [0, 1, 7, -1], [9], 2, 0, 0),  # another run's outputs are ignored
        (0, [], [], 0, 0, 0),
    ],
)
def test_request_tally(
    sent: int, predicted: list[int], dead: list[int], answered: int, lost: int, duplicated: int
) -> None:
    t = request_tally(sent, predicted, dead)
    assert (t.answered, t.lost, t.duplicated) == (answered, lost, duplicated)


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([], 0.5, None),
        ([3.0], 0.95, 3.0),
        ([1.0, 2.0, 3.0, 4.0], 0.5, 2.0),
        ([*range(100)], 0.95, 94),
    ],
)
def test_percentile(values: list[float], q: float, expected: float | None) -> None:
    assert percentile(values, q) == expected


def test_summary_counts_false_promotions_and_good_rollbacks() -> None:
    versions = [
        published("2", quality=0.70),  # much worse, promoted: a false promotion
        published("3", quality=0.70),  # much worse, rolled back
        published("4", quality=0.80),  # equal, rolled back
        published("5", "broken", None),  # rejected, never served
    ]
    seen = [
        at(0, "1", None),
        at(1, "1", "2"),
        at(2, "2", None),
        at(3, "2", "3"),
        at(4, "2", None),
        at(5, "2", "4"),
        at(6, "2", None),
    ]
    decisions = [decision(DecisionAction.VALIDATE, 6, accepted=False, command_id="pub-5")]
    summary = summarize(outcomes(versions, seen, decisions, BANDS, INITIAL))  # type: ignore[arg-type]
    assert summary.bad == 1  # version 3 faced version 2 (0.70): equal, not worse
    assert (summary.false_promotions, summary.false_promotion_rate) == (1, 1.0)
    assert summary.good == 2 and summary.good_rolled_back == 2
    assert summary.invalid == summary.invalid_rejected_unserved == 1
    assert summary.outcomes["promoted"] == 1 and summary.outcomes["in_flight"] == 0


def test_each_fate_carries_the_reason_of_the_decision_that_settled_it() -> None:
    versions = [published("2", quality=0.85), published("3", quality=0.85)]
    seen = [at(0, "1", None), at(1, "1", "2"), at(2, "2", None)]
    decisions = [
        decision(DecisionAction.VALIDATE, 1, command_id="pub-2", reason="validated"),
        decision(DecisionAction.DEPLOY, 1, command_id="pub-2", reason="canary started"),
        decision(DecisionAction.PROMOTE, 2, reason="last step passed"),
        decision(DecisionAction.DEPLOY, 2, False, "pub-3", "replay gate refused: too few"),
    ]
    two, three = outcomes(versions, seen, decisions, BANDS, INITIAL)  # type: ignore[arg-type]
    assert (two.outcome, two.reason) == (Outcome.PROMOTED, "promote: last step passed")
    assert three.outcome is Outcome.REJECTED
    assert three.reason == "deploy: replay gate refused: too few"


def test_a_good_version_refused_counts_against_the_goal_as_a_rollback() -> None:
    versions = [published("2", quality=0.85), published("3", quality=0.85)]
    seen = [at(0, "1", None)]
    decisions = [decision(DecisionAction.DEPLOY, 0, False, f"pub-{v}") for v in ("2", "3")]
    summary = summarize(outcomes(versions, seen, decisions, BANDS, INITIAL))  # type: ignore[arg-type]
    assert (summary.good, summary.good_rolled_back, summary.good_rejected) == (2, 0, 2)
    requests = request_tally(0, [], [])
    goal = next(g for g in goals(summary, requests, 0.05) if "better or equal" in g.name)
    assert not goal.met and goal.value.startswith("2 of 2")
