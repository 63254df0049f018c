"""A host's model store as a cache of ``models.artifacts``: put a version's manifest and a
deployment's spec on the topic, and install into the local store what a host needs and lacks.

Records on a deployment's partition of the (compacted) topic, one per key
(``app.core.artifacts``)::

    <deployment>/deployment          the deployment's spec (deployment.yaml, as JSON)
    <deployment>/<version>/manifest  {"manifest": model.json, "artifact": ArtifactRef}
    <deployment>/<version>/<i>       chunk i of the version's model.onnx

Write a version's chunks first and its manifest record last (``upload_version``): a reader
that finds the manifest finds the chunks before it. ``ArtifactCache.ensure`` is a no-op when
the local store holds the version under the sha256 the deployment's state names; otherwise
it reads the partition once, checks the manifest record names that sha256 and the chunks
join to exactly that file, and ``install``s it (``<deployment>/<version>/`` in one rename,
never over another version). Anything untrustworthy raises ``ArtifactRejected`` (reported:
logged and counted in ``rollout_artifacts_rejected_total``); nothing is installed then.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable

import yaml
from aiokafka import AIOKafkaProducer, TopicPartition

from app.adapters import artifact_metrics
from app.adapters.artifacts import upload
from app.adapters.kafka_clients import partitions_of, reader
from app.adapters.model_store import MANIFEST_FILE, MODEL_FILE, SPEC_FILE, ModelStore
from app.adapters.partitioning import partition_for
from app.core.artifacts import (
    CHUNK_BYTES,
    ArtifactMissing,
    ArtifactRejected,
    Inventory,
    VersionScan,
    chunk_key,
    manifest_key,
    parse_spec,
    spec_key,
    spec_record,
    take_inventory,
    verified,
    version_record,
)
from app.core.events import ArtifactRef
from app.core.manifest import DeploymentSpec, ModelManifest
from app.core.topics import Topic
from app.settings import Settings

log = logging.getLogger(__name__)

__all__ = [
    "ArtifactCache",
    "ArtifactRejected",
    "install",
    "install_spec",
    "put_manifest",
    "put_spec",
    "retire",
    "share",
    "upload_version",
]


async def _send(producer: AIOKafkaProducer, settings: Settings, deployment: str, key: bytes,
                value: bytes | None) -> None:  # fmt: skip
    topic = settings.topics.name(Topic.ARTIFACTS)
    partition = partition_for(deployment, len(await producer.partitions_for(topic)))
    await producer.send_and_wait(topic, value, key=key, partition=partition)


async def put_manifest(
    producer: AIOKafkaProducer,
    settings: Settings,
    manifest: ModelManifest,
    artifact: ArtifactRef | None = None,
) -> None:
    """Write ``manifest`` (a version's ``model.json``) as its manifest record, with the
    ``ArtifactRef`` of its chunks when known. Write it after the chunks."""
    key = manifest_key(manifest.name, manifest.version)
    await _send(producer, settings, manifest.name, key, version_record(manifest, artifact))


async def put_spec(
    producer: AIOKafkaProducer, settings: Settings, deployment: str, spec: DeploymentSpec
) -> None:
    """Write ``spec`` as ``deployment``'s spec record (the latest one is the one kept)."""
    if spec.name != deployment:
        raise ValueError(f"spec of {spec.name!r} put as {deployment!r}")
    await _send(producer, settings, deployment, spec_key(deployment), spec_record(spec))


async def upload_version(
    producer: AIOKafkaProducer,
    settings: Settings,
    manifest: ModelManifest,
    data: bytes,
    chunk_bytes: int = CHUNK_BYTES,
) -> ArtifactRef:
    """A version's chunks, then its manifest record; ``data`` must be the manifest's file."""
    if hashlib.sha256(data).hexdigest() != manifest.sha256:
        raise ArtifactRejected(f"{manifest.name} v{manifest.version}: bytes are not its manifest's")
    ref = await upload(producer, settings, manifest.name, manifest.version, data, chunk_bytes)
    await put_manifest(producer, settings, manifest, ref)
    return ref


async def share(
    producer: AIOKafkaProducer,
    settings: Settings,
    store: ModelStore,
    deployment: str,
    versions: Iterable[str],
    inventory: Inventory,
) -> list[str]:
    """Put on the topic what ``store`` holds of ``deployment`` and ``inventory`` says the
    topic lacks: its spec, and each of ``versions`` (chunks, then manifest record), so that
    hosts with an empty store can install them. The versions uploaded."""
    if not inventory.spec and store.has_spec(deployment):
        await put_spec(producer, settings, deployment, store.spec(deployment))
        inventory.spec = True
    uploaded: list[str] = []
    for version in dict.fromkeys(versions):
        if version in inventory.manifests or store.stored_sha256(deployment, version) is None:
            continue
        manifest = store.manifest(deployment, version)
        data = store.model_path(deployment, version).read_bytes()
        await upload_version(producer, settings, manifest, data)
        inventory.manifests.add(version)
        uploaded.append(version)
    return uploaded


def install(store: ModelStore, manifest: ModelManifest, data: bytes) -> bool:
    """Write ``<deployment>/<version>/`` (``model.onnx``, ``model.json``) into ``store`` in one
    rename. True when written; False when the store already holds this very version (same
    sha256); ``ArtifactRejected`` when ``data`` is not the manifest's file or the store holds
    another file under that version (versions are immutable: never overwritten)."""
    what = f"{manifest.name} v{manifest.version}"
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest.sha256:
        raise ArtifactRejected(
            f"{what}: bytes hash to {digest[:12]}..., the manifest says {manifest.sha256[:12]}..."
        )
    if _already(store, manifest):
        return False
    folder = store.root / manifest.name
    staging = folder / f".installing-{uuid.uuid4().hex}"
    staging.mkdir(parents=True)
    try:
        (staging / MODEL_FILE).write_bytes(data)
        text = json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n"
        (staging / MANIFEST_FILE).write_text(text, encoding="utf-8")
        try:
            os.rename(staging, folder / manifest.version)  # fails when it exists (not empty)
        except OSError:
            if _already(store, manifest):  # installed meanwhile by another process
                return False
            raise ArtifactRejected(f"{what}: cannot install into {folder}") from None
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(staging)


def _already(store: ModelStore, manifest: ModelManifest) -> bool:
    held = store.stored_sha256(manifest.name, manifest.version)
    if held is None:
        if store.holds(manifest.name, manifest.version):
            raise ArtifactRejected(
                f"{manifest.name} v{manifest.version}: the local store has an unreadable"
                " version there; not overwritten"
            )
        return False
    if held != manifest.sha256:
        raise ArtifactRejected(
            f"{manifest.name} v{manifest.version}: the local store holds another file"
            f" (sha256 {held[:12]}...) under this version; versions are immutable"
        )
    return True


def install_spec(store: ModelStore, spec: DeploymentSpec) -> bool:
    """Write ``spec`` as ``<deployment>/deployment.yaml`` unless the store has one (a seeded
    or earlier spec is kept); True when written."""
    if store.has_spec(spec.name):
        return False
    folder = store.root / spec.name
    folder.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False, default_flow_style=None)
    tmp = folder / f".{SPEC_FILE}.{uuid.uuid4().hex}"
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(folder / SPEC_FILE)
    return True


class ArtifactCache:
    """Fetches into ``store`` the versions and specs a process needs and lacks (one read of
    the deployment's partition each), verified before they are installed. One fetch per
    version at a time; ``rejected`` keeps the last reason per (deployment, version)."""

    def __init__(
        self,
        settings: Settings,
        store: ModelStore,
        *,
        timeout_s: float = 60.0,
        on_rejected: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.timeout_s = timeout_s
        self.on_rejected = on_rejected
        self.rejected: dict[tuple[str, str], str] = {}
        # Versions with no manifest record on the topic (as of their last fetch).
        self.missing: set[tuple[str, str]] = set()
        self.fetched = 0
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def ensure(self, deployment: str, version: str, sha256: str | None = None) -> bool:
        """Make sure the store holds ``deployment`` ``version`` with this ``sha256`` (and the
        deployment's spec); True when it had to be fetched. ``ArtifactRejected`` otherwise.
        ``sha256`` None: whatever the version's manifest record names (the controller, before
        it validates a version no state names yet); a version the store holds is kept."""
        lock = self._locks.setdefault((deployment, version), asyncio.Lock())
        async with lock:
            held = self.store.stored_sha256(deployment, version)
            if held is not None and sha256 not in (None, held):
                self._reject(
                    deployment, version, f"the local store holds {deployment} v{version} with"
                    f" sha256 {held[:12]}..., the state names {sha256[:12]}...",
                )  # fmt: skip
            if held is not None and self.store.has_spec(deployment):
                return False
            scan = await self._scan(deployment, version)
            try:
                size = self._install(scan, sha256, need_version=held is None)
            except ArtifactMissing as error:  # an unknown version, not a refused artifact
                self.missing.add((deployment, version))
                log.warning("%s v%s: %s", deployment, version, error.reason)
                raise
            except ArtifactRejected as error:
                self._reject(deployment, version, error.reason)
            except OSError as error:  # a read-only or full disk: not served either
                self._reject(deployment, version, f"cannot write the local store: {error}")
            self.rejected.pop((deployment, version), None)
            self.missing.discard((deployment, version))
            if size is None:
                return False
            self.fetched += 1
            artifact_metrics.ARTIFACTS_FETCHED.labels(deployment).inc()
            log.info("fetched %s v%s (%d bytes) from Kafka", deployment, version, size)
            return True

    def _install(self, scan: VersionScan, sha256: str | None, *, need_version: bool) -> int | None:
        """Install what ``scan`` holds and the store lacks; the version's size when it was."""
        if not self.store.has_spec(scan.deployment):
            install_spec(self.store, parse_spec(scan.deployment, scan.spec))
        if not need_version:
            return None
        manifest, data = verified(scan, sha256)
        install(self.store, manifest, data)
        return len(data)

    async def ensure_spec(self, deployment: str) -> None:
        """Make sure the store has ``deployment``'s spec (fetched from its spec record)."""
        if self.store.has_spec(deployment):
            return
        scan = await self._scan(deployment, "")
        try:
            install_spec(self.store, parse_spec(deployment, scan.spec))
        except ArtifactRejected as error:
            self._reject(deployment, "", error.reason)
        except OSError as error:
            self._reject(deployment, "", f"cannot write the local store: {error}")

    def _reject(self, deployment: str, version: str, reason: str) -> None:
        self.rejected[(deployment, version)] = reason
        artifact_metrics.ARTIFACTS_REJECTED.labels(deployment).inc()
        log.error(
            "artifact of %s v%s refused: %s",
            deployment,
            version or "-",
            reason,
            extra={"deployment": deployment},
        )
        if self.on_rejected is not None:
            self.on_rejected(deployment, version, reason)
        raise ArtifactRejected(reason)

    async def _scan(self, deployment: str, version: str) -> VersionScan:
        """Every record of ``deployment``'s partition up to its end as of now, for
        ``version`` (its chunks and manifest record) and the deployment's spec."""
        scan = VersionScan(deployment, version or "\x00")  # "": the spec only
        try:
            await self._read([deployment], lambda key, value: scan.take(key, value))
        except TimeoutError:
            self._reject(deployment, version, "timed out reading the artifacts topic")
        return scan

    async def inventory(self, deployments: Iterable[str]) -> dict[str, Inventory]:
        """What the topic holds for each of ``deployments`` (one read per partition)."""
        found = {name: Inventory() for name in deployments}
        await self._read(
            list(found), lambda key, value: take_inventory(found, key, value is not None)
        )
        return found

    async def _read(
        self, deployments: list[str], take: Callable[[bytes | None, bytes | None], None]
    ) -> None:
        """Hand ``take`` every record of the partitions of ``deployments``, in offset order,
        up to each partition's end as of the call; TimeoutError after ``timeout_s``."""
        topic = self.settings.topics.name(Topic.ARTIFACTS)
        consumer = reader(self.settings, max_partition_fetch_bytes=2 * CHUNK_BYTES)
        await consumer.start()
        try:
            count = len(await partitions_of(consumer, topic))
            tps = sorted({TopicPartition(topic, partition_for(d, count)) for d in deployments})
            if not tps:
                return
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            deadline = time.monotonic() + self.timeout_s
            left = [tp for tp in tps if ends[tp] > 0]
            while left:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"reading {topic}")
                batches = await consumer.getmany(*left, timeout_ms=500)
                for records in batches.values():
                    for record in records:
                        take(record.key, record.value)
                left = [tp for tp in left if await consumer.position(tp) < ends[tp]]
        finally:
            await consumer.stop()


async def retire(
    producer: AIOKafkaProducer,
    settings: Settings,
    deployment: str,
    version: str,
    inventory: Inventory,
) -> int:
    """Tombstone every record ``inventory`` holds of ``deployment`` ``version``: its manifest
    record first (a reader then finds the version retired, not incomplete), then its chunks;
    the number of tombstones written."""
    topic = settings.topics.name(Topic.ARTIFACTS)
    partition = partition_for(deployment, len(await producer.partitions_for(topic)))
    keys = [manifest_key(deployment, version)]
    keys += [chunk_key(deployment, version, i) for i in sorted(inventory.chunks.get(version, ()))]
    sends = [await producer.send(topic, None, key=k, partition=partition) for k in keys]
    await asyncio.gather(*sends)
    return len(keys)
