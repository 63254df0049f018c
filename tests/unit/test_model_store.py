"""ModelStore against the committed ONNX models; tampering happens on tmp copies."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from app.adapters import model_store
from app.adapters.artifact_cache import install
from app.adapters.model_store import ModelRejected, ModelStore, UnknownModel
from app.core.events import ModelRef
from app.training import stream

MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.fixture(scope="module")
def store() -> ModelStore:
    return ModelStore(MODELS)


@pytest.fixture
def tmp_store(tmp_path: Path) -> ModelStore:
    shutil.copytree(MODELS, tmp_path / "models")
    return ModelStore(tmp_path / "models")


def test_lists_deployments_and_versions(store: ModelStore) -> None:
    assert store.deployments() == ["fraud"]
    assert store.versions("fraud") == ["1", "2", "3"]
    spec = store.spec("fraud")
    assert spec.initial_production == "1"
    assert spec.signature.feature_names == stream.FEATURE_NAMES
    assert spec.signature.labels == ("legit", "fraud")


def test_ref_points_inside_the_store_with_the_manifest_sha(store: ModelStore) -> None:
    ref = store.ref("fraud", "2")
    assert ref == ModelRef(
        name="fraud",
        version="2",
        uri="fraud/2/model.onnx",
        sha256=store.manifest("fraud", "2").sha256,
    )


@pytest.mark.parametrize("version", ["1", "2", "3"])
def test_loads_every_version_and_predicts_label_names(store: ModelStore, version: str) -> None:
    model = store.load(store.ref("fraud", version))
    assert model.feature_names == stream.FEATURE_NAMES
    assert model.labels == ("legit", "fraud")
    data = stream.current_traffic(300, seed=5)
    labels, scores = model.predict(data.features)
    assert len(labels) == 300
    assert set(labels) <= {"legit", "fraud"}
    assert scores.shape == (300, 2)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-5)
    expected = ["fraud" if s >= 0.5 else "legit" for s in scores[:, 1]]
    clear = np.abs(scores[:, 1] - 0.5) > 1e-4
    assert [a for a, c in zip(labels, clear, strict=True) if c] == [
        e for e, c in zip(expected, clear, strict=True) if c
    ]


@pytest.mark.parametrize(
    ("deployment", "version"), [("fraud", "9"), ("fraud", "../1"), ("nope", "1"), ("..", "1")]
)
def test_unknown_model_is_a_clear_error(store: ModelStore, deployment: str, version: str) -> None:
    with pytest.raises(UnknownModel) as caught:
        store.ref(deployment, version)
    assert isinstance(caught.value, ModelRejected)
    assert deployment in caught.value.reason or version in caught.value.reason


def test_unknown_version_lists_the_known_ones(store: ModelStore) -> None:
    with pytest.raises(UnknownModel, match=r"unknown version '9'.*known: 1, 2, 3"):
        store.manifest("fraud", "9")


def test_rejects_a_tampered_file(tmp_store: ModelStore) -> None:
    ref = tmp_store.ref("fraud", "2")
    path = tmp_store.root / ref.uri
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(ModelRejected, match="sha256 mismatch"):
        tmp_store.load(ref)


def test_rejects_a_ref_whose_sha_differs_from_the_file(store: ModelStore) -> None:
    ref = store.ref("fraud", "2").model_copy(update={"sha256": "0" * 64})
    with pytest.raises(ModelRejected, match="sha256 mismatch"):
        store.load(ref)


def test_rejects_another_versions_file_under_a_ref(store: ModelStore) -> None:
    ref = store.ref("fraud", "2").model_copy(update={"uri": "fraud/3/model.onnx"})
    with pytest.raises(ModelRejected, match="holds fraud v3"):
        store.load(ref)


@pytest.mark.parametrize(
    "uri",
    [
        "../models/fraud/1/model.onnx",
        "fraud/../fraud/1/model.onnx",
        "fraud/1/../../../etc/passwd",
        str(MODELS / "fraud" / "1" / "model.onnx"),
        "/etc/passwd",
        "fraud//1/model.onnx",
    ],
)
def test_rejects_uris_that_leave_the_store(store: ModelStore, uri: str) -> None:
    ref = store.ref("fraud", "1").model_copy(update={"uri": uri})
    with pytest.raises(ModelRejected) as caught:
        store.load(ref)
    assert not isinstance(caught.value, UnknownModel)
    assert "uri" in caught.value.reason


def test_rejects_a_symlink_out_of_the_store(tmp_path: Path, tmp_store: ModelStore) -> None:
    outside = tmp_path / "outside"
    shutil.copytree(tmp_store.root / "fraud" / "1", outside)
    shutil.rmtree(tmp_store.root / "fraud" / "1")
    (tmp_store.root / "fraud" / "1").symlink_to(outside, target_is_directory=True)
    ref = tmp_store.ref("fraud", "1")
    with pytest.raises(ModelRejected, match="leaves the store"):
        tmp_store.load(ref)


def test_rejects_a_signature_mismatch(tmp_store: ModelStore) -> None:
    spec_path = tmp_store.root / "fraud" / "deployment.yaml"
    spec = yaml.safe_load(spec_path.read_text())
    names = spec["signature"]["feature_names"]
    names[0], names[1] = names[1], names[0]
    spec_path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ModelRejected, match="incompatible: feature order differs at column 0"):
        tmp_store.load(tmp_store.ref("fraud", "1"))


def test_rejects_a_manifest_that_lies_about_the_graph(tmp_store: ModelStore) -> None:
    manifest_path = tmp_store.root / "fraud" / "1" / "model.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["inputs"][0]["name"] = "x"
    manifest_path.write_text(json.dumps(manifest))
    spec_path = tmp_store.root / "fraud" / "deployment.yaml"
    spec = yaml.safe_load(spec_path.read_text())
    spec["signature"]["inputs"][0]["name"] = "x"
    spec_path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ModelRejected, match="graph inputs"):
        tmp_store.load(tmp_store.ref("fraud", "1"))


def test_rejects_a_file_that_is_not_onnx(tmp_store: ModelStore) -> None:
    folder = tmp_store.root / "fraud" / "1"
    junk = b"not a model"
    (folder / "model.onnx").write_bytes(junk)
    manifest = json.loads((folder / "model.json").read_text())
    manifest["sha256"] = hashlib.sha256(junk).hexdigest()
    (folder / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelRejected, match="onnxruntime cannot load"):
        tmp_store.load(tmp_store.ref("fraud", "1"))


def test_a_serving_store_reads_its_cache_then_the_seed_and_installs_only_into_the_cache(
    tmp_path: Path,
) -> None:
    seed = tmp_path / "seed"
    shutil.copytree(MODELS / "fraud", seed / "fraud")
    shutil.rmtree(seed / "fraud" / "3")
    before = sorted(str(p.relative_to(seed)) for p in seed.rglob("*"))
    served = ModelStore(tmp_path / "cache", seed=seed)
    assert served.deployments() == ["fraud"] and served.versions("fraud") == ["1", "2"]
    assert served.load(served.ref("fraud", "2")).ref.version == "2"  # from the seed

    # Version 3 arrives (as from models.artifacts): it goes to the cache, the seed is untouched.
    manifest = ModelStore(MODELS).manifest("fraud", "3")
    assert install(served, manifest, (MODELS / "fraud" / "3" / "model.onnx").read_bytes())
    assert (tmp_path / "cache" / "fraud" / "3" / "model.onnx").is_file()
    assert sorted(str(p.relative_to(seed)) for p in seed.rglob("*")) == before
    assert served.versions("fraud") == ["1", "2", "3"]
    assert served.load(served.ref("fraud", "3")).ref.version == "3"  # spec from the seed
    assert served.stored_sha256("fraud", "3") == manifest.sha256
    assert served.model_path("fraud", "1").parent.parent.parent == seed


@pytest.mark.parametrize(
    ("warm", "budget_s", "runs"),
    [
        (False, 1.0, 1),  # a publication's check: the smoke inference only
        (True, 0.0, 2),  # past the budget after the first warm-up run
        (True, 60.0, 1 + 63 + 60),  # a fast model: every batch size of the list
    ],
)
def test_warming_up_runs_each_batch_size_within_its_budget(
    store: ModelStore,
    monkeypatch: pytest.MonkeyPatch,
    warm: bool,
    budget_s: float,
    runs: int,
) -> None:
    """A heavy model (ms a row) took minutes of CPU to run at all ~120 batch sizes up to
    1,024 rows; the warm-up stops at its budget, and a check that serves nothing skips it."""
    calls: list[int] = []
    predict = model_store.LoadedModel.predict

    def counted(self: model_store.LoadedModel, x: Any) -> Any:
        calls.append(1)
        return predict(self, x)

    monkeypatch.setattr(model_store.LoadedModel, "predict", counted)
    monkeypatch.setattr(model_store, "WARM_UP_BUDGET_S", budget_s)
    ref = store.ref("fraud", "1")
    model_store.open_model(
        store.root / "fraud" / "1" / "model.onnx", store.manifest("fraud", "1"), ref, warm
    )
    assert len(calls) == runs
