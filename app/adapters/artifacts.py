"""Model artifacts on Kafka (``models.artifacts``): write a version's chunks, read them back
and check them, tombstone a retired version. The keys, the split and the checks are
``app.core.artifacts``; this module only moves records.

Every chunk of a deployment goes to the partition its name hashes to (``partition_for``,
Kafka's default partitioner on the deployment), so a reader fetches a version from one
partition. The topic is compacted and each chunk has its own key, so compaction keeps them
all until the version is tombstoned.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from app.adapters.kafka_clients import partitions_of, reader
from app.adapters.partitioning import partition_for
from app.core.artifacts import (
    CHUNK_BYTES,
    ArtifactRejected,
    chunk_key,
    describe,
    join,
    key_prefix,
    split,
)
from app.core.events import ArtifactRef
from app.core.topics import Topic
from app.settings import Settings


async def _partition(producer: AIOKafkaProducer, topic: str, deployment: str) -> int:
    partitions = await producer.partitions_for(topic)
    return partition_for(deployment, len(partitions))


async def upload(
    producer: AIOKafkaProducer,
    settings: Settings,
    deployment: str,
    version: str,
    data: bytes,
    chunk_bytes: int = CHUNK_BYTES,
) -> ArtifactRef:
    """Write ``data`` as the chunks of ``deployment``/``version`` and wait until the broker
    has them all; returns the ``ArtifactRef`` to publish. Write the ``ModelPublished`` event
    only after this returns."""
    topic = settings.topics.name(Topic.ARTIFACTS)
    partition = await _partition(producer, topic, deployment)
    sends = [
        await producer.send(
            topic, chunk, key=chunk_key(deployment, version, i), partition=partition
        )
        for i, chunk in enumerate(split(data, chunk_bytes))
    ]
    await asyncio.gather(*sends)
    return describe(data, chunk_bytes)


async def tombstone(
    producer: AIOKafkaProducer, settings: Settings, deployment: str, version: str, chunks: int
) -> None:
    """Mark every chunk of a retired version for deletion (compaction removes them)."""
    topic = settings.topics.name(Topic.ARTIFACTS)
    partition = await _partition(producer, topic, deployment)
    sends = [
        await producer.send(topic, None, key=chunk_key(deployment, version, i), partition=partition)
        for i in range(chunks)
    ]
    await asyncio.gather(*sends)


async def fetch(
    settings: Settings,
    deployment: str,
    version: str,
    ref: ArtifactRef,
    timeout_s: float = 60.0,
    since_ms: int | None = None,
) -> bytes:
    """The published bytes of ``deployment``/``version``, read from its partition up to the
    partition's end as of the call and checked against ``ref``. Raises
    :class:`ArtifactRejected` when the chunks are incomplete or not the published file (a
    later chunk with the same key replaces an earlier one, as compaction would).

    ``since_ms``: read only what was written from then on first (the chunks of a version
    just published are near the partition's end, and a partition holds every live version
    of a third of the deployments); when that is not the whole artifact, read it all."""
    topic = settings.topics.name(Topic.ARTIFACTS)
    consumer = reader(settings, max_partition_fetch_bytes=2 * CHUNK_BYTES)
    await consumer.start()
    try:
        partitions = await partitions_of(consumer, topic)
        tp = TopicPartition(topic, partition_for(deployment, len(partitions)))
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        deadline = time.monotonic() + timeout_s
        if since_ms is not None:
            found = (await consumer.offsets_for_times({tp: max(since_ms, 0)})).get(tp)
            if found is not None:
                consumer.seek(tp, found.offset)
                recent = await _chunks(consumer, tp, end, deployment, version, deadline)
                with contextlib.suppress(ArtifactRejected):
                    return join(ref, recent)
        await consumer.seek_to_beginning(tp)
        return join(ref, await _chunks(consumer, tp, end, deployment, version, deadline))
    finally:
        await consumer.stop()


async def _chunks(
    consumer: AIOKafkaConsumer,
    tp: TopicPartition,
    end: int,
    deployment: str,
    version: str,
    deadline: float,
) -> dict[int, bytes | None]:
    """The version's chunks from the consumer's position up to ``end``, by index."""
    prefix = key_prefix(deployment, version).encode()
    chunks: dict[int, bytes | None] = {}
    while await consumer.position(tp) < end:
        if time.monotonic() > deadline:
            raise ArtifactRejected(f"timed out reading {tp.topic} partition {tp.partition}")
        batch = await consumer.getmany(tp, timeout_ms=500)
        for record in batch.get(tp, []):
            if record.key is not None and record.key.startswith(prefix):
                index = record.key[len(prefix) :]
                if index.isdigit():
                    chunks[int(index)] = record.value
    return chunks
