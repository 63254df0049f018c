"""The operator's side of the control plane: send a command, wait for the controller's answer."""

from __future__ import annotations

import time

from aiokafka import AIOKafkaConsumer, TopicPartition

from app.adapters.kafka_clients import assign_at_end, plain_producer, reader
from app.adapters.state_view import StateView
from app.core.events import ControlCommand, DecisionEvent, DeploymentState, decode, encode
from app.core.topics import Topic
from app.settings import Settings


async def send_command(
    settings: Settings, command: ControlCommand, timeout_s: float = 30.0
) -> DecisionEvent | None:
    """Write ``command`` to the control topic and return the ``DecisionEvent`` that answers it,
    or ``None`` if none came within ``timeout_s`` (is a controller running?)."""
    consumer = reader(settings, client_id="rollout-cli")
    await consumer.start()
    try:
        partitions = await assign_at_end(
            consumer, settings.topics.name(Topic.EVENTS)
        )  # before the command goes
        producer = plain_producer(settings)
        await producer.start()
        try:
            await producer.send_and_wait(
                settings.topics.name(Topic.CONTROL),
                encode(command),
                key=command.deployment.encode("utf-8"),
            )
        finally:
            await producer.stop()
        return await _answer(consumer, partitions, command.command_id, timeout_s)
    finally:
        await consumer.stop()


async def _answer(
    consumer: AIOKafkaConsumer,
    partitions: list[TopicPartition],
    command_id: str,
    timeout_s: float,
) -> DecisionEvent | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batch = await consumer.getmany(*partitions, timeout_ms=200)
        for records in batch.values():
            for record in records:
                if record.value is None:
                    continue
                event = decode(DecisionEvent, record.value)
                if event.command_id == command_id:
                    return event
    return None


async def current_states(settings: Settings) -> dict[str, DeploymentState]:
    """Every deployment's latest state, as ``deployments.state`` holds it now."""
    async with StateView(settings) as view:
        await view.catch_up()
        return dict(view.states)
