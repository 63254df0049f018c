"""The latest ``DeploymentState`` of every deployment, read from ``deployments.state``.

Not a consumer-group member: the view assigns itself every partition, reads from the
beginning (the topic is compacted) with ``read_committed``, and keeps following. A state
replaces the one it knows only when its epoch is higher, so a replayed or stale record never
moves a deployment backwards. ``catch_up`` waits until everything committed before the call
has been applied; ``listeners`` hear of every state that was taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition

from app.adapters.kafka_clients import follow_events, partitions_of, reader, stop_following
from app.core.events import DeploymentState
from app.core.topics import Topic
from app.settings import Settings


class StateView:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._topic = settings.topics.name(Topic.STATE)
        self._consumer: AIOKafkaConsumer | None = None
        self._partitions: list[TopicPartition] = []
        self._task: asyncio.Task[None] | None = None
        self._progress = asyncio.Condition()
        self.states: dict[str, DeploymentState] = {}
        self.listeners: list[Callable[[DeploymentState], None]] = []

    async def start(self) -> None:
        consumer = reader(self._settings, client_id="rollout-state-view")
        await consumer.start()
        try:
            self._partitions = await partitions_of(consumer, self._topic)
        except LookupError:
            await consumer.stop()
            raise
        consumer.assign(self._partitions)
        await consumer.seek_to_beginning(*self._partitions)
        self._consumer = consumer
        self._task = asyncio.create_task(self._follow(), name="state-view")

    async def stop(self) -> None:
        await stop_following(self._task, self._consumer)

    async def __aenter__(self) -> StateView:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def partition_count(self) -> int:
        return len(self._partitions)

    def offer(self, state: DeploymentState) -> bool:
        """Take ``state`` if it is newer than what the view holds (also used for own writes)."""
        known = self.states.get(state.deployment)
        if known is not None and known.epoch >= state.epoch:
            return False
        self.states[state.deployment] = state
        for listener in self.listeners:
            listener(state)
        return True

    async def catch_up(self, timeout_s: float = 30.0) -> None:
        """Return once every state committed before this call has been applied."""
        assert self._consumer is not None, "start() first"
        ends = await self._consumer.end_offsets(self._partitions)
        deadline = time.monotonic() + timeout_s
        async with self._progress:
            while not await self._reached(ends):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{self._topic} not caught up within {timeout_s:.0f}s")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._progress.wait(), timeout=min(remaining, 0.2))

    async def _reached(self, ends: dict[TopicPartition, int]) -> bool:
        assert self._consumer is not None
        for tp, end in ends.items():
            position: int = await self._consumer.position(tp)
            if position < end:
                return False
        return True

    async def _follow(self) -> None:
        assert self._consumer is not None
        await follow_events(
            self._consumer,
            DeploymentState,
            self.offer,
            after_batch=self._notify_progress,
            unreadable_level=logging.ERROR,
        )

    async def _notify_progress(self) -> None:
        async with self._progress:
            self._progress.notify_all()
