"""A model version's ONNX bytes as records of ``models.artifacts``: the keys, the split into
chunks, and the checks that make a joined artifact trustworthy.

A version of ``size`` bytes travels as ``chunks`` records keyed ``<deployment>/<version>/<i>``
(i = 0 .. chunks-1), each value at most ``CHUNK_BYTES`` of the file in order. ``join`` gives
the file back only when every chunk is there, the size is the published one and the sha256
is the published one; anything else is an :class:`ArtifactRejected` naming what is wrong, so
a tampered or incomplete artifact is never loaded.

Beside its chunks, a version has a *manifest record* (key ``<deployment>/<version>/manifest``:
its ``model.json`` and its ``ArtifactRef``) and a deployment has a *spec record* (key
``<deployment>/deployment``: its ``deployment.yaml`` as JSON), so that a host with an empty
model store can install both. ``VersionScan`` collects what a read of the deployment's
partition found, and ``verified`` gives a version's manifest and bytes only when the
manifest is the one the deployment's state names (its sha256) and the chunks join to it.

Pure: no I/O (``app.adapters.artifacts`` writes and reads the topic,
``app.adapters.artifact_cache`` the records and the local store).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, ValidationError

from app.core.events import ArtifactRef
from app.core.manifest import DeploymentSpec, ModelManifest

# The topic's max.message.bytes is 1 MiB (1,048,576); a chunk leaves room for the key, the
# headers and the record batch's own overhead.
CHUNK_BYTES = 1_000_000


class ArtifactRejected(Exception):
    """An artifact that must not be served: incomplete, the wrong size, or not the bytes
    that were published (``reason`` says which)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def key_prefix(deployment: str, version: str) -> str:
    return f"{deployment}/{version}/"


def chunk_key(deployment: str, version: str, index: int) -> bytes:
    return f"{key_prefix(deployment, version)}{index}".encode()


MANIFEST = "manifest"
SPEC = "deployment"


def manifest_key(deployment: str, version: str) -> bytes:
    """The key of a version's manifest record (never a chunk's: chunk indices are digits)."""
    return f"{key_prefix(deployment, version)}{MANIFEST}".encode()


def spec_key(deployment: str) -> bytes:
    """The key of a deployment's spec record."""
    return f"{deployment}/{SPEC}".encode()


class VersionRecord(BaseModel):
    """The value of a manifest record: the version's ``model.json`` and where its bytes are
    (``artifact``: None when the writer did not say; the chunks then run from 0 to the first
    missing index, and only the sha256 checks them)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    manifest: ModelManifest
    artifact: ArtifactRef | None = None


def version_record(manifest: ModelManifest, artifact: ArtifactRef | None) -> bytes:
    return VersionRecord(manifest=manifest, artifact=artifact).model_dump_json().encode()


def spec_record(spec: DeploymentSpec) -> bytes:
    return spec.model_dump_json().encode()


@dataclass
class VersionScan:
    """What a read of a deployment's partition found for one version (and the deployment's
    spec); feed it every record in offset order: a later record under a key replaces an
    earlier one, as compaction keeps the last, and a tombstone (None) removes it."""

    deployment: str
    version: str
    chunks: dict[int, bytes | None] = field(default_factory=dict)
    record: bytes | None = None
    spec: bytes | None = None

    def take(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        prefix = key_prefix(self.deployment, self.version).encode()
        if key == spec_key(self.deployment):
            self.spec = value
        elif key.startswith(prefix):
            rest = key[len(prefix) :]
            if rest == MANIFEST.encode():
                self.record = value
            elif rest.isdigit():
                self.chunks[int(rest)] = value


def parse_spec(deployment: str, value: bytes | None) -> DeploymentSpec:
    """The deployment's spec from its record; ``ArtifactRejected`` unless it is one, of it."""
    if value is None:
        raise ArtifactRejected(f"no spec record for deployment {deployment!r} on the topic")
    try:
        spec = DeploymentSpec.model_validate_json(value)
    except ValidationError as error:
        raise ArtifactRejected(f"spec record of {deployment!r} is invalid: {error}") from error
    if spec.name != deployment:
        raise ArtifactRejected(f"spec record of {deployment!r} names {spec.name!r}")
    return spec


def verified(scan: VersionScan, sha256: str) -> tuple[ModelManifest, bytes]:
    """The manifest and bytes of ``scan``'s version, when its manifest record names exactly
    ``sha256`` (what the deployment's state says) and its chunks join to that file."""
    what = f"{scan.deployment} v{scan.version}"
    if scan.record is None:
        raise ArtifactRejected(f"no manifest record for {what} (never uploaded, or retired)")
    try:
        record = VersionRecord.model_validate_json(scan.record)
    except ValidationError as error:
        raise ArtifactRejected(f"manifest record of {what} is invalid: {error}") from error
    manifest = record.manifest
    if (manifest.name, manifest.version) != (scan.deployment, scan.version):
        raise ArtifactRejected(
            f"manifest record of {what} describes {manifest.name} v{manifest.version}"
        )
    if manifest.sha256 != sha256:
        raise ArtifactRejected(
            f"manifest record of {what} says sha256 {manifest.sha256[:12]}..., the state"
            f" names {sha256[:12]}...: refused"
        )
    ref = record.artifact or _contiguous(scan.chunks, sha256)
    if ref.sha256 != sha256:
        raise ArtifactRejected(f"manifest record of {what}: its artifact is another file")
    return manifest, join(ref, scan.chunks)


def _contiguous(chunks: Mapping[int, bytes | None], sha256: str) -> ArtifactRef:
    """An ``ArtifactRef`` for the chunks from 0 up to the first one missing."""
    count = 0
    while chunks.get(count) is not None:
        count += 1
    size = sum(len(chunks[i] or b"") for i in range(count))
    return ArtifactRef(sha256=sha256, size=max(size, 1), chunks=max(count, 1))


def split(data: bytes, chunk_bytes: int = CHUNK_BYTES) -> list[bytes]:
    """The chunks of ``data``, in order (at least one)."""
    if chunk_bytes < 1:
        raise ValueError("chunk_bytes must be positive")
    return [data[i : i + chunk_bytes] for i in range(0, max(len(data), 1), chunk_bytes)]


def describe(data: bytes, chunk_bytes: int = CHUNK_BYTES) -> ArtifactRef:
    """The ``ArtifactRef`` a ``ModelPublished`` event gives for ``data``."""
    return ArtifactRef(
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        chunks=len(split(data, chunk_bytes)),
    )


def join(ref: ArtifactRef, chunks: Mapping[int, bytes | None]) -> bytes:
    """The artifact ``ref`` describes, from its chunks by index; a chunk that is None was
    tombstoned. Raises :class:`ArtifactRejected` unless it is complete and is exactly the
    published file."""
    missing = [i for i in range(ref.chunks) if chunks.get(i) is None]
    if missing:
        shown = ", ".join(str(i) for i in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ArtifactRejected(
            f"incomplete artifact: {len(missing)} of {ref.chunks} chunks missing ({shown})"
        )
    data = b"".join(chunks[i] or b"" for i in range(ref.chunks))
    if len(data) != ref.size:
        raise ArtifactRejected(f"artifact is {len(data)} bytes, the publication says {ref.size}")
    digest = hashlib.sha256(data).hexdigest()
    if digest != ref.sha256:
        raise ArtifactRejected(
            f"artifact sha256 {digest[:12]}... is not the published {ref.sha256[:12]}...:"
            " tampered or corrupted, refused"
        )
    return data
