"""A model version's ONNX bytes as records of ``models.artifacts``: the keys, the split into
chunks, and the checks that make a joined artifact trustworthy.

A version of ``size`` bytes travels as ``chunks`` records keyed ``<deployment>/<version>/<i>``
(i = 0 .. chunks-1), each value at most ``CHUNK_BYTES`` of the file in order. ``join`` gives
the file back only when every chunk is there, the size is the published one and the sha256
is the published one; anything else is an :class:`ArtifactRejected` naming what is wrong, so
a tampered or incomplete artifact is never loaded.

Pure: no I/O (``app.adapters.artifacts`` writes and reads the topic).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from app.core.events import ArtifactRef

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
