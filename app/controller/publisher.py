"""Publishing the controller's decisions exactly once, one transaction per decision.

Each partition of the co-partitioned control-plane topics has its own transactional
producer (``rollout-controller-p<N>``). Whichever controller owns partition N publishes
through that id, so a new owner fences a stale one: a controller that lost the partition can
no longer commit. A decision's new state, its ``DecisionEvent`` and the offset of the input
that caused it (a command, later a batch of comparisons) commit together or not at all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import ProducerFenced

from app.adapters import controller_metrics
from app.adapters.kafka_clients import transactional_producer
from app.core.events import DecisionEvent, DeploymentState, encode
from app.core.topics import Topic
from app.settings import Settings

log = logging.getLogger(__name__)


class DecisionPublisher:
    def __init__(self, settings: Settings, group_id: str) -> None:
        self._settings = settings
        self._state = settings.topics.name(Topic.STATE)
        self._events = settings.topics.name(Topic.EVENTS)
        self._group_id = group_id
        self._producers: dict[int, AIOKafkaProducer] = {}
        self._locks: dict[int, asyncio.Lock] = {}

    def lock(self, partition: int) -> asyncio.Lock:
        """Held around read-state → decide → publish, by whoever decides for ``partition``
        (commands and evidence alike): decisions on one partition never interleave, and a
        transaction never overlaps another on the same producer."""
        return self._locks.setdefault(partition, asyncio.Lock())

    async def publish(
        self,
        partition: int,
        decision: DecisionEvent | None,
        state: DeploymentState | None,
        consumed: dict[TopicPartition, int] | None = None,
        extra: Sequence[tuple[str, bytes, bytes | None]] = (),
        keyed: Sequence[tuple[str, bytes, bytes]] = (),
    ) -> None:
        """Commit ``state`` (if any), ``decision`` (if any), ``extra`` records (topic, key,
        value) and the ``consumed`` offsets (next offset to read) in one transaction on
        ``partition``; ``keyed`` records go in the same transaction to the partition their
        key chooses (Kafka's default partitioner). A fenced producer is replaced once: that
        happens when this controller owns the partition again after another one did."""
        try:
            await self._publish(partition, decision, state, consumed, extra, keyed)
        except ProducerFenced:
            await self.release(partition)
            await self._publish(partition, decision, state, consumed, extra, keyed)
        if decision is not None:
            controller_metrics.observe_decision(decision)

    async def _publish(
        self,
        partition: int,
        decision: DecisionEvent | None,
        state: DeploymentState | None,
        consumed: dict[TopicPartition, int] | None,
        extra: Sequence[tuple[str, bytes, bytes | None]],
        keyed: Sequence[tuple[str, bytes, bytes]] = (),
    ) -> None:
        producer = await self._producer(partition)
        async with producer.transaction():
            if state is not None:
                key = state.deployment.encode("utf-8")
                await producer.send(self._state, encode(state), key=key, partition=partition)
            if decision is not None:
                key = decision.deployment.encode("utf-8")
                await producer.send(self._events, encode(decision), key=key, partition=partition)
            for topic, key, value in extra:
                await producer.send(topic, value, key=key, partition=partition)
            for topic, key, value in keyed:
                await producer.send(topic, value, key=key)
            if consumed:
                await producer.send_offsets_to_transaction(consumed, self._group_id)

    async def _producer(self, partition: int) -> AIOKafkaProducer:
        producer = self._producers.get(partition)
        if producer is None:
            producer = transactional_producer(
                self._settings,
                self._settings.topics.scoped(f"rollout-controller-p{partition}"),
                max_request_size=16 << 20,
            )
            await producer.start()  # init_transactions: fences the partition's previous owner
            self._producers[partition] = producer
        return producer

    async def release(self, partition: int) -> None:
        producer = self._producers.pop(partition, None)
        if producer is not None:
            await producer.stop()

    async def close(self) -> None:
        for partition in list(self._producers):
            await self.release(partition)
