"""Routing by mode: a table of cases, plus the canary's stickiness and monotonicity."""

from __future__ import annotations

import pytest

from app.core.events import DeploymentState, Mode, Role
from app.core.routing import Assignment, assign, bucket
from tests.builders import state

# An entity whose canary bucket is below 0.5 and one above, found once, kept fixed.
LOW = next(f"e{i}" for i in range(1000) if bucket("fraud", f"e{i}", "2") < 0.05)
HIGH = next(f"e{i}" for i in range(1000) if bucket("fraud", f"e{i}", "2") > 0.95)

CASES = [
    (
        "manual serves production, scores the candidate",
        state(Mode.MANUAL),
        LOW,
        Assignment(Role.PRODUCTION, True),
    ),
    (
        "manual at sample rate 0",
        state(Mode.MANUAL, rate=0.0),
        LOW,
        Assignment(Role.PRODUCTION, False),
    ),
    ("automatic serves production", state(Mode.AUTOMATIC), LOW, Assignment(Role.PRODUCTION, False)),
    (
        "canary without candidate",
        state(Mode.CANARY, None, 1.0),
        LOW,
        Assignment(Role.PRODUCTION, False),
    ),
    ("canary below weight", state(Mode.CANARY, weight=0.5), LOW, Assignment(Role.CANDIDATE, True)),
    (
        "canary above weight",
        state(Mode.CANARY, weight=0.5),
        HIGH,
        Assignment(Role.PRODUCTION, False),
    ),
    ("canary weight 0", state(Mode.CANARY, weight=0.0), LOW, Assignment(Role.PRODUCTION, False)),
    ("canary weight 1", state(Mode.CANARY, weight=1.0), HIGH, Assignment(Role.CANDIDATE, True)),
    (
        "canary unpaired",
        state(Mode.CANARY, weight=1.0, pairing=False),
        HIGH,
        Assignment(Role.CANDIDATE, False),
    ),
    ("shadow rate 1", state(Mode.SHADOW, rate=1.0), HIGH, Assignment(Role.PRODUCTION, True)),
    ("shadow rate 0", state(Mode.SHADOW, rate=0.0), HIGH, Assignment(Role.PRODUCTION, False)),
    (
        "shadow without candidate",
        state(Mode.SHADOW, None),
        HIGH,
        Assignment(Role.PRODUCTION, False),
    ),
]


@pytest.mark.parametrize(("name", "st", "entity", "expected"), CASES, ids=[c[0] for c in CASES])
def test_assignment_table(
    name: str, st: DeploymentState, entity: str, expected: Assignment
) -> None:
    assert assign(st, entity, request_id="r-1") == expected


def test_bucket_is_stable_and_uniform() -> None:
    assert bucket("fraud", "card-1", "2") == bucket("fraud", "card-1", "2")
    assert bucket("fraud", "card-1", "2") != bucket("fraud", "card-1", "3")
    values = [bucket("fraud", f"card-{i}", "2") for i in range(20_000)]
    assert all(0.0 <= v < 1.0 for v in values)
    for w in (0.05, 0.1, 0.25, 0.5):
        share = sum(v < w for v in values) / len(values)
        assert abs(share - w) < 0.015


@pytest.mark.parametrize("weights", [(0.05, 0.1, 0.25, 0.5, 1.0)])
def test_raising_the_weight_only_adds_entities(weights: tuple[float, ...]) -> None:
    entities = [f"card-{i}" for i in range(5000)]
    previous: set[str] = set()
    for w in weights:
        on_candidate = {
            e
            for e in entities
            if assign(state(Mode.CANARY, weight=w), e, "r").served_by is Role.CANDIDATE
        }
        assert previous <= on_candidate
        # Same weight, other requests of the same entity: the same model.
        again = {
            e
            for e in entities
            if assign(state(Mode.CANARY, weight=w), e, "r2").served_by is Role.CANDIDATE
        }
        assert again == on_candidate
        previous = on_candidate


def test_shadow_sampling_is_deterministic_per_request() -> None:
    st = state(Mode.SHADOW, rate=0.3)
    picks = [assign(st, "card", f"r-{i}").compare for i in range(10_000)]
    assert picks == [assign(st, "card", f"r-{i}").compare for i in range(10_000)]
    assert abs(sum(picks) / len(picks) - 0.3) < 0.02
