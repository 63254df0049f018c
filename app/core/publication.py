"""A published version's life, after the controller validated it: start its rollout, queue
it behind the one in flight, or supersede that one; and take the next from the queue when a
rollout ends. Pure: no I/O (``app.controller.publications`` reads ``models.published``,
fetches and validates the artifact, and publishes what these functions decide).

What happens follows the deployment's ``policy.on_publish`` (``app.core.policy.OnPublish``):

- ``mode`` ``none``: nothing more; the version is in the store for an operator's ``deploy``.
- Otherwise, with nothing in flight (no candidate, an empty queue), the version starts at
  once: a ``deploy`` decided by ``on_publish`` in that mode, at ``weight`` (canary) or
  ``sample_rate`` (shadow), from the deployment's policy, exactly as an operator's deploy.
- With a rollout in flight, ``in_flight`` decides: ``queue`` appends the version to the
  state's FIFO queue (``queue``; a full queue, ``queue_limit``, rejects it with the reason);
  ``supersede`` retires the candidate (``supersede``, saying by what) and starts the new one.
- When a rollout ends (promoted, rolled back, retired, aborted: no candidate any more) and
  versions wait, the first leaves the queue (``dequeue``) and starts.

Every step is a ``DecisionEvent`` whose ``command_id`` is the publication's ``publish_id``, so
whoever published the version can follow it; each state change is epoch + 1.
"""

from __future__ import annotations

from app.core.command_steps import apply
from app.core.events import (
    Action,
    ControlCommand,
    DecisionAction,
    DecisionEvent,
    DeploymentState,
    Mode,
    ModelPublished,
    ModelRef,
    Phase,
    QueuedVersion,
)
from app.core.policy import InFlight, OnPublish, Policy, PublishMode
from app.core.state_machine import (
    CONTROLLER,
    Outcome,
    decision,
    next_state,
    reject,
    unchanged,
)

ON_PUBLISH = "on_publish"  # decided_by of the steps the policy's on_publish takes


def where_exists(state: DeploymentState, version: str) -> str | None:
    """Where ``version`` already is in ``state`` (production, candidate, an earlier production,
    the queue), or None."""
    if state.production.version == version:
        return "it is production"
    if state.candidate is not None and state.candidate.version == version:
        return "it is the candidate in flight"
    if any(ref.version == version for ref in state.history):
        return "it was production before"
    if any(q.model.version == version for q in state.queue):
        return "it is queued"
    return None


def orphan(deployment: str, reason: str, now: int, publish_id: str | None, by: str) -> Outcome:
    """A refused publication for a deployment that has no state (unknown, or unreadable)."""
    return Outcome(
        None,
        DecisionEvent(
            deployment=deployment,
            epoch=-1,
            action=DecisionAction.PUBLISH,
            command_id=publish_id,
            accepted=False,
            reason=reason,
            decided_by=by,
            at=now,
        ),
    )


def answer(
    state: DeploymentState,
    action: DecisionAction,
    accepted: bool,
    reason: str,
    now: int,
    publish_id: str | None,
    by: str = CONTROLLER,
) -> Outcome:
    """A step that changes no state: a publication received or refused, validated or
    rejected, a full queue."""
    return unchanged(
        state, reason, now, action=action, command_id=publish_id, decided_by=by, accepted=accepted
    )


def received(state: DeploymentState, event: ModelPublished, now: int) -> Outcome:
    """The ``publish`` decision of a publication that passed the controller's checks."""
    art = event.artifact
    reason = (
        f"version {event.version} published by {event.published_by} (sha256 "
        f"{art.sha256[:12]}..., {art.size} bytes in {art.chunks} chunks)"
    )
    return answer(
        state, DecisionAction.PUBLISH, True, reason, now, event.publish_id, event.published_by
    )


def roll_out(
    state: DeploymentState,
    ref: ModelRef,
    event: ModelPublished,
    policy: Policy,
    now: int,
) -> list[Outcome]:
    """What a validated ``ref`` does per ``policy.on_publish``: nothing (``none``), start,
    queue (or be refused by a full queue), or supersede the candidate in flight and start."""
    on_publish = policy.on_publish
    if on_publish.mode is PublishMode.NONE:
        return []
    busy = state.candidate is not None or bool(state.queue)
    if not busy:
        return [start(state, ref, event.publish_id, policy, now)]
    if on_publish.in_flight is InFlight.SUPERSEDE:
        if state.candidate is None:  # only queued versions (from an earlier queue policy)
            return [start(state, ref, event.publish_id, policy, now)]
        retired = supersede(state, ref, event.publish_id, now)
        assert retired.state is not None
        return [retired, start(retired.state, ref, event.publish_id, policy, now)]
    return [enqueue(state, ref, event, on_publish, now)]


def start(
    state: DeploymentState, ref: ModelRef, publish_id: str, policy: Policy, now: int
) -> Outcome:
    """The rollout of ``ref`` per ``policy.on_publish``: a ``deploy`` decided by
    ``on_publish`` (rejected, with the state unchanged, when a deploy would be)."""
    on_publish = policy.on_publish
    if on_publish.mode is PublishMode.NONE:
        return reject(
            state,
            f"on_publish is none: version {ref.version} is not rolled out",
            now,
            action=DecisionAction.DEPLOY,
            command_id=publish_id,
            decided_by=ON_PUBLISH,
        )
    mode = Mode(on_publish.mode.value)
    command = ControlCommand(
        command_id=publish_id,
        deployment=state.deployment,
        action=Action.DEPLOY,
        version=ref.version,
        mode=mode,
        weight=on_publish.weight if mode is Mode.CANARY else None,
        sample_rate=on_publish.sample_rate if mode is Mode.SHADOW else None,
        issued_by=ON_PUBLISH,
        reason=f"published ({publish_id})",
        issued_at=now,
    )
    return apply(state, command, now, ref, policy)


def supersede(state: DeploymentState, ref: ModelRef, publish_id: str, now: int) -> Outcome:
    """The candidate in flight retired for ``ref`` (production never changed)."""
    candidate = state.candidate
    if candidate is None:
        raise ValueError("nothing in flight to supersede")
    reason = (
        f"superseded: candidate {candidate.version} retired for version {ref.version} "
        f"(publication {publish_id}); {state.production.version} serves everything"
    )
    changes: dict[str, object] = {"phase": Phase.STABLE, "candidate": None, "canary_weight": 0.0}
    new = next_state(state, changes, now, reason)
    return Outcome(new, _decided(state, new, DecisionAction.SUPERSEDE, reason, now, publish_id))


def enqueue(
    state: DeploymentState,
    ref: ModelRef,
    event: ModelPublished,
    on_publish: OnPublish,
    now: int,
) -> Outcome:
    """``ref`` at the end of the queue, or a rejection when the queue is full."""
    waiting = len(state.queue)
    if waiting >= on_publish.queue_limit:
        return answer(
            state,
            DecisionAction.QUEUE,
            False,
            f"queue full: {waiting} versions wait (queue_limit {on_publish.queue_limit}); "
            f"version {ref.version} is validated and in the store but not queued",
            now,
            event.publish_id,
            ON_PUBLISH,
        )
    entry = QueuedVersion(
        model=ref, publish_id=event.publish_id, published_by=event.published_by, queued_at=now
    )
    ahead = state.candidate.version if state.candidate is not None else "the queue"
    reason = (
        f"version {ref.version} queued behind {ahead} "
        f"(position {waiting + 1}, queue_limit {on_publish.queue_limit})"
    )
    new = next_state(state, {"queue": [*state.queue, entry]}, now, reason)
    return Outcome(new, _decided(state, new, DecisionAction.QUEUE, reason, now, event.publish_id))


def dequeue(state: DeploymentState, policy: Policy, now: int) -> list[Outcome]:
    """When no rollout is in flight and versions wait: the first leaves the queue
    (``dequeue``) and starts (or, if it cannot, the start's rejection says why and the next
    one waits for the next call). Nothing otherwise."""
    if state.candidate is not None or not state.queue:
        return []
    head, rest = state.queue[0], state.queue[1:]
    reason = (
        f"version {head.model.version} leaves the queue ({len(rest)} still wait): "
        f"the rollout in flight ended"
    )
    taken = next_state(state, {"queue": rest}, now, reason)
    out = Outcome(
        taken, _decided(state, taken, DecisionAction.DEQUEUE, reason, now, head.publish_id)
    )
    return [out, start(taken, head.model, head.publish_id, policy, now)]


def _decided(
    old: DeploymentState,
    new: DeploymentState,
    action: DecisionAction,
    reason: str,
    now: int,
    publish_id: str,
) -> DecisionEvent:
    made = decision(old, new, action, reason, now)
    return made.model_copy(update={"command_id": publish_id, "decided_by": ON_PUBLISH})
