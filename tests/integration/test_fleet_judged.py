"""Twenty deployments served and judged at once by one worker group (two workers) and one
controller: created while the workers run (picked up live, no restart), then a rollout on
each, mixed: version 2 by canary on half (better than production: promoted on its labels
or its agreement), version 3 by shadow on the other half (disagrees with production on about
half the requests: retired by the guardrail). Traffic and late labels go to all twenty at
once; every rollout reaches its own decision."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from app.adapters.kafka_clients import assign_at_end, reader
from app.core.events import Action, DecisionEvent, Mode, decode
from app.core.topics import Topic
from app.harness.processes import CONTROLLER_READY, RolloutProcess
from app.harness.traffic import SentRequest, make_requests, send, send_feedback
from app.settings import Settings
from tests.builders import controller_process, running_workers
from tests.integration.deployment_copies import copy_fraud, create, order

pytestmark = pytest.mark.kafka

COUNT = 20
CHUNK = 40  # requests per deployment per round
RATE = 1500.0  # requests per second, all deployments together
# Fast and decided on what this test is about (many rollouts at once): two canary steps; a
# criterion on accuracy with a wide margin; latency not judged (the machine is shared).
FAST: dict[str, Any] = {
    "canary_steps": [0.5, 1.0],
    "min_samples_per_step": 150,
    "non_inferiority_margin": 0.2,
    "metric": {"kind": "accuracy"},
    "guardrails": {"max_latency_ratio": 1000.0, "min_latency_regression_ms": 1000.0},
}
EXPECT = {Mode.CANARY: "promote", Mode.SHADOW: "retire"}
FINAL = {"promote", "rollback", "retire", "await_approval", "recommend"}


@pytest.fixture(scope="module")
def names() -> list[str]:
    run = uuid.uuid4().hex[:4]
    return [f"fleet{run}-{k:02d}" for k in range(COUNT)]


@pytest.fixture(scope="module")
def services(
    kafka_bootstrap: str, model_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[RolloutProcess]]:
    logs = tmp_path_factory.mktemp("fleet-judged")
    controller = controller_process(kafka_bootstrap, logs, ROLLOUT_MODEL_STORE=str(model_store))
    controller.start()
    try:
        controller.wait_for(CONTROLLER_READY)
        with running_workers(
            kafka_bootstrap, ["fleet-1", "fleet-2"], logs, ROLLOUT_MODEL_STORE=str(model_store)
        ) as workers:
            yield [controller, *workers]
    finally:
        controller.terminate()


async def test_twenty_deployments_are_served_and_judged_at_once(
    services: list[RolloutProcess],
    names: list[str],
    model_store: Path,
    settings_: Settings,
    producer: AIOKafkaProducer,
) -> None:
    started = time.monotonic()
    for name in names:  # created while the workers run
        copy_fraud(model_store, name)
        await create(settings_, name)
    events = reader(settings_, client_id="fleet-judged")
    await events.start()
    modes = {name: (Mode.CANARY if k % 2 == 0 else Mode.SHADOW) for k, name in enumerate(names)}
    final: dict[str, DecisionEvent] = {}
    try:
        await assign_at_end(events, settings_.topics.name(Topic.EVENTS))
        for name, mode in modes.items():
            if mode is Mode.CANARY:
                await order(settings_, name, Action.DEPLOY, version="2", mode=mode, policy=FAST)
            else:
                await order(
                    settings_,
                    name,
                    Action.DEPLOY,
                    version="3",
                    mode=mode,
                    sample_rate=1.0,
                    policy=FAST,
                )
        previous: list[SentRequest] = []
        n = 0
        while time.monotonic() - started < 300 and len(final) < COUNT:
            batch = [
                r
                for name in names
                if name not in final
                for r in make_requests(CHUNK, seed=n, run_id=f"{name}-{n}", deployment=name)
            ]
            await send(producer, batch, rate=RATE, topic=settings_.topics.name(Topic.REQUESTS))
            await send_feedback(
                producer, previous, audit_rate=1.0, topic=settings_.topics.name(Topic.FEEDBACK)
            )
            previous, n = batch, n + 1
            for records in (await events.getmany(timeout_ms=100)).values():
                for record in records:
                    event = decode(DecisionEvent, record.value)
                    if (
                        event.deployment in modes
                        and event.decided_by == "controller"
                        and event.action in FINAL
                    ):
                        final.setdefault(event.deployment, event)
    finally:
        await events.stop()
    seconds = time.monotonic() - started
    undecided = sorted(set(names) - set(final))
    assert not undecided, f"no decision for {undecided} in {seconds:.0f} s"
    wrong = {
        name: f"{modes[name].value}: {event.action}: {event.reason}"
        for name, event in final.items()
        if event.action != EXPECT[modes[name]]
    }
    assert not wrong, wrong
    assert all(p.alive() for p in services), "a process died"
    print(f"\n{COUNT} rollouts decided in {seconds:.0f} s ({n} rounds of traffic)")
