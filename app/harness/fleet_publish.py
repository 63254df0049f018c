"""How the fleet's training simulator publishes a version: as a training pipeline in any
language would, by the documented contract alone (``docs/contracts.md``, "ModelPublished" and
"Artifacts"): the ONNX bytes in chunks of at most 1 MiB on ``models.artifacts``, keyed
``<deployment>/<version>/<index>`` and written to the partition the deployment's name hashes
to, then a ``ModelPublished`` event keyed by the deployment on ``models.published``.

``sha256`` may be given to publish a digest that does not match the bytes (a tampered
artifact, which the controller must refuse).
"""

from __future__ import annotations

import asyncio
import hashlib

from aiokafka import AIOKafkaProducer

from app.adapters.partitioning import partition_for
from app.core.events import ArtifactRef, ModelPublished, encode
from app.core.topics import Topic, TopicNames

# The contract allows 1 MiB of raw bytes a chunk; the topic's max.message.bytes (1 MiB) also has
# to hold the record's key and batch header, so a chunk stays a little under it.
CHUNK_BYTES = 1_000_000


async def publish_version(
    producer: AIOKafkaProducer,
    names: TopicNames,
    partitions: int,
    event: ModelPublished,
    data: bytes,
) -> None:
    """Write ``data``'s chunks, then ``event`` (its ``artifact`` must describe them);
    ``partitions``: how many ``models.artifacts`` has."""
    artifacts = names.name(Topic.ARTIFACTS)
    partition = partition_for(event.deployment, partitions)
    sends = []
    for index in range(event.artifact.chunks):
        key = f"{event.deployment}/{event.version}/{index}".encode()
        chunk = data[index * CHUNK_BYTES : (index + 1) * CHUNK_BYTES]
        sends.append(await producer.send(artifacts, chunk, key=key, partition=partition))
    await asyncio.gather(*sends)
    await producer.send_and_wait(
        names.name(Topic.PUBLISHED), encode(event), key=event.deployment.encode("utf-8")
    )


def artifact_of(data: bytes, sha256: str | None = None) -> ArtifactRef:
    """The ``ArtifactRef`` of ``data`` (``sha256``: another digest to publish instead)."""
    return ArtifactRef(
        sha256=sha256 or hashlib.sha256(data).hexdigest(),
        size=len(data),
        chunks=max(1, -(-len(data) // CHUNK_BYTES)),
    )
