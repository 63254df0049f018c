"""The operator commands' steps (``core/command_steps.py`` ``apply``) as a table: (state,
command) → new state, or a rejection."""

from __future__ import annotations

from typing import Any

import pytest

from app.core.command_steps import apply
from app.core.events import Action, ControlCommand, DeploymentState, Mode, ModelRef, Phase
from app.core.policy import Policy
from tests.builders import V1, V2, V3

STABLE = DeploymentState(
    deployment="fraud", epoch=4, mode=Mode.MANUAL, phase=Phase.STABLE, production=V1
)
PROMOTED = STABLE.model_copy(update={"production": V2, "history": [V1]})
CANARY = STABLE.model_copy(
    update={"mode": Mode.CANARY, "phase": Phase.PROGRESSING, "candidate": V2, "canary_weight": 0.1}
)
PAUSED = CANARY.model_copy(update={"phase": Phase.PAUSED})
SHADOW = STABLE.model_copy(
    update={"mode": Mode.SHADOW, "phase": Phase.PROGRESSING, "candidate": V2}
)
MANUAL = STABLE.model_copy(update={"phase": Phase.AWAITING_APPROVAL, "candidate": V2})


def cmd(action: Action, **kw: Any) -> ControlCommand:
    return ControlCommand(
        command_id="c-1", deployment="fraud", action=action, issued_by="ops", **kw
    )


ACCEPTED: list[tuple[str, DeploymentState, ControlCommand, ModelRef | None, dict[str, Any]]] = [
    (
        "deploy canary: first policy step",
        STABLE,
        cmd(Action.DEPLOY, version="2", mode=Mode.CANARY),
        V2,
        {"mode": Mode.CANARY, "phase": Phase.PROGRESSING, "candidate": V2, "canary_weight": 0.05},
    ),
    (
        "deploy canary at a weight",
        STABLE,
        cmd(Action.DEPLOY, version="2", mode=Mode.CANARY, weight=0.3),
        V2,
        {"canary_weight": 0.3, "production": V1},
    ),
    (
        "deploy shadow sampled",
        STABLE,
        cmd(Action.DEPLOY, version="2", mode=Mode.SHADOW, sample_rate=0.25),
        V2,
        {"mode": Mode.SHADOW, "shadow_sample_rate": 0.25, "canary_weight": 0.0, "candidate": V2},
    ),
    (
        "deploy manual waits",
        STABLE,
        cmd(Action.DEPLOY, version="2", mode=Mode.MANUAL),
        V2,
        {"phase": Phase.AWAITING_APPROVAL, "candidate": V2, "production": V1},
    ),
    (
        "deploy automatic promotes",
        STABLE,
        cmd(Action.DEPLOY, version="2", mode=Mode.AUTOMATIC),
        V2,
        {"mode": Mode.AUTOMATIC, "production": V2, "candidate": None, "history": [V1]},
    ),
    (
        "deploy with policy override",
        STABLE,
        cmd(Action.DEPLOY, version="2", mode=Mode.CANARY, policy={"canary_steps": [0.2, 1.0]}),
        V2,
        {"canary_weight": 0.2, "policy": Policy(canary_steps=[0.2, 1.0])},
    ),
    (
        "promote canary",
        CANARY,
        cmd(Action.PROMOTE),
        None,
        {
            "production": V2,
            "candidate": None,
            "history": [V1],
            "canary_weight": 0.0,
            "phase": Phase.STABLE,
        },
    ),
    ("promote manual", MANUAL, cmd(Action.PROMOTE), None, {"production": V2, "candidate": None}),
    (
        "rollback mid-canary retires the candidate",
        CANARY,
        cmd(Action.ROLLBACK),
        None,
        {"production": V1, "candidate": None, "canary_weight": 0.0},
    ),
    (
        "rollback after promote restores",
        PROMOTED,
        cmd(Action.ROLLBACK),
        None,
        {"production": V1, "history": []},
    ),
    ("abort shadow", SHADOW, cmd(Action.ABORT), None, {"candidate": None, "phase": Phase.STABLE}),
    (
        "pause canary",
        CANARY,
        cmd(Action.PAUSE),
        None,
        {"phase": Phase.PAUSED, "canary_weight": 0.1},
    ),
    ("resume", PAUSED, cmd(Action.RESUME), None, {"phase": Phase.PROGRESSING}),
    ("set weight", CANARY, cmd(Action.SET_WEIGHT, weight=0.5), None, {"canary_weight": 0.5}),
    (
        "set weight 0 keeps the candidate",
        CANARY,
        cmd(Action.SET_WEIGHT, weight=0.0),
        None,
        {"canary_weight": 0.0, "candidate": V2},
    ),
    (
        "shadow to canary",
        SHADOW,
        cmd(Action.SET_MODE, mode=Mode.CANARY),
        None,
        {"mode": Mode.CANARY, "canary_weight": 0.05},
    ),
    (
        "canary to automatic promotes",
        CANARY,
        cmd(Action.SET_MODE, mode=Mode.AUTOMATIC),
        None,
        {"mode": Mode.AUTOMATIC, "production": V2, "candidate": None},
    ),
    (
        "mode without candidate",
        STABLE,
        cmd(Action.SET_MODE, mode=Mode.SHADOW),
        None,
        {"mode": Mode.SHADOW, "candidate": None},
    ),
]


@pytest.mark.parametrize(
    ("name", "state", "command", "ref", "expect"), ACCEPTED, ids=[c[0] for c in ACCEPTED]
)
def test_accepted_transitions(
    name: str,
    state: DeploymentState,
    command: ControlCommand,
    ref: ModelRef | None,
    expect: dict[str, Any],
) -> None:
    outcome = apply(state, command, now=99, candidate=ref)
    assert outcome.state is not None, outcome.decision.reason
    assert outcome.state.epoch == state.epoch + 1
    assert outcome.state.updated_at == 99
    for field, value in expect.items():
        assert getattr(outcome.state, field) == value, field
    d = outcome.decision
    assert d.accepted and d.command_id == "c-1" and d.decided_by == "ops"
    assert d.epoch == state.epoch + 1 and d.action == command.action.value
    assert d.to is not None and d.to.weight == outcome.state.canary_weight


REJECTED: list[tuple[str, DeploymentState, ControlCommand, ModelRef | None, str]] = [
    (
        "deploy while a candidate rolls out",
        CANARY,
        cmd(Action.DEPLOY, version="3", mode=Mode.CANARY),
        V3,
        "already rolling out",
    ),
    (
        "deploy production again",
        STABLE,
        cmd(Action.DEPLOY, version="1", mode=Mode.CANARY),
        V1,
        "already production",
    ),
    (
        "deploy unvalidated",
        STABLE,
        cmd(Action.DEPLOY, version="2", mode=Mode.CANARY),
        None,
        "not validated",
    ),
    ("deploy without mode", STABLE, cmd(Action.DEPLOY, version="2"), V2, "mode"),
    (
        "deploy with a bad policy",
        STABLE,
        cmd(Action.DEPLOY, version="2", mode=Mode.CANARY, policy={"canary_steps": [0.5, 0.2]}),
        V2,
        "invalid policy",
    ),
    (
        "deploy with an unknown policy field",
        STABLE,
        cmd(Action.DEPLOY, version="2", mode=Mode.CANARY, policy={"yolo": True}),
        V2,
        "invalid policy",
    ),
    ("promote without candidate", STABLE, cmd(Action.PROMOTE), None, "no candidate"),
    ("abort without candidate", STABLE, cmd(Action.ABORT), None, "no candidate"),
    ("rollback with no history", STABLE, cmd(Action.ROLLBACK), None, "nothing to roll back"),
    ("pause when stable", STABLE, cmd(Action.PAUSE), None, "no candidate"),
    ("pause twice", PAUSED, cmd(Action.PAUSE), None, "cannot pause"),
    ("resume when progressing", CANARY, cmd(Action.RESUME), None, "not paused"),
    ("set weight on shadow", SHADOW, cmd(Action.SET_WEIGHT, weight=0.5), None, "canary"),
    ("set weight without weight", CANARY, cmd(Action.SET_WEIGHT), None, "needs a weight"),
    ("set the same mode", CANARY, cmd(Action.SET_MODE, mode=Mode.CANARY), None, "already"),
]


@pytest.mark.parametrize(
    ("name", "state", "command", "ref", "reason"), REJECTED, ids=[c[0] for c in REJECTED]
)
def test_rejections_leave_the_state_and_epoch_unchanged(
    name: str, state: DeploymentState, command: ControlCommand, ref: ModelRef | None, reason: str
) -> None:
    outcome = apply(state, command, now=99, candidate=ref)
    assert outcome.state is None
    d = outcome.decision
    assert not d.accepted and reason in d.reason
    assert d.epoch == state.epoch and d.command_id == "c-1"
    assert d.from_ == d.to


def test_command_for_another_deployment_is_rejected() -> None:
    other = ControlCommand(command_id="x", deployment="spam", action=Action.PROMOTE)
    assert apply(CANARY, other, now=1).state is None


def test_a_deploy_starts_from_the_deployments_policy_not_the_last_rollouts() -> None:
    leaked = STABLE.model_copy(update={"policy": Policy(min_samples_per_step=7)})
    outcome = apply(
        leaked,
        cmd(Action.DEPLOY, version="2", mode=Mode.CANARY, policy={"alpha": 0.01}),
        now=1,
        candidate=V2,
        default_policy=Policy(),
    )
    assert outcome.state is not None
    assert outcome.state.policy == Policy(alpha=0.01)
