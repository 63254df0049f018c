"""How the fleet's training simulator publishes a version: as a training pipeline in any
language would, by the documented contract alone (``docs/contracts.md``, "ModelPublished" and
"Artifacts"): the ONNX bytes in chunks on ``models.artifacts`` (``app.adapters.artifacts``:
keyed ``<deployment>/<version>/<index>``, on the partition the deployment's name hashes to),
then a ``ModelPublished`` event keyed by the deployment on ``models.published``.

``sha256`` may be given to publish a digest that does not match the bytes (a tampered
artifact, which the controller must refuse).
"""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaProducer

from app.adapters.artifacts import upload
from app.core.events import ModelPublished, encode
from app.core.topics import Topic
from app.settings import Settings


async def publish_version(
    producer: AIOKafkaProducer,
    settings: Settings,
    data: bytes,
    *,
    deployment: str,
    version: str,
    sha256: str | None = None,
    **fields: Any,
) -> ModelPublished:
    """Write ``data``'s chunks, then the ``ModelPublished`` event (``fields``: its other
    fields); returns the event."""
    artifact = await upload(producer, settings, deployment, version, data)
    if sha256 is not None:
        artifact = artifact.model_copy(update={"sha256": sha256})
    event = ModelPublished(deployment=deployment, version=version, artifact=artifact, **fields)
    await producer.send_and_wait(
        settings.topics.name(Topic.PUBLISHED), encode(event), key=deployment.encode("utf-8")
    )
    return event
