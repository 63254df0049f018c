"""How each operator command moves a deployment's state (``apply``).

Pure: no I/O. ``apply`` takes the current state and a command (plus, for ``deploy``, the
candidate's reference, already validated by the caller against the model store) and returns
an ``Outcome`` (``app.core.state_machine``): the new state with epoch + 1, or a rejection
that leaves the state as it was.

Semantics (docs/contracts.md, the control commands):

- ``deploy V --mode M``: only when no candidate is in flight and V is not production.
  automatic: V becomes production at once. manual: V is loaded and waits for ``promote``
  (phase ``awaiting_approval``). canary: V serves ``weight`` (default: the policy's first
  step). shadow: V scores ``sample_rate`` of requests (default 1.0) for comparison only.
- ``promote``: the candidate becomes production; the old production goes to ``history``.
- ``rollback``: with a candidate in flight, retire it (production never changed); without
  one, restore the previous production from ``history``.
- ``abort``: retire the candidate.
- ``pause`` / ``resume``: hold / continue a progressing rollout (traffic stays at its weight).
- ``set_weight W``: canary only. ``set_mode M``: switch the running rollout's mode.

A promotion (``promote``, or ``set_mode automatic``) starts the post-promotion watch as
``state_machine.next_state`` says.
"""

from __future__ import annotations

from pydantic import ValidationError

from app.core.events import (
    Action,
    ControlCommand,
    DecisionAction,
    DeploymentState,
    Mode,
    ModelRef,
    Phase,
)
from app.core.policy import Policy
from app.core.state_machine import (
    Outcome,
    decision,
    next_state,
    promotion_changes,
    pushed_history,
    reject_command,
)


class Rejected(Exception):
    """A command that cannot apply to the current state; the message says why."""


def apply(
    state: DeploymentState,
    command: ControlCommand,
    now: int,
    candidate: ModelRef | None = None,
    default_policy: Policy | None = None,
) -> Outcome:
    """Apply ``command`` to ``state``. ``candidate`` is the validated reference of
    ``command.version`` for ``deploy`` (the caller checked artifact, signature and smoke run).
    A ``deploy`` starts from ``default_policy`` (the deployment's, from ``deployment.yaml``)
    plus the command's overrides, so one rollout's overrides never leak into the next."""
    try:
        if command.deployment != state.deployment:
            raise Rejected(f"command is for {command.deployment!r}, state is {state.deployment!r}")
        base = state
        if command.action is Action.DEPLOY and default_policy is not None:
            base = state.model_copy(update={"policy": default_policy})
        changes, reason = _TRANSITIONS[command.action](base, command, candidate)
        new = next_state(state, changes, now, reason)
    except Rejected as exc:
        return reject_command(state, command, str(exc), now)
    return Outcome(
        new, decision(state, new, DecisionAction(command.action.value), reason, now, command)
    )


_Changes = tuple[dict[str, object], str]


def _deploy(state: DeploymentState, cmd: ControlCommand, ref: ModelRef | None) -> _Changes:
    if cmd.version is None or cmd.mode is None:
        raise Rejected("deploy needs a version and a mode")
    if ref is None or ref.version != cmd.version:
        raise Rejected(f"version {cmd.version} was not validated")
    if state.candidate is not None:
        raise Rejected(
            f"version {state.candidate.version} is already rolling out ({state.mode}, "
            f"{state.phase}); promote, abort or roll it back first"
        )
    if ref.version == state.production.version:
        raise Rejected(f"version {ref.version} is already production")
    policy = _policy(state.policy, cmd)
    if cmd.mode is Mode.AUTOMATIC:
        return {
            "mode": Mode.AUTOMATIC,
            "phase": Phase.STABLE,
            "production": ref,
            "candidate": None,
            "canary_weight": 0.0,
            "history": pushed_history(state),
            "policy": policy,
        }, f"automatic: version {ref.version} is production after validation"
    changes: dict[str, object] = {"mode": cmd.mode, "candidate": ref, "policy": policy}
    if cmd.mode is Mode.MANUAL:
        changes |= {"phase": Phase.AWAITING_APPROVAL, "canary_weight": 0.0}
        return changes, f"manual: version {ref.version} loaded, waiting for promote"
    if cmd.mode is Mode.CANARY:
        weight = cmd.weight if cmd.weight is not None else policy.canary_steps[0]
        changes |= {"phase": Phase.PROGRESSING, "canary_weight": weight}
        return changes, f"canary: version {ref.version} serves {weight:.0%} of entities"
    rate = cmd.sample_rate if cmd.sample_rate is not None else 1.0
    changes |= {"phase": Phase.PROGRESSING, "canary_weight": 0.0, "shadow_sample_rate": rate}
    return changes, f"shadow: version {ref.version} scores {rate:.0%} of requests"


def _promote(state: DeploymentState, cmd: ControlCommand, _: ModelRef | None) -> _Changes:
    return _promotion(state)


def _promotion(state: DeploymentState) -> _Changes:
    candidate = _candidate(state, "promote")
    return promotion_changes(state), (
        f"version {candidate.version} promoted to production (was {state.production.version})"
    )


def _rollback(state: DeploymentState, cmd: ControlCommand, _: ModelRef | None) -> _Changes:
    if state.candidate is not None:
        return {
            "phase": Phase.STABLE,
            "candidate": None,
            "canary_weight": 0.0,
        }, f"rolled back: candidate {state.candidate.version} retired, " + (
            f"{state.production.version} serves everything"
        )
    if not state.history:
        raise Rejected("nothing to roll back to: no earlier production")
    previous = state.history[-1]
    return (
        {
            "phase": Phase.STABLE,
            "production": previous,
            "history": state.history[:-1],
        },
        f"rolled back: version {previous.version} is production again "
        f"(was {state.production.version})",
    )


def _abort(state: DeploymentState, cmd: ControlCommand, _: ModelRef | None) -> _Changes:
    candidate = _candidate(state, "abort")
    return {
        "phase": Phase.STABLE,
        "candidate": None,
        "canary_weight": 0.0,
    }, f"aborted: candidate {candidate.version} retired"


def _pause(state: DeploymentState, cmd: ControlCommand, _: ModelRef | None) -> _Changes:
    _candidate(state, "pause")
    if state.phase is not Phase.PROGRESSING:
        raise Rejected(f"cannot pause a rollout that is {state.phase}")
    return {"phase": Phase.PAUSED}, f"paused at weight {state.canary_weight:.0%}"


def _resume(state: DeploymentState, cmd: ControlCommand, _: ModelRef | None) -> _Changes:
    _candidate(state, "resume")
    if state.phase is not Phase.PAUSED:
        raise Rejected(f"cannot resume a rollout that is {state.phase}, not paused")
    return {"phase": Phase.PROGRESSING}, "resumed"


def _set_weight(state: DeploymentState, cmd: ControlCommand, _: ModelRef | None) -> _Changes:
    _candidate(state, "set_weight")
    if state.mode is not Mode.CANARY:
        raise Rejected(f"set_weight applies to canary rollouts; this one is {state.mode}")
    if cmd.weight is None:
        raise Rejected("set_weight needs a weight in [0, 1]")
    return {"canary_weight": cmd.weight}, f"canary weight set to {cmd.weight:.0%}"


def _set_mode(state: DeploymentState, cmd: ControlCommand, _: ModelRef | None) -> _Changes:
    if cmd.mode is None:
        raise Rejected("set_mode needs a mode")
    if cmd.mode is state.mode:
        raise Rejected(f"already in {cmd.mode} mode")
    if state.candidate is None:
        return {"mode": cmd.mode}, f"mode set to {cmd.mode} for the next rollout"
    if cmd.mode is Mode.AUTOMATIC:
        changes, _reason = _promotion(state)
        return changes | {"mode": Mode.AUTOMATIC}, (
            f"automatic: candidate {state.candidate.version} promoted"
        )
    if cmd.mode is Mode.MANUAL:
        return {
            "mode": Mode.MANUAL,
            "phase": Phase.AWAITING_APPROVAL,
            "canary_weight": 0.0,
        }, f"manual: candidate {state.candidate.version} waits for promote"
    if cmd.mode is Mode.CANARY:
        weight = state.policy.canary_steps[0]
        return {
            "mode": Mode.CANARY,
            "phase": Phase.PROGRESSING,
            "canary_weight": weight,
        }, f"canary: candidate {state.candidate.version} serves {weight:.0%} of entities"
    return {
        "mode": Mode.SHADOW,
        "phase": Phase.PROGRESSING,
        "canary_weight": 0.0,
    }, f"shadow: candidate {state.candidate.version} scores {state.shadow_sample_rate:.0%}"


def _candidate(state: DeploymentState, action: str) -> ModelRef:
    if state.candidate is None:
        raise Rejected(f"no candidate to {action}")
    return state.candidate


def _policy(current: Policy, cmd: ControlCommand) -> Policy:
    if not cmd.policy:
        return current
    try:
        return Policy.model_validate({**current.model_dump(), **cmd.policy})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise Rejected(f"invalid policy: {where}: {err['msg']}") from None


_TRANSITIONS = {
    Action.DEPLOY: _deploy,
    Action.PROMOTE: _promote,
    Action.ROLLBACK: _rollback,
    Action.ABORT: _abort,
    Action.PAUSE: _pause,
    Action.RESUME: _resume,
    Action.SET_WEIGHT: _set_weight,
    Action.SET_MODE: _set_mode,
}
