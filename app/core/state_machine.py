"""A deployment's state over time: where it starts, the decision each step publishes, and how
the controller's own decisions move it.

Pure: no I/O. Every step returns an ``Outcome``: the new state with epoch + 1 (``next_state``)
and its ``DecisionEvent``, or no state and a decision that leaves it as it was (``reject``,
``unchanged``). How an operator's command moves the state is ``app.core.command_steps``
(``apply``); here are the controller's verdicts on evidence (``controller_step``: one table
from a ``Verdict`` to the change it makes) and the watch's (``watch_step``).

A promotion of a candidate (by the controller, ``promote``, or ``set_mode automatic``) starts
the post-promotion watch when the policy's ``watch.window_s`` is positive: the state carries
a ``Watch`` naming the previous production (kept loaded, scored beside the new one) until the
window ends. Any other change of production, or a new rollout, ends the watch.
``watch_step`` applies the watch's own decisions (``app.core.watch``): roll back to the
previous production, or end the watch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from app.core.events import (
    ControlCommand,
    DecisionAction,
    DecisionEvent,
    DeploymentState,
    Evidence,
    Mode,
    ModelRef,
    Phase,
    StateSummary,
    Watch,
)
from app.core.manifest import DeploymentSpec
from app.core.verdict import Verdict

CONTROLLER = "controller"
HISTORY_LIMIT = 20  # earlier productions kept in the state (the rollback path)


def initial_state(spec: DeploymentSpec, production: ModelRef, now: int) -> DeploymentState:
    """Epoch 0: the version ``deployment.yaml`` names serves everything, nothing is rolling out."""
    return DeploymentState(
        deployment=spec.name,
        epoch=0,
        mode=Mode.MANUAL,
        phase=Phase.STABLE,
        production=production,
        policy=spec.policy,
        updated_at=now,
        reason=f"initial state from deployment.yaml (production {production.version})",
    )


@dataclass(frozen=True)
class Outcome:
    """``state`` is the new state when the command was accepted, else ``None``."""

    state: DeploymentState | None
    decision: DecisionEvent

    @property
    def accepted(self) -> bool:
        return self.state is not None


def summary(state: DeploymentState) -> StateSummary:
    return StateSummary(mode=state.mode, phase=state.phase, weight=state.canary_weight)


def reject(
    state: DeploymentState,
    reason: str,
    now: int,
    *,
    action: DecisionAction,
    command_id: str | None,
    decided_by: str = CONTROLLER,
) -> Outcome:
    """A rejection: the state and its epoch stay as they were."""
    return unchanged(
        state,
        reason,
        now,
        action=action,
        command_id=command_id,
        decided_by=decided_by,
        accepted=False,
    )


def unchanged(
    state: DeploymentState,
    reason: str,
    now: int,
    *,
    action: DecisionAction,
    command_id: str | None,
    decided_by: str,
    accepted: bool,
    evidence: Evidence | None = None,
) -> Outcome:
    """A decision that leaves the state (and its epoch) as it is: a rejection, or a
    recommendation."""
    return Outcome(
        None,
        _event(
            state,
            state,
            action,
            reason,
            now,
            command_id=command_id,
            decided_by=decided_by,
            accepted=accepted,
            evidence=evidence,
        ),
    )


def reject_command(
    state: DeploymentState, command: ControlCommand, reason: str, now: int
) -> Outcome:
    return reject(
        state,
        reason,
        now,
        action=DecisionAction(command.action.value),
        command_id=command.command_id,
        decided_by=command.issued_by,
    )


def decision(
    old: DeploymentState,
    new: DeploymentState,
    action: DecisionAction,
    reason: str,
    now: int,
    command: ControlCommand | None = None,
    evidence: Evidence | None = None,
) -> DecisionEvent:
    return _event(
        old,
        new,
        action,
        reason,
        now,
        command_id=command.command_id if command else None,
        decided_by=command.issued_by if command else CONTROLLER,
        accepted=True,
        evidence=evidence,
    )


def _event(
    old: DeploymentState,
    new: DeploymentState,
    action: DecisionAction,
    reason: str,
    now: int,
    *,
    command_id: str | None,
    decided_by: str,
    accepted: bool,
    evidence: Evidence | None,
) -> DecisionEvent:
    """The ``DecisionEvent`` of a step from ``old`` to ``new`` (the same state: unchanged)."""
    return DecisionEvent(
        deployment=new.deployment,
        epoch=new.epoch,
        action=action,
        command_id=command_id,
        accepted=accepted,
        reason=reason,
        decided_by=decided_by,
        from_=summary(old),
        to=summary(new),
        evidence=evidence or Evidence(),
        at=now,
    )


def promotion_changes(state: DeploymentState) -> dict[str, object]:
    """The changes that make the state's candidate production (the old one to ``history``)."""
    if state.candidate is None:
        raise ValueError("no candidate to promote")
    return {
        "phase": Phase.STABLE,
        "production": state.candidate,
        "candidate": None,
        "canary_weight": 0.0,
        "history": pushed_history(state),
    }


def pushed_history(state: DeploymentState) -> list[ModelRef]:
    """History with the current production added, the oldest dropped past the limit."""
    return [*state.history, state.production][-HISTORY_LIMIT:]


def _advance(state: DeploymentState, next_weight: float | None) -> dict[str, object]:
    if next_weight is None:
        raise ValueError("advance needs a next weight")
    return {"canary_weight": next_weight}


def _promoted(state: DeploymentState, _: float | None) -> dict[str, object]:
    return promotion_changes(state)


def _retired(state: DeploymentState, _: float | None) -> dict[str, object]:
    return {"phase": Phase.STABLE, "candidate": None, "canary_weight": 0.0}


def _awaiting(state: DeploymentState, _: float | None) -> dict[str, object]:
    return {"phase": Phase.AWAITING_APPROVAL}


# The one table from a verdict to the change it makes (verdicts that change no state are not
# here: they are published as they are).
_VERDICT_STEPS: dict[Verdict, Callable[[DeploymentState, float | None], dict[str, object]]] = {
    Verdict.ADVANCE: _advance,
    Verdict.PROMOTE: _promoted,
    Verdict.ROLLBACK: _retired,
    Verdict.RETIRE: _retired,
    Verdict.AWAIT_APPROVAL: _awaiting,
}


def controller_step(
    state: DeploymentState,
    verdict: Verdict,
    reason: str,
    now: int,
    evidence: Evidence,
    next_weight: float | None = None,
) -> Outcome:
    """A decision the controller takes on evidence (``app.core.promotion``): ``advance`` (to
    ``next_weight``), ``promote``, ``rollback`` / ``retire`` (the candidate leaves; production
    never changed), ``await_approval``; or a recommendation, which changes no state."""
    action = verdict.action  # raises for HOLD: a hold is not a decision
    if not verdict.changes_state:
        return unchanged(
            state,
            reason,
            now,
            action=action,
            command_id=None,
            decided_by=CONTROLLER,
            accepted=True,
            evidence=evidence,
        )
    if state.candidate is None:
        raise ValueError(f"{action} needs a candidate")
    changes = _VERDICT_STEPS[verdict](state, next_weight)
    new = next_state(state, changes, now, reason)
    return Outcome(new, decision(state, new, action, reason, now, evidence=evidence))


def next_state(
    state: DeploymentState, changes: dict[str, object], now: int, reason: str
) -> DeploymentState:
    """The state after ``changes`` (epoch + 1), with its watch started or ended: a candidate
    promoted starts one (when the policy watches); any other change of production, or a new
    candidate, ends the one in progress."""
    new = state.model_copy(
        update={**changes, "epoch": state.epoch + 1, "updated_at": now, "reason": reason}
    )
    promoted = state.candidate is not None and new.production == state.candidate
    window_ms = new.policy.watch.window_s * 1000
    if promoted and new.candidate is None and window_ms > 0:
        watch: Watch | None = Watch(
            previous=state.production, epoch=new.epoch, started_at=now, until=now + window_ms
        )
    elif new.production != state.production or new.candidate is not None:
        watch = None
    else:
        watch = state.watch
    # Re-validate: model_copy does not, and a transition must never build a bad state.
    return DeploymentState.model_validate({**new.model_dump(), "watch": watch})


def watch_step(
    state: DeploymentState, rollback: bool, reason: str, now: int, evidence: Evidence
) -> Outcome:
    """The watch's decision: ``rollback`` restores the previous production (``rollback``);
    otherwise the watch ends and production stays (``watch_ended``)."""
    watch = state.watch
    if watch is None:
        raise ValueError(f"{state.deployment} is not being watched")
    if rollback:
        history = list(state.history)
        if history and history[-1] == watch.previous:
            history.pop()
        changes: dict[str, object] = {
            "phase": Phase.STABLE,
            "production": watch.previous,
            "candidate": None,
            "canary_weight": 0.0,
            "history": history,
            "watch": None,
        }
        action = DecisionAction.ROLLBACK
    else:
        changes = {"watch": None}
        action = DecisionAction.WATCH_ENDED
    new = DeploymentState.model_validate(
        state.model_copy(
            update={**changes, "epoch": state.epoch + 1, "updated_at": now, "reason": reason}
        ).model_dump()
    )
    return Outcome(new, decision(state, new, action, reason, now, evidence=evidence))
