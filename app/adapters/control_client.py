"""The operator's side of the control plane: send a command, or publish a version, and wait
for the controller's answer."""

from __future__ import annotations

import time
import uuid
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from app.adapters.artifacts import upload
from app.adapters.kafka_clients import assign_at_end, plain_producer, reader
from app.adapters.state_view import StateView
from app.core.events import (
    ControlCommand,
    DecisionEvent,
    DeploymentState,
    ModelPublished,
    decode,
    encode,
)
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


async def send_publication(
    settings: Settings,
    deployment: str,
    version: str,
    data: bytes,
    timeout_s: float = 60.0,
    **fields: Any,
) -> tuple[ModelPublished, list[DecisionEvent]]:
    """Upload ``data`` as ``deployment``/``version`` to ``models.artifacts``, then write its
    ``ModelPublished`` (``fields``: manifest, labels, description, published_by) and return it
    with the controller's answers (its ``DecisionEvent``s, in order: all of one transaction),
    or no answers if none came within ``timeout_s``."""
    consumer = reader(settings, client_id="rollout-cli")
    await consumer.start()
    try:
        partitions = await assign_at_end(consumer, settings.topics.name(Topic.EVENTS))
        producer = plain_producer(settings)
        await producer.start()
        try:
            artifact = await upload(producer, settings, deployment, version, data)
            event = ModelPublished(
                publish_id=uuid.uuid4().hex,
                deployment=deployment,
                version=version,
                artifact=artifact,
                **fields,
            )
            await producer.send_and_wait(
                settings.topics.name(Topic.PUBLISHED), encode(event), key=deployment.encode()
            )
        finally:
            await producer.stop()
        found = await _answers(consumer, partitions, event.publish_id, timeout_s)
        if found:  # the rest of its transaction is committed: read up to the current ends
            ends = await consumer.end_offsets(partitions)
            while not await _reached(consumer, ends):
                found += await _answers(consumer, partitions, event.publish_id, 0.0)
        return event, found
    finally:
        await consumer.stop()


async def _reached(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return False
    return True


async def _answer(
    consumer: AIOKafkaConsumer,
    partitions: list[TopicPartition],
    command_id: str,
    timeout_s: float,
) -> DecisionEvent | None:
    found = await _answers(consumer, partitions, command_id, timeout_s)
    return found[0] if found else None


async def _answers(
    consumer: AIOKafkaConsumer,
    partitions: list[TopicPartition],
    command_id: str,
    timeout_s: float,
) -> list[DecisionEvent]:
    """The ``DecisionEvent``s answering ``command_id`` in the first batch that has any (one
    batch at least, however short ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        batch = await consumer.getmany(*partitions, timeout_ms=200)
        found = [
            event
            for records in batch.values()
            for record in records
            if record.value is not None
            and (event := decode(DecisionEvent, record.value)).command_id == command_id
        ]
        if found or time.monotonic() >= deadline:
            return found


async def current_states(settings: Settings) -> dict[str, DeploymentState]:
    """Every deployment's latest state, as ``deployments.state`` holds it now."""
    async with StateView(settings) as view:
        await view.catch_up()
        return dict(view.states)
