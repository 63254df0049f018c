"""The recent decisions of every deployment, followed from ``deployments.events``.

Not a consumer-group member: the log assigns itself every partition, starts ``depth``
records before each partition's end (the topic keeps a long history) and keeps following,
holding the last ``depth`` ``DecisionEvent``s per deployment, oldest first.
"""

from __future__ import annotations

import asyncio
from collections import deque

from aiokafka import AIOKafkaConsumer

from app.adapters.kafka_clients import follow_events, partitions_of, reader, stop_following
from app.core.events import DecisionEvent
from app.core.topics import Topic
from app.settings import Settings


class DecisionLog:
    def __init__(self, settings: Settings, depth: int = 200) -> None:
        self._settings = settings
        self._depth = depth
        self._topic = settings.topics.name(Topic.EVENTS)
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._by_deployment: dict[str, deque[DecisionEvent]] = {}

    def recent(self, deployment: str) -> list[DecisionEvent]:
        return list(self._by_deployment.get(deployment, ()))

    async def start(self) -> None:
        consumer = reader(self._settings, client_id="rollout-decision-log")
        await consumer.start()
        try:
            partitions = await partitions_of(consumer, self._topic)
            consumer.assign(partitions)
            starts = await consumer.beginning_offsets(partitions)
            ends = await consumer.end_offsets(partitions)
        except BaseException:
            await consumer.stop()
            raise
        for tp in partitions:
            consumer.seek(tp, max(starts[tp], ends[tp] - self._depth))
        self._consumer = consumer
        self._task = asyncio.create_task(self._follow(), name="decision-log")

    async def stop(self) -> None:
        await stop_following(self._task, self._consumer)

    def add(self, event: DecisionEvent) -> None:
        events = self._by_deployment.setdefault(event.deployment, deque(maxlen=self._depth))
        events.append(event)

    async def _follow(self) -> None:
        assert self._consumer is not None
        await follow_events(self._consumer, DecisionEvent, self.add)
