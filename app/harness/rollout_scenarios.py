"""Rollout scenarios driven end to end: deploy a version, send traffic and late ground truth,
and wait for the controller's own decision. Used by ``rollout demo`` and the end-to-end tests.

A scenario needs a running controller and workers. It sends traffic in chunks at a steady
rate, plays ground truth one chunk later (feedback arrives late) as a labelling pipeline
should: for every request of the rollout's audit sample (the deployed policy's
``audit_rate``), plus optionally a share of the others,
and reads ``deployments.events`` until the controller decides something final for the
rollout: ``promote``, ``rollback``, ``retire``, ``await_approval`` or ``recommend``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer

from app.adapters.control_client import current_states, send_command
from app.adapters.kafka_clients import assign_at_end, reader
from app.core.events import Action, ControlCommand, DecisionEvent, Mode, decode
from app.core.topics import Topic
from app.harness.traffic import SentRequest, make_requests, send, send_feedback
from app.settings import Settings

FINAL = {"promote", "rollback", "retire", "await_approval", "recommend"}


@dataclass(frozen=True)
class Scenario:
    name: str
    version: str
    mode: Mode
    expect: str  # the final action the controller should take
    policy: dict[str, Any] = field(default_factory=dict)


@dataclass
class ScenarioResult:
    scenario: Scenario
    deployed: DecisionEvent | None
    decisions: list[DecisionEvent]
    requests: int
    feedback: int
    seconds: float

    @property
    def final(self) -> DecisionEvent | None:
        return next((d for d in self.decisions if d.action in FINAL), None)

    @property
    def ok(self) -> bool:
        return self.final is not None and self.final.action == self.scenario.expect


async def run_scenario(
    settings: Settings,
    producer: AIOKafkaProducer,
    scenario: Scenario,
    *,
    rate: float = 600.0,
    others: float = 0.0,
    chunk: int = 300,
    timeout_s: float = 120.0,
    progress: Callable[[ScenarioResult], None] | None = None,
) -> ScenarioResult:
    events = reader(settings, client_id="rollout-scenario")
    await events.start()
    started = time.monotonic()
    result = ScenarioResult(scenario, None, [], 0, 0, 0.0)
    try:
        await assign_at_end(events, settings.topics.name(Topic.EVENTS))
        deployed = await send_command(
            settings,
            ControlCommand(
                command_id=uuid.uuid4().hex,
                deployment="fraud",
                action=Action.DEPLOY,
                version=scenario.version,
                mode=scenario.mode,
                policy=scenario.policy or None,
                issued_by="demo",
                reason=scenario.name,
            ),
        )
        result.deployed = deployed
        if deployed is None or not deployed.accepted:
            return result
        # The audit sample the controller tests on: the deployed policy's.
        audit_rate = (await current_states(settings))["fraud"].policy.audit_rate
        run = f"{scenario.name.replace(' ', '-')}-{uuid.uuid4().hex[:6]}"
        previous: list[SentRequest] = []
        n = 0
        while time.monotonic() - started < timeout_s and result.final is None:
            batch = make_requests(chunk, seed=n, run_id=f"{run}-{n}")
            await send(producer, batch, rate=rate, topic=settings.topics.name(Topic.REQUESTS))
            result.requests += len(batch)
            result.feedback += await send_feedback(
                producer,
                previous,
                audit_rate=audit_rate,
                others=others,
                seed=n,
                topic=settings.topics.name(Topic.FEEDBACK),
            )
            previous = batch
            n += 1
            fetched = await events.getmany(timeout_ms=50)
            for records in fetched.values():
                for record in records:
                    event = decode(DecisionEvent, record.value)
                    # The controller's own decisions on this rollout; a recommendation
                    # changes no state, so it keeps the deploy's epoch.
                    if (
                        event.deployment == "fraud"
                        and event.epoch >= deployed.epoch
                        and event.decided_by == "controller"
                    ):
                        result.decisions.append(event)
            result.seconds = time.monotonic() - started
            if progress is not None:
                progress(result)
        return result
    finally:
        await events.stop()


async def abort_candidate(settings: Settings, reason: str) -> None:
    """Retire the candidate in flight, if any (production stays)."""
    state = (await current_states(settings)).get("fraud")
    if state is not None and state.candidate is not None:
        await send_command(
            settings,
            ControlCommand(
                command_id=uuid.uuid4().hex,
                deployment="fraud",
                action=Action.ABORT,
                issued_by="demo",
                reason=reason,
            ),
        )


async def reset(settings: Settings) -> None:
    """Retire any candidate in flight and put version 1 back into production."""
    await abort_candidate(settings, "reset")
    state = (await current_states(settings)).get("fraud")
    if state is None:
        return
    if state.production.version != "1":
        await send_command(
            settings,
            ControlCommand(
                command_id=uuid.uuid4().hex,
                deployment="fraud",
                action=Action.DEPLOY,
                version="1",
                mode=Mode.AUTOMATIC,
                issued_by="demo",
                reason="reset",
            ),
        )


# A rollout steered by hand only: a step never has enough samples and no guardrail can fail,
# so the controller's evidence side never advances, promotes, retires or rolls back on its own.
# Commands (and, in the bench, the flood of comparisons) are then the only thing that happens.
HANDS_OFF: dict[str, Any] = {
    "min_samples_per_step": 1_000_000_000,
    "guardrails": {
        "max_candidate_error_rate": 1.0,
        "max_latency_ratio": 1e9,
        "max_disagreement": 1.0,
        "max_score_shift": 1e9,
    },
}

# The demo's walk-through: one healthy candidate promoted by canary, a degraded one caught
# early by canary and by shadow, and a manual rollout that only gets a recommendation.
FAST = {"min_samples_per_step": 300}
DEMO = [
    Scenario("v2 by canary", "2", Mode.CANARY, "promote", FAST),
    Scenario("v3 by canary", "3", Mode.CANARY, "rollback", FAST),
    Scenario("v3 by shadow", "3", Mode.SHADOW, "retire", FAST),
    Scenario("v3 by manual", "3", Mode.MANUAL, "recommend", FAST),
]
