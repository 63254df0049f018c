"""Manifest and spec records of models.artifacts and installing into a local store: a version
is verified against the sha256 its state names before it is installed, installed in one
piece, and never overwrites another (app/core/artifacts.py, app/adapters/artifact_cache.py)."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from app.adapters.artifact_cache import install, install_spec
from app.adapters.model_store import ModelStore
from app.core.artifacts import (
    ArtifactRejected,
    VersionScan,
    chunk_key,
    describe,
    manifest_key,
    parse_spec,
    spec_key,
    spec_record,
    split,
    verified,
    version_record,
)
from app.core.events import ArtifactRef

REPO = Path(__file__).resolve().parents[2]
SEED = ModelStore(REPO / "models")
MANIFEST = SEED.manifest("fraud", "2")
DATA = (REPO / "models" / "fraud" / "2" / "model.onnx").read_bytes()
SHA = MANIFEST.sha256
CHUNK = 100  # fraud v2 is 635 bytes: 7 chunks


def _scan(records: list[tuple[bytes, bytes | None]], version: str = "2") -> VersionScan:
    scan = VersionScan("fraud", version)
    for key, value in records:
        scan.take(key, value)
    return scan


def _published(artifact: bool = True) -> list[tuple[bytes, bytes | None]]:
    chunks = split(DATA, CHUNK)
    ref = describe(DATA, CHUNK) if artifact else None
    return [
        (spec_key("fraud"), spec_record(SEED.spec("fraud"))),
        *[(chunk_key("fraud", "2", i), c) for i, c in enumerate(chunks)],
        (manifest_key("fraud", "2"), version_record(MANIFEST, ref)),
    ]


def test_keys_of_manifest_and_spec_are_not_chunk_keys() -> None:
    assert manifest_key("fraud", "2") == b"fraud/2/manifest"
    assert spec_key("fraud") == b"fraud/deployment"
    scan = _scan([(b"fraud/2/manifest", b"m"), (b"fraud/deployment", b"s"), (b"fraud/2/0", b"c")])
    assert (scan.record, scan.spec, scan.chunks) == (b"m", b"s", {0: b"c"})


@pytest.mark.parametrize("artifact", [True, False], ids=["with-artifact-ref", "without"])
def test_a_published_version_verifies(artifact: bool) -> None:
    manifest, data = verified(_scan(_published(artifact)), SHA)
    assert manifest == MANIFEST and data == DATA
    assert parse_spec("fraud", _scan(_published()).spec) == SEED.spec("fraud")


def test_other_versions_and_deployments_do_not_mix_in() -> None:
    others = [
        (chunk_key("fraud", "20", 0), b"x" * 10),  # "20" starts like "2"
        (chunk_key("fraud2", "2", 0), b"y" * 10),
        (spec_key("fraud2"), b"{}"),
    ]
    _, data = verified(_scan(_published() + others), SHA)
    assert data == DATA


def _tamper_chunk(records: list[tuple[bytes, bytes | None]]) -> list[tuple[bytes, bytes | None]]:
    return [*records, (chunk_key("fraud", "2", 1), b"\x00" * CHUNK)]  # a later record wins


def _drop_chunk(records: list[tuple[bytes, bytes | None]]) -> list[tuple[bytes, bytes | None]]:
    return [r for r in records if r[0] != chunk_key("fraud", "2", 3)]


def _tombstone_manifest(
    records: list[tuple[bytes, bytes | None]],
) -> list[tuple[bytes, bytes | None]]:
    return [*records, (manifest_key("fraud", "2"), None)]


def _other_sha(records: list[tuple[bytes, bytes | None]]) -> list[tuple[bytes, bytes | None]]:
    forged = MANIFEST.model_copy(update={"sha256": "0" * 64})
    return [*records, (manifest_key("fraud", "2"), version_record(forged, None))]


def _wrong_version(records: list[tuple[bytes, bytes | None]]) -> list[tuple[bytes, bytes | None]]:
    v3 = MANIFEST.model_copy(update={"version": "3"})
    return [*records, (manifest_key("fraud", "2"), version_record(v3, describe(DATA, CHUNK)))]


def _garbage(records: list[tuple[bytes, bytes | None]]) -> list[tuple[bytes, bytes | None]]:
    return [*records, (manifest_key("fraud", "2"), b"{not json")]


def _other_artifact(
    records: list[tuple[bytes, bytes | None]],
) -> list[tuple[bytes, bytes | None]]:
    ref = ArtifactRef(sha256="1" * 64, size=len(DATA), chunks=1)
    return [*records, (manifest_key("fraud", "2"), version_record(MANIFEST, ref))]


Change = Callable[[list[tuple[bytes, bytes | None]]], list[tuple[bytes, bytes | None]]]


@pytest.mark.parametrize(
    ("change", "artifact", "reason"),
    [
        (_tamper_chunk, True, "tampered or corrupted"),
        (_tamper_chunk, False, "tampered or corrupted"),
        (_drop_chunk, True, "1 of"),
        (_drop_chunk, False, "tampered or corrupted"),  # the chunks stop at the gap
        (_tombstone_manifest, True, "no manifest record"),
        (_other_sha, True, "the state names"),
        (_wrong_version, True, "describes fraud v3"),
        (_garbage, True, "is invalid"),
        (_other_artifact, True, "its artifact is another file"),
    ],
    ids=[
        "tampered",
        "tampered-no-ref",
        "missing-chunk",
        "missing-chunk-no-ref",
        "retired",
        "other-sha",
        "wrong-version",
        "garbage",
        "other-artifact",
    ],
)
def test_anything_untrustworthy_is_rejected(change: Change, artifact: bool, reason: str) -> None:
    with pytest.raises(ArtifactRejected) as raised:
        verified(_scan(change(_published(artifact))), SHA)
    assert reason in raised.value.reason


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "no spec record"),
        (b"[]", "is invalid"),
        (spec_record(SEED.spec("fraud").model_copy(update={"name": "iris"})), "names 'iris'"),
    ],
)
def test_a_spec_record_must_be_the_deployments(value: bytes | None, reason: str) -> None:
    with pytest.raises(ArtifactRejected, match=reason):
        parse_spec("fraud", value)


def test_install_writes_a_loadable_version_once(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    assert store.stored_sha256("fraud", "2") is None
    assert install_spec(store, SEED.spec("fraud"))
    assert not install_spec(store, SEED.spec("fraud"))  # kept, not rewritten
    assert install(store, MANIFEST, DATA)
    assert not install(store, MANIFEST, DATA)  # the same version again: fine, untouched
    assert store.stored_sha256("fraud", "2") == SHA
    model = store.load(store.ref("fraud", "2"))
    assert model.ref.sha256 == SHA and model.manifest == MANIFEST
    assert [p.name for p in (tmp_path / "fraud").iterdir() if p.name.startswith(".")] == []


def test_install_refuses_bytes_that_are_not_the_manifests(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    with pytest.raises(ArtifactRejected, match="the manifest says"):
        install(store, MANIFEST, DATA[:-1] + bytes([DATA[-1] ^ 1]))
    assert not (tmp_path / "fraud" / "2").exists()


def test_install_never_overwrites_another_file_under_a_version(tmp_path: Path) -> None:
    shutil.copytree(REPO / "models" / "fraud", tmp_path / "fraud")
    store = ModelStore(tmp_path)
    v3 = SEED.manifest("fraud", "3")
    other = (REPO / "models" / "fraud" / "3" / "model.onnx").read_bytes()
    impostor = v3.model_copy(update={"version": "2"})
    assert hashlib.sha256(other).hexdigest() == impostor.sha256 != SHA
    with pytest.raises(ArtifactRejected, match="versions are immutable"):
        install(store, impostor, other)
    assert store.stored_sha256("fraud", "2") == SHA
    assert (tmp_path / "fraud" / "2" / "model.onnx").read_bytes() == DATA
