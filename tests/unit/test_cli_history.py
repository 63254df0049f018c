"""``rollout history``'s durations and ``rollout explain``'s choice of decision (pure parts)."""

from __future__ import annotations

import pytest

from app.cli.history import decision_at, decisions_of, parse_duration
from app.core.events import DecisionEvent, encode


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("15m", 900), ("2h", 7200), ("7d", 604800), ("1h30m", 5400),
     ("1w", 604800), ("0.5h", 1800)],
)  # fmt: skip
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "yesterday", "5x", "-5m", "m", "1h 30m"])
def test_not_durations(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def decision(epoch: int, accepted: bool, at: int, deployment: str = "fraud") -> DecisionEvent:
    return DecisionEvent(
        deployment=deployment,
        epoch=epoch,
        action="promote",
        command_id=None,
        accepted=accepted,
        reason="r",
        decided_by="controller",
        at=at,
    )


def test_explain_picks_the_decision_that_made_the_epoch() -> None:
    made = decision(3, True, at=10)
    later_rejection = decision(3, False, at=20)
    other = decision(3, True, at=15, deployment="churn")
    records = [encode(later_rejection), None, b"not json", encode(other), encode(made)]
    mine = decisions_of("fraud", records)
    assert mine == [made, later_rejection]  # oldest first; tombstones, junk, others left out
    assert decision_at(mine, 3) == made
    assert decision_at([later_rejection], 3) == later_rejection
    assert decision_at(mine, 4) is None
