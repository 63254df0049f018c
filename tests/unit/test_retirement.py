"""Which versions leave models.artifacts and when: those no state refers to, once they have
stayed so for the grace period (app/core/retirement.py); and what a read of the topic finds
of a deployment (app/core/artifacts.py Inventory)."""

from __future__ import annotations

import pytest

from app.core.artifacts import Inventory, chunk_key, manifest_key, spec_key, take_inventory
from app.core.events import DeploymentState, ModelRef
from app.core.retirement import RetirementClock, referenced
from tests.builders import model_ref, state

GRACE = 1_000


def _st(
    production: str,
    candidate: str | None = None,
    history: tuple[str, ...] = (),
    deployment: str = "fraud",
) -> DeploymentState:
    def ref(version: str) -> ModelRef:
        return model_ref(version, name=deployment)

    return state(candidate=ref(candidate) if candidate else None).model_copy(
        update={
            "deployment": deployment,
            "production": ref(production),
            "history": [ref(v) for v in history],
        }
    )


@pytest.mark.parametrize(
    ("st", "kept"),
    [
        (_st("1"), {"1"}),
        (_st("1", candidate="3"), {"1", "3"}),
        (_st("1", history=("0", "2")), {"1", "2"}),
    ],
    ids=["production", "candidate", "rollback-target-only-the-last"],
)
def test_a_state_keeps_what_workers_may_load(st: DeploymentState, kept: set[str]) -> None:
    assert referenced(st) == kept


def test_a_version_is_due_only_after_staying_unreferenced_for_the_grace() -> None:
    clock = RetirementClock(GRACE)
    st = _st("2", history=("1",))
    held = {"0", "1", "2", "5"}
    assert clock.due(st, held, 10_000) == []  # first seen unreferenced: the clock starts
    assert clock.due(st, held, 10_999) == []
    assert clock.due(st, held, 11_000) == ["0", "5"]
    # Version 5 is deployed again before it was retired: its clock stops, and restarts later.
    st5 = _st("2", candidate="5", history=("1",))
    assert clock.due(st5, held, 11_500) == ["0"]
    clock.retired("fraud", "0")
    assert clock.due(st, held - {"0"}, 12_000) == []
    assert clock.due(st, held - {"0"}, 13_000) == ["5"]


def test_other_deployments_clocks_are_their_own() -> None:
    clock = RetirementClock(GRACE)
    clock.due(_st("1"), {"1", "2"}, 0)
    assert clock.due(_st("1", deployment="iris"), {"1", "2"}, 5_000) == []  # first seen now
    assert clock.due(_st("1"), {"1", "2"}, 5_000) == ["2"]


def test_the_inventory_follows_records_and_tombstones_in_order() -> None:
    found = {"fraud": Inventory(), "fraud2": Inventory()}
    records: list[tuple[bytes, bool]] = [
        (spec_key("fraud"), True),
        (chunk_key("fraud", "1", 0), True),
        (chunk_key("fraud", "1", 1), True),
        (manifest_key("fraud", "1"), True),
        (chunk_key("fraud", "2", 0), True),
        (manifest_key("fraud", "2"), True),
        (manifest_key("fraud", "2"), False),  # retired: manifest first, then its chunks
        (chunk_key("fraud", "2", 0), False),
        (chunk_key("iris", "1", 0), True),  # not asked for
        (chunk_key("fraud2", "7", 0), True),
    ]
    for key, live in records:
        take_inventory(found, key, live)
    fraud = found["fraud"]
    assert fraud.spec and fraud.manifests == {"1"} and fraud.chunks["1"] == {0, 1}
    assert fraud.versions() == {"1"}
    assert found["fraud2"].versions() == {"7"} and not found["fraud2"].spec
