"""The chunks of a model artifact: split, described, and joined only when complete and exactly
the published bytes (app/core/artifacts.py)."""

from __future__ import annotations

import hashlib

import pytest

from app.core.artifacts import ArtifactRejected, chunk_key, describe, join, split

DATA = bytes(range(256)) * 10  # 2,560 bytes


@pytest.mark.parametrize(
    ("size", "chunk_bytes", "chunks"),
    [(2560, 1000, 3), (2560, 2560, 1), (2560, 2559, 2), (2560, 1, 2560), (1, 1000, 1)],
)
def test_split_covers_the_file_in_order(size: int, chunk_bytes: int, chunks: int) -> None:
    parts = split(DATA[:size], chunk_bytes)
    assert len(parts) == chunks
    assert all(0 < len(p) <= chunk_bytes for p in parts)
    assert b"".join(parts) == DATA[:size]
    ref = describe(DATA[:size], chunk_bytes)
    assert (ref.size, ref.chunks) == (size, chunks)
    assert ref.sha256 == hashlib.sha256(DATA[:size]).hexdigest()


def test_a_complete_artifact_joins_back() -> None:
    ref = describe(DATA, 1000)
    assert join(ref, dict(enumerate(split(DATA, 1000)))) == DATA


def _chunks() -> dict[int, bytes | None]:
    return dict(enumerate(split(DATA, 1000)))


def _flipped(chunks: dict[int, bytes | None]) -> dict[int, bytes | None]:
    first = chunks[1] or b""
    return chunks | {1: bytes([first[0] ^ 1]) + first[1:]}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda c: {i: v for i, v in c.items() if i != 2}, "1 of 3 chunks missing (2)"),
        (lambda c: c | {0: None}, "1 of 3 chunks missing (0)"),  # tombstoned
        (lambda c: c | {2: (c[2] or b"") + b"x"}, "2561 bytes, the publication says 2560"),
        (_flipped, "tampered or corrupted, refused"),
        (lambda c: {}, "3 of 3 chunks missing"),
    ],
    ids=["missing", "tombstoned", "longer", "one-bit", "nothing"],
)
def test_anything_but_the_published_bytes_is_refused(change: object, reason: str) -> None:
    ref = describe(DATA, 1000)
    with pytest.raises(ArtifactRejected) as raised:
        join(ref, change(_chunks()))  # type: ignore[operator]
    assert reason in raised.value.reason


def test_chunk_keys_name_deployment_version_and_index() -> None:
    assert chunk_key("fraud", "7", 12) == b"fraud/7/12"
