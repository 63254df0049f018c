"""Reading a whole topic back (committed records only): for tests, the demo and benchmarks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from app.adapters.kafka_clients import partitions_of, reader
from app.settings import Settings


async def read_topic(
    settings: Settings,
    topic: str,
    done: Callable[[list[ConsumerRecord]], bool],
    timeout_s: float = 60.0,
    settle_s: float = 0.0,
    since_ms: int | None = None,
) -> list[ConsumerRecord]:
    """Every committed record of ``topic`` from the beginning (or from the first written at
    or after ``since_ms``), until ``done(records)`` holds (then keep reading ``settle_s``
    more, to catch what should not be there) or the timeout."""
    consumer = reader(settings)
    await consumer.start()
    try:
        partitions = await partitions_of(consumer, topic)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        if since_ms is not None:
            ends = await consumer.end_offsets(partitions)
            await _seek_to_time(consumer, partitions, since_ms, ends)
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout_s
        settled_at: float | None = None
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for part in batch.values():
                records.extend(part)
            if settled_at is None and done(records):
                settled_at = time.monotonic() + settle_s
            if settled_at is not None and time.monotonic() >= settled_at:
                break
            await asyncio.sleep(0)
        return records
    finally:
        await consumer.stop()


async def read_tail(settings: Settings, topic: str, n: int) -> list[ConsumerRecord]:
    """About the last ``n`` committed records of ``topic``, spread over its partitions."""
    consumer = reader(settings)
    await consumer.start()
    try:
        partitions = await partitions_of(consumer, topic)
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        starts = await consumer.beginning_offsets(partitions)
        share = max(1, n // len(partitions))
        for tp in partitions:
            consumer.seek(tp, max(starts[tp], ends[tp] - share))
        return await _read_until(consumer, ends)
    finally:
        await consumer.stop()


async def read_to_end(
    settings: Settings, topic: str, since_ms: int | None = None
) -> list[ConsumerRecord]:
    """Every committed record of ``topic`` (from ``since_ms``) up to its end as of the call."""
    consumer = reader(settings)
    await consumer.start()
    try:
        partitions = await partitions_of(consumer, topic)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        if since_ms is not None:
            await _seek_to_time(consumer, partitions, since_ms, ends)
        return await _read_until(consumer, ends)
    finally:
        await consumer.stop()


async def _seek_to_time(
    consumer: AIOKafkaConsumer,
    partitions: list[TopicPartition],
    since_ms: int,
    ends: dict[TopicPartition, int],
) -> None:
    """Each partition at its first record written at or after ``since_ms`` (else its end)."""
    found = await consumer.offsets_for_times({tp: since_ms for tp in partitions})
    for tp in partitions:
        at = found.get(tp)
        consumer.seek(tp, at.offset if at is not None else ends[tp])


async def _read_until(
    consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int], timeout_s: float = 60.0
) -> list[ConsumerRecord]:
    """From the current positions up to ``ends`` (exclusive)."""
    records: list[ConsumerRecord] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pending = [tp for tp in ends if await consumer.position(tp) < ends[tp]]
        if not pending:
            break
        batch = await consumer.getmany(*pending, timeout_ms=200)
        for tp, part in batch.items():
            records.extend(r for r in part if r.offset < ends[tp])
    return records
