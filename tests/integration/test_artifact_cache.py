"""An empty model store filled from models.artifacts on the real broker: a version and its
deployment's spec are fetched, verified and installed once; a tampered chunk or a manifest
naming another sha256 is refused and nothing is installed (app/adapters/artifact_cache.py)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from app.adapters.artifact_cache import ArtifactCache, put_spec, upload_version
from app.adapters.model_store import ModelStore
from app.adapters.partitioning import partition_for
from app.core.artifacts import ArtifactRejected, chunk_key
from app.core.topics import Topic
from app.settings import Settings

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[2]
SEED = ModelStore(REPO / "models")


async def test_an_empty_store_fetches_verifies_and_installs(
    settings_: Settings, producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    name = f"art-{uuid.uuid4().hex[:8]}"
    spec = SEED.spec("fraud").model_copy(update={"name": name})
    await put_spec(producer, settings_, name, spec)
    versions = {}
    for version in ("1", "2"):
        manifest = SEED.manifest("fraud", version).model_copy(update={"name": name})
        data = (REPO / "models" / "fraud" / version / "model.onnx").read_bytes()
        await upload_version(producer, settings_, manifest, data, chunk_bytes=200)
        versions[version] = manifest

    store = ModelStore(tmp_path)
    cache = ArtifactCache(settings_, store)
    assert await cache.ensure(name, "1", versions["1"].sha256)
    assert not await cache.ensure(name, "1", versions["1"].sha256)  # held: no fetch
    assert store.deployments() == [name] and store.spec(name) == spec
    model = store.load(store.ref(name, "1"))
    assert model.ref.sha256 == versions["1"].sha256

    # The state names a sha256 the published manifest does not: refused, nothing installed.
    with pytest.raises(ArtifactRejected, match="the state names"):
        await cache.ensure(name, "2", "f" * 64)
    # A later record under one of version 2's chunk keys (other bytes): refused.
    topic = settings_.topics.name(Topic.ARTIFACTS)
    partition = partition_for(name, len(await producer.partitions_for(topic)))
    await producer.send_and_wait(
        topic, b"\x00" * 200, key=chunk_key(name, "2", 1), partition=partition
    )
    with pytest.raises(ArtifactRejected, match="tampered"):
        await cache.ensure(name, "2", versions["2"].sha256)
    assert store.versions(name) == ["1"]
    assert cache.rejected[(name, "2")].startswith("artifact sha256")
    assert cache.fetched == 1
