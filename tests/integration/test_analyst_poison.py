"""A poisonous comparison record (+Infinity, negative or NaN scores, garbage bytes) on
``inference.comparisons`` neither stops the controller's analysis nor crash-loops it on a
restart: it is skipped, and the controller keeps deciding on the records after it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from app.adapters.control_client import current_states
from app.adapters.kafka_clients import assign_at_end, reader
from app.core.events import (
    Action,
    ArmResult,
    Comparison,
    DecisionAction,
    DecisionEvent,
    Mode,
    ModelOutput,
    Role,
    SourceOffset,
    decode,
    encode,
)
from app.core.topics import Topic
from app.harness.processes import CONTROLLER_READY, RolloutProcess
from app.settings import Settings
from tests.builders import controller_process
from tests.integration.control import command, reset_fraud

pytestmark = pytest.mark.kafka

HANDS_ON = {"min_samples_per_step": 1_000_000_000}


def comparison(epoch: int, i: int, score: float = 0.9, agree: bool = False) -> bytes:
    prod = ModelOutput(label="legit", scores=[0.9, 0.1])
    cand = ModelOutput(label="legit" if agree else "fraud", scores=[1 - score, score])
    return encode(
        Comparison(
            request_id=f"poison-{epoch}-{i}",
            deployment="fraud",
            mode=Mode.CANARY,
            epoch=epoch,
            source=SourceOffset(
                topic=Settings().topics.name(Topic.REQUESTS), partition=0, offset=i
            ),
            served_by=Role.CANDIDATE,
            production=ArmResult(version="1", sha256="1" * 64, output=prod, latency_ms=0.02),
            candidate=ArmResult(version="2", sha256="2" * 64, output=cand, latency_ms=0.02),
            agree=agree,
            score_delta=0.0,
        )
    )


def poisons(epoch: int) -> list[bytes]:
    valid = comparison(epoch, 0, score=0.123456)
    return [
        valid.replace(b"0.123456", b"Infinity"),
        valid.replace(b"0.123456", b"1e999"),
        valid.replace(b"0.123456", b"-0.5"),
        valid.replace(b"0.123456", b"NaN"),
        b"\xff\x00 not json at all",
        valid[: len(valid) // 2],
    ]


async def send(producer: AIOKafkaProducer, values: list[bytes]) -> None:
    for value in values:
        await producer.send(Settings().topics.name(Topic.COMPARISONS), value=value, key=b"fraud")
    await producer.flush()


async def watching_decisions(settings: Settings) -> AIOKafkaConsumer:
    """A reader of the decision events, positioned at their end: started before the evidence
    is sent, since the controller may decide on the poison's first valid records at once."""
    events = reader(settings, client_id="poison-test")
    await events.start()
    await assign_at_end(events, settings.topics.name(Topic.EVENTS))
    return events


async def controller_rollback(events: AIOKafkaConsumer, after_epoch: int, timeout_s: float) -> bool:
    """Whether the controller rolls the rollout back (on the poison's invalid candidate
    outputs, or on the disagreement guardrail)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batch = await events.getmany(timeout_ms=500)
        for records in batch.values():
            for record in records:
                d = decode(DecisionEvent, record.value)
                if (
                    d.deployment == "fraud"
                    and d.epoch > after_epoch
                    and d.decided_by == "controller"
                    and d.action is DecisionAction.ROLLBACK
                ):
                    return True
    return False


async def _has_state(settings: Settings) -> None:
    deadline = time.monotonic() + 30
    while "fraud" not in await current_states(settings):
        assert time.monotonic() < deadline, "no state for fraud"
        await asyncio.sleep(0.5)


async def _deploy_poison_and_decide(
    settings: Settings,
    producer: AIOKafkaProducer,
    proc: RolloutProcess,
    restart: Callable[[], RolloutProcess] | None = None,
) -> RolloutProcess:
    """Deploy a canary, send it poison, then plenty of good evidence, and wait for the
    controller's rollback. ``restart``, when given, replaces the controller between the
    poison and the evidence (killed before it could snapshot past the poison). Returns the
    controller that was running at the end."""
    await reset_fraud(settings)
    deployed = await command(
        settings, Action.DEPLOY, version="2", mode=Mode.CANARY, policy=HANDS_ON
    )
    assert deployed.accepted, deployed.reason
    events = await watching_decisions(settings)
    try:
        await send(producer, poisons(deployed.epoch))
        if restart is not None:
            proc = restart()
        waiting = asyncio.create_task(controller_rollback(events, deployed.epoch, 60))
        await asyncio.sleep(1.0)
        # Then plenty of good evidence: every pair disagrees, far above the 20% ceiling.
        await send(producer, [comparison(deployed.epoch, i) for i in range(1, 400)])
        assert await waiting, proc.log()[-3000:]
    finally:
        await events.stop()
    return proc


async def test_poisonous_comparisons_are_skipped_and_survive_a_restart(
    kafka_bootstrap: str,
    model_store: Path,
    tmp_path: Path,
    settings_: Settings,
    producer: AIOKafkaProducer,
) -> None:
    env = {"ROLLOUT_MODEL_STORE": str(model_store), "ROLLOUT_HOME": str(tmp_path)}
    proc = controller_process(kafka_bootstrap, tmp_path, name="poison", **env).start()
    try:
        proc.wait_for(CONTROLLER_READY)
        await _has_state(settings_)
        await _deploy_poison_and_decide(settings_, producer, proc)
        assert proc.alive(), proc.log()[-3000:]
        assert f"skipped {Topic.COMPARISONS} record" in proc.log()

        # A second rollout's poison, and the controller killed before it could snapshot past
        # it: the restarted controller reads the poison again, skips it, and decides.
        def restart() -> RolloutProcess:
            proc.kill()
            started = controller_process(kafka_bootstrap, tmp_path, name="poison", **env).start()
            try:
                started.wait_for(CONTROLLER_READY)
            except BaseException:
                started.terminate()
                raise
            return started

        proc = await _deploy_poison_and_decide(settings_, producer, proc, restart)
        # The restarted controller read the poison again (whichever of the two decided).
        assert f"skipped {Topic.COMPARISONS} record" in proc.log()
        await asyncio.sleep(3.0)
        assert proc.alive(), proc.log()[-3000:]
        assert "stopped: no decisions" not in proc.log()
    finally:
        proc.terminate()
        await reset_fraud(settings_)
