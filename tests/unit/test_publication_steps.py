"""A published version's life as tables (``app.core.publication``): what a validated version
does per ``on_publish`` and the state it meets, and how the queue drains when a rollout ends."""

from __future__ import annotations

from typing import Any

import pytest

from app.core.events import (
    ArtifactRef,
    DecisionAction,
    DeploymentState,
    Mode,
    ModelPublished,
    Phase,
    QueuedVersion,
    decode,
    encode,
)
from app.core.policy import InFlight, OnPublish, Policy, PublishMode
from app.core.publication import ON_PUBLISH, dequeue, roll_out, where_exists
from tests.builders import V1, V2, V3, model_ref

V4 = model_ref("4")
STABLE = DeploymentState(
    deployment="fraud", epoch=4, mode=Mode.MANUAL, phase=Phase.STABLE, production=V1
)
CANARY = STABLE.model_copy(
    update={"mode": Mode.CANARY, "phase": Phase.PROGRESSING, "candidate": V2, "canary_weight": 0.1}
)


def queued(*refs: Any) -> list[QueuedVersion]:
    return [QueuedVersion(model=r, publish_id=f"p-{r.version}", queued_at=1) for r in refs]


def published(version: str) -> ModelPublished:
    return ModelPublished(
        publish_id=f"p-{version}",
        deployment="fraud",
        version=version,
        artifact=ArtifactRef(sha256="a" * 64, size=10, chunks=1),
        published_by="ci",
    )


def policy(**on_publish: Any) -> Policy:
    return Policy(on_publish=OnPublish(**on_publish))


CANARY_QUEUE = policy(mode=PublishMode.CANARY, weight=0.2, queue_limit=2)
CANARY_SUPERSEDE = policy(mode=PublishMode.CANARY, in_flight=InFlight.SUPERSEDE)

# (case, state, policy, version published, [(action, accepted, expected state fields)])
ROLL_OUT: list[tuple[str, DeploymentState, Policy, Any, list[tuple[str, bool, dict[str, Any]]]]] = [
    ("none: nothing more", STABLE, policy(), V3, []),
    (
        "idle, canary: starts at the on_publish weight",
        STABLE,
        CANARY_QUEUE,
        V3,
        [("deploy", True, {"candidate": V3, "mode": Mode.CANARY, "canary_weight": 0.2})],
    ),
    (
        "idle, canary without weight: the policy's first step",
        STABLE,
        policy(mode=PublishMode.CANARY),
        V3,
        [("deploy", True, {"candidate": V3, "canary_weight": 0.05})],
    ),
    (
        "idle, shadow: its sample rate",
        STABLE,
        policy(mode=PublishMode.SHADOW, sample_rate=0.5),
        V3,
        [("deploy", True, {"candidate": V3, "mode": Mode.SHADOW, "shadow_sample_rate": 0.5})],
    ),
    (
        "idle, automatic: production at once",
        STABLE,
        policy(mode=PublishMode.AUTOMATIC),
        V3,
        [("deploy", True, {"production": V3, "candidate": None, "history": [V1]})],
    ),
    (
        "idle, manual: waits for promote",
        STABLE,
        policy(mode=PublishMode.MANUAL),
        V3,
        [("deploy", True, {"candidate": V3, "phase": Phase.AWAITING_APPROVAL})],
    ),
    (
        "in flight, queue: appended",
        CANARY,
        CANARY_QUEUE,
        V3,
        [("queue", True, {"candidate": V2, "queue": queued(V3)})],
    ),
    (
        "in flight, queue: behind the ones waiting",
        CANARY.model_copy(update={"queue": queued(V3)}),
        CANARY_QUEUE,
        V4,
        [("queue", True, {"candidate": V2, "queue": queued(V3, V4)})],
    ),
    (
        "in flight, queue full: rejected, state unchanged",
        CANARY.model_copy(update={"queue": queued(V3, V4)}),
        CANARY_QUEUE,
        model_ref("5"),
        [("queue", False, {})],
    ),
    (
        "idle but versions wait: queued behind them (FIFO)",
        STABLE.model_copy(update={"queue": queued(V3)}),
        CANARY_QUEUE,
        V4,
        [("queue", True, {"candidate": None, "queue": queued(V3, V4)})],
    ),
    (
        "in flight, supersede: the candidate retired, the new one starts",
        CANARY,
        CANARY_SUPERSEDE,
        V3,
        [
            ("supersede", True, {"candidate": None, "phase": Phase.STABLE}),
            ("deploy", True, {"candidate": V3, "canary_weight": 0.05}),
        ],
    ),
]


@pytest.mark.parametrize(
    ("state", "pol", "ref", "steps"), [c[1:] for c in ROLL_OUT], ids=[c[0] for c in ROLL_OUT]
)
def test_roll_out(
    state: DeploymentState,
    pol: Policy,
    ref: Any,
    steps: list[tuple[str, bool, dict[str, Any]]],
) -> None:
    outcomes = roll_out(state, ref, published(ref.version), pol, now=1000)
    assert [(o.decision.action, o.decision.accepted) for o in outcomes] == [
        (DecisionAction(a), ok) for a, ok, _ in steps
    ]
    epoch = state.epoch
    for outcome, (_, accepted, fields) in zip(outcomes, steps, strict=True):
        d = outcome.decision
        assert d.command_id == f"p-{ref.version}" and d.decided_by == ON_PUBLISH
        if not accepted:
            assert outcome.state is None and d.epoch == epoch and "queue full" in d.reason
            continue
        assert outcome.state is not None and outcome.state.epoch == epoch + 1 == d.epoch
        epoch = outcome.state.epoch
        for name, value in fields.items():
            got = getattr(outcome.state, name)
            if name == "queue":
                got = [(q.model, q.publish_id) for q in got]
                value = [(q.model, q.publish_id) for q in value]
            assert got == value, name


def test_supersede_says_what_was_retired_for_what() -> None:
    retired, started = roll_out(CANARY, V3, published("3"), CANARY_SUPERSEDE, now=1)
    assert "candidate 2 retired for version 3" in retired.decision.reason
    assert started.state is not None and started.state.policy == CANARY_SUPERSEDE


DEQUEUE: list[tuple[str, DeploymentState, Policy, list[tuple[str, bool]], list[str]]] = [
    (
        "in flight: nothing",
        CANARY.model_copy(update={"queue": queued(V3)}),
        CANARY_QUEUE,
        [],
        ["3"],
    ),
    ("idle, empty queue: nothing", STABLE, CANARY_QUEUE, [], []),
    (
        "ended: the first leaves the queue and starts",
        STABLE.model_copy(update={"queue": queued(V3, V4)}),
        CANARY_QUEUE,
        [("dequeue", True), ("deploy", True)],
        ["4"],
    ),
    (
        "the first cannot start (already production): it leaves, saying why",
        STABLE.model_copy(update={"queue": queued(V1, V3)}),
        CANARY_QUEUE,
        [("dequeue", True), ("deploy", False)],
        ["3"],
    ),
    (
        "on_publish turned none: it leaves without a rollout",
        STABLE.model_copy(update={"queue": queued(V3)}),
        policy(),
        [("dequeue", True), ("deploy", False)],
        [],
    ),
]


@pytest.mark.parametrize(
    ("state", "pol", "steps", "left"), [c[1:] for c in DEQUEUE], ids=[c[0] for c in DEQUEUE]
)
def test_dequeue(
    state: DeploymentState, pol: Policy, steps: list[tuple[str, bool]], left: list[str]
) -> None:
    outcomes = dequeue(state, pol, now=5)
    assert [(o.decision.action, o.decision.accepted) for o in outcomes] == [
        (DecisionAction(a), ok) for a, ok in steps
    ]
    if not outcomes:
        return
    taken = outcomes[0].state
    assert taken is not None and [q.model.version for q in taken.queue] == left
    assert outcomes[0].decision.command_id == state.queue[0].publish_id
    if outcomes[1].accepted:
        assert outcomes[1].state is not None
        assert outcomes[1].state.candidate == state.queue[0].model
        assert outcomes[1].state.epoch == state.epoch + 2


@pytest.mark.parametrize(
    ("state", "version", "where"),
    [
        (CANARY, "1", "production"),
        (CANARY, "2", "candidate"),
        (STABLE.model_copy(update={"production": V2, "history": [V1]}), "1", "production before"),
        (CANARY.model_copy(update={"queue": queued(V3)}), "3", "queued"),
        (CANARY, "3", None),
    ],
)
def test_where_a_version_exists(state: DeploymentState, version: str, where: str | None) -> None:
    found = where_exists(state, version)
    assert (found is None) if where is None else (found is not None and where in found)


def test_the_queue_and_on_publish_are_unwritten_while_default() -> None:
    """States and policies without them read as before they existed (and by old readers)."""
    assert b"queue" not in encode(STABLE) and b"on_publish" not in encode(STABLE)
    busy = CANARY.model_copy(update={"queue": queued(V3), "policy": CANARY_QUEUE})
    wire = encode(busy)
    assert b'"queue"' in wire and b'"on_publish"' in wire
    assert decode(DeploymentState, wire) == busy


@pytest.mark.parametrize(
    "bad",
    [{"weight": 0.0}, {"weight": 1.5}, {"sample_rate": 0.0}, {"queue_limit": 0}, {"mode": "x"}],
)
def test_on_publish_rejects_bad_fields(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        OnPublish.model_validate(bad)
