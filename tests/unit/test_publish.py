"""``rollout publish`` / ``deployments create`` on models trained here (scikit-learn +
skl2onnx): the signature read from the graph, parity of onnxruntime with scikit-learn,
immutable numbered versions, and a clear refusal for each bad input."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from app.adapters.model_store import ModelStore
from app.adapters.publishing import PublishError, create, publish
from app.core.tensors import stack, tensor_row
from app.training import model_kinds as sm


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    (tmp_path / "store").mkdir()
    return ModelStore(tmp_path / "store")


def test_three_class_classifier_with_zipmap(store: ModelStore, tmp_path: Path) -> None:
    built = sm.iris_like(tmp_path)
    spec = create(store, "iris", built.path)
    sig = spec.signature
    assert (sig.kind, sig.labels) == ("classifier", sm.IRIS_LABELS)
    assert [(i.name, i.dtype, i.shape) for i in sig.inputs] == [("X", "float32", (4,))]
    model = store.load(store.ref("iris", "1"))
    labels, scores = model.predict(built.x[:50])
    assert labels == list(built.estimator.predict(built.x[:50]))
    np.testing.assert_allclose(scores, built.estimator.predict_proba(built.x[:50]), atol=1e-5)


def test_regressor(store: ModelStore, tmp_path: Path) -> None:
    built = sm.regressor(tmp_path)
    spec = create(store, "price", built.path, labels=["price"])
    assert (spec.signature.kind, spec.signature.targets) == ("regressor", ("price",))
    labels, values = store.load(store.ref("price", "1")).predict(built.x[:50])
    assert labels is None
    np.testing.assert_allclose(values[:, 0], built.estimator.predict(built.x[:50]), rtol=1e-4)


def test_two_named_inputs_numeric_and_string(store: ModelStore, tmp_path: Path) -> None:
    built = sm.churn(tmp_path)
    sig = create(store, "churn", built.path, labels=["stays", "leaves"]).signature
    assert [(i.name, i.dtype, i.shape) for i in sig.inputs] == [
        ("tenure", "float32", (1,)),
        ("city", "string", (1,)),
    ]
    model = store.load(store.ref("churn", "1"))
    rows = [
        tensor_row({"tenure": float(t), "city": str(c)}, sig)
        for t, c in zip(built.x["tenure"][:40, 0], built.x["city"][:40, 0], strict=True)
    ]
    labels, scores = model.predict(stack(rows, sig))
    frame = np.empty((40, 2), dtype=object)
    frame[:, 0], frame[:, 1] = built.x["tenure"][:40, 0], built.x["city"][:40, 0]
    expected = built.estimator.predict_proba(frame)
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert labels == [["stays", "leaves"][int(i)] for i in expected.argmax(axis=1)]


def test_multi_dimensional_input(store: ModelStore, tmp_path: Path) -> None:
    built = sm.digits(tmp_path)
    sig = create(store, "digits", built.path).signature
    assert [(i.name, i.shape) for i in sig.inputs] == [("image", (8, 8))]
    labels, scores = store.load(store.ref("digits", "1")).predict({"image": built.x[:30]})
    expected = built.estimator.predict_proba(built.x[:30].reshape(30, 64))
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert labels == [str(i) for i in built.estimator.predict(built.x[:30].reshape(30, 64))]


def test_versions_are_numbered_and_never_overwritten(store: ModelStore, tmp_path: Path) -> None:
    create(store, "iris", sm.iris_like(tmp_path / "a").path)
    worse = sm.iris_like(tmp_path / "b", good=False).path
    assert publish(store, "iris", worse).version == "2"
    assert publish(store, "iris", worse, version="v3").version == "v3"
    before = (store.root / "iris" / "2" / "model.json").read_bytes()
    with pytest.raises(PublishError, match="version 2 of 'iris' exists already"):
        publish(store, "iris", worse, version="2")
    assert (store.root / "iris" / "2" / "model.json").read_bytes() == before
    assert store.versions("iris") == ["1", "2", "v3"]


def _unloadable(path: Path) -> Path:
    node = helper.make_node("NoSuchOp", ["x"], ["y"], domain="no.such.domain")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("no.such.domain", 1)]
    )
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: sm.regressor(d).path, r"does not fit deployment 'iris':\n  - kind regressor"),
        (lambda d: sm.iris_like(d).path.with_name("missing.onnx"), "no file"),
        (lambda d: _write(d / "junk.onnx", b"not a model"), "is not an ONNX model"),
    ],
    ids=["signature", "missing-file", "not-onnx"],
)
def test_refusals_name_the_problem(
    store: ModelStore, tmp_path: Path, make: Callable[[Path], Path], message: str
) -> None:
    create(store, "iris", sm.iris_like(tmp_path / "first").path)
    (tmp_path / "bad").mkdir()
    with pytest.raises(PublishError, match=message):
        publish(store, "iris", make(tmp_path / "bad"))
    assert store.versions("iris") == ["1"]


def test_a_graph_the_runtime_cannot_load_is_refused(store: ModelStore, tmp_path: Path) -> None:
    with pytest.raises(PublishError, match="onnxruntime cannot load"):
        create(store, "odd", _unloadable(tmp_path / "odd.onnx"))
    assert store.deployments() == []


def test_signature_mismatch_names_every_difference(store: ModelStore, tmp_path: Path) -> None:
    create(store, "iris", sm.iris_like(tmp_path / "a").path)
    with pytest.raises(PublishError) as caught:
        publish(store, "iris", sm.churn(tmp_path / "b").path)
    text = str(caught.value)
    assert "input 'X' is missing" in text
    assert "input 'tenure' is unknown to the deployment" in text
    assert "input 'city' is unknown to the deployment" in text
    assert "labels ['0', '1'] != deployment's ['setosa', 'versicolor', 'virginica']" in text


def test_a_deployment_is_created_once(store: ModelStore, tmp_path: Path) -> None:
    path = sm.iris_like(tmp_path).path
    create(store, "iris", path)
    with pytest.raises(PublishError, match="exists already"):
        create(store, "iris", path)


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path
