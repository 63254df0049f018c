"""Artifacts through Kafka on the real broker: a version written in chunks is read back
whole from its deployment's partition; a replaced (tampered) chunk or a tombstoned one makes
the fetch refuse it (app/adapters/artifacts.py)."""

from __future__ import annotations

import os
import time
import uuid

import pytest
from aiokafka import AIOKafkaProducer

from app.adapters.artifacts import fetch, tombstone, upload
from app.adapters.partitioning import partition_for
from app.core.artifacts import ArtifactRejected, chunk_key, describe
from app.core.topics import Topic
from app.settings import Settings

pytestmark = pytest.mark.kafka


async def test_chunks_round_trip_and_anything_else_is_refused(
    settings_: Settings, producer: AIOKafkaProducer
) -> None:
    deployment = f"art-{uuid.uuid4().hex[:8]}"
    data = os.urandom(5_000)
    before = int(time.time() * 1000) - 1_000
    ref = await upload(producer, settings_, deployment, "1", data, chunk_bytes=2_048)
    assert ref == describe(data, 2_048) and ref.chunks == 3
    assert await fetch(settings_, deployment, "1", ref) == data
    # From a recent time (what a publication's fetch reads first), and from a time after the
    # chunks (nothing there: the whole partition is read).
    assert await fetch(settings_, deployment, "1", ref, since_ms=before) == data
    later = int(time.time() * 1000) + 60_000
    assert await fetch(settings_, deployment, "1", ref, since_ms=later) == data

    # Another version of the same deployment does not mix in.
    other = os.urandom(100)
    ref2 = await upload(producer, settings_, deployment, "2", other, chunk_bytes=2_048)
    assert await fetch(settings_, deployment, "2", ref2) == other
    assert await fetch(settings_, deployment, "1", ref) == data

    # A later record under a chunk's key replaces it (as compaction keeps): tampered, refused.
    topic = settings_.topics.name(Topic.ARTIFACTS)
    partition = partition_for(deployment, len(await producer.partitions_for(topic)))
    await producer.send_and_wait(
        topic, b"\x00" * 2_048, key=chunk_key(deployment, "1", 1), partition=partition
    )
    with pytest.raises(ArtifactRejected, match="tampered"):
        await fetch(settings_, deployment, "1", ref)
    with pytest.raises(ArtifactRejected, match="tampered"):
        await fetch(settings_, deployment, "1", ref, since_ms=before)

    await tombstone(producer, settings_, deployment, "2", ref2.chunks)
    with pytest.raises(ArtifactRejected, match="incomplete"):
        await fetch(settings_, deployment, "2", ref2)
