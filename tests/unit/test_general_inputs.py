"""The data plane on the model kinds a team may bring (models trained here): named, typed and
multi-dimensional inputs, regressors, Open Inference Protocol v2 requests, headers carried
onto predictions, and one specific dead-letter code (with the request id) per bad input,
while the valid requests of the same batch are served."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from app.adapters.model_store import ModelStore
from app.adapters.publishing import create, publish
from app.core.batch_result import BatchResult
from app.core.comparison_records import agreement
from app.core.events import DeploymentState, Mode, Phase
from app.core.manifest import RegressionSpec
from app.core.requests import RawRecord
from app.core.routes import DeploymentRoute
from app.core.scoring import score_batch
from app.core.topics import Topic
from app.training import model_kinds as sm


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> dict[str, DeploymentRoute]:
    root = tmp_path_factory.mktemp("store")
    models = tmp_path_factory.mktemp("models")
    store = ModelStore(root)
    create(store, "iris", sm.iris_like(models).path)
    publish(store, "iris", sm.iris_like(models / "worse", good=False).path)
    create(store, "churn", sm.churn(models).path, labels=["stays", "leaves"])
    create(store, "digits", sm.digits(models).path)
    regression = RegressionSpec(absolute_tolerance=0.5, error_cap=10.0)
    create(store, "price", sm.regressor(models).path, regression=regression)
    routes: dict[str, DeploymentRoute] = {}
    for name in store.deployments():
        production = store.load(store.ref(name, "1"))
        candidate = store.load(store.ref("iris", "2")) if name == "iris" else None
        state = DeploymentState(
            deployment=name,
            epoch=3,
            mode=Mode.SHADOW if candidate else Mode.MANUAL,
            phase=Phase.PROGRESSING if candidate else Phase.STABLE,
            production=production.ref,
            candidate=candidate.ref if candidate else None,
            shadow_sample_rate=1.0,
        )
        spec = store.spec(name)
        routes[name] = DeploymentRoute(state, production, candidate, spec.regression)
    return routes


def _score(table: dict[str, DeploymentRoute], *bodies: Any, headers: Any = ()) -> BatchResult:
    records = [
        RawRecord(Topic.REQUESTS, 0, n, b"k", orjson.dumps(b), 0, headers)
        for n, b in enumerate(bodies)
    ]
    return score_batch(records, table, max_request_bytes=65536)


def _out(result: BatchResult, topic: str) -> list[dict[str, Any]]:
    return [orjson.loads(o.value) for o in result.outgoing if o.topic == topic]


def _native(rid: str, deployment: str, features: Any) -> dict[str, Any]:
    return {"request_id": rid, "deployment": deployment, "features": features}


IMAGE = [[0.0] * 8 for _ in range(8)]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (_native("c1", "churn", {"tenure": 3.0}), "missing_input"),
        (_native("c2", "churn", {"tenure": 3.0, "city": "paris", "town": "x"}), "unknown_input"),
        (_native("c3", "churn", {"tenure": "long", "city": "paris"}), "wrong_type"),
        (_native("c4", "churn", {"tenure": 3.0, "city": 7}), "wrong_type"),
        (_native("c5", "churn", {"tenure": [3.0, 4.0], "city": "paris"}), "wrong_shape"),
        (_native("d1", "digits", {"image": IMAGE[:7]}), "wrong_shape"),
        (_native("d2", "digits", [[0.0] * 7 for _ in range(8)]), "wrong_shape"),
        (_native("d3", "digits", {"image": [[True] * 8] * 8}), "wrong_type"),
        (_native("d4", "digits", {"image": [[1e39] * 8] * 8}), "non_finite"),
        (_native("p1", "price", [1.0, 2.0]), "wrong_shape"),
        (_native("i1", "iris", {"x": [1.0, 2.0, 3.0, 4.0]}), "unknown_input"),
    ],
)
def test_bad_input_gets_its_code_and_the_rest_is_served(
    table: dict[str, DeploymentRoute], body: dict[str, Any], code: str
) -> None:
    good = _native("ok", "churn", {"tenure": 30.0, "city": "lyon"})
    result = _score(table, body, good)
    [letter] = _out(result, Topic.DLQ)
    assert (letter["error"]["code"], letter["request_id"]) == (code, body["request_id"])
    assert [p["request_id"] for p in _out(result, Topic.PREDICTIONS)] == ["ok"]


def test_each_kind_is_served(table: dict[str, DeploymentRoute]) -> None:
    result = _score(
        table,
        _native("a", "churn", {"tenure": [2.0], "city": ["lille"]}),
        _native("b", "digits", IMAGE),
        _native("c", "digits", {"image": IMAGE}),
        _native("d", "price", [0.1, 0.2, 0.3]),
        _native("e", "price", {"X": [0.1, 0.2, 0.3]}),
        _native("f", "iris", [5.0, 3.4, 1.5, 0.2]),
    )
    assert not _out(result, Topic.DLQ)
    outputs = {p["request_id"]: p["output"] for p in _out(result, Topic.PREDICTIONS)}
    assert outputs["a"]["label"] in ("stays", "leaves") and len(outputs["a"]["scores"]) == 2
    assert outputs["b"] == outputs["c"] and len(outputs["b"]["scores"]) == 3
    assert outputs["d"] == outputs["e"]
    assert outputs["d"]["label"] is None and len(outputs["d"]["values"]) == 1
    assert outputs["f"]["label"] == "setosa" and outputs["f"]["values"] is None
    [comparison] = _out(result, Topic.COMPARISONS)  # iris is in shadow with a candidate
    assert comparison["request_id"] == "f"


def test_open_inference_protocol_request_is_served_like_a_native_one(
    table: dict[str, DeploymentRoute],
) -> None:
    oip = {
        "id": "oip-1",
        "inputs": [
            {"name": "tenure", "shape": [1, 1], "datatype": "FP32", "data": [2.0]},
            {"name": "city", "shape": [1, 1], "datatype": "BYTES", "data": ["lille"]},
        ],
    }
    headers = [("mlserver-model", b"churn"), ("traceparent", b"00-abc-def-01")]
    native = _native("n-1", "churn", {"tenure": 2.0, "city": "lille"})
    result = _score(table, oip, native, headers=headers)
    by_id = {p["request_id"]: p for p in _out(result, Topic.PREDICTIONS)}
    assert by_id["oip-1"]["output"] == by_id["n-1"]["output"]
    assert all(
        ("traceparent", b"00-abc-def-01") in o.headers
        for o in result.outgoing
        if o.topic == Topic.PREDICTIONS
    )


@pytest.mark.parametrize(
    ("inputs", "headers", "code"),
    [
        (
            [{"name": "X", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}],
            "iris",
            "datatype_mismatch",
        ),
        (
            [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3]}],
            "iris",
            "wrong_shape",
        ),
        (
            [{"name": "X", "shape": [2, 4], "datatype": "FP32", "data": [0] * 8}],
            "iris",
            "wrong_shape",
        ),
        (
            [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],
            None,
            "missing_deployment",
        ),
        (
            [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],
            "nope",
            "unknown_deployment",
        ),
        (
            [{"name": "X", "shape": [1, 4], "datatype": "NUMBER", "data": [1, 2, 3, 4]}],
            "iris",
            "invalid_request",
        ),
    ],
)
def test_bad_oip_requests(
    table: dict[str, DeploymentRoute], inputs: Any, headers: str | None, code: str
) -> None:
    header = [("rollout-deployment", headers.encode())] if headers else []
    result = _score(table, {"id": "bad-1", "inputs": inputs}, headers=header)
    [letter] = _out(result, Topic.DLQ)
    assert (letter["error"]["code"], letter["request_id"]) == (code, "bad-1")


def test_oip_request_for_the_flat_fraud_signature_by_columns() -> None:
    from app.core.manifest import Signature, TensorSpec
    from app.core.tensors import oip_features

    sig = Signature(
        inputs=(TensorSpec(name="features", dtype="float32", shape=(2,)),),
        feature_names=("a", "b"),
        labels=("no", "yes"),
    )
    assert oip_features({"a": [1.0], "b": [2.0]}, {"a": "FP32", "b": "FP32"}, sig) == {
        "a": 1.0,
        "b": 2.0,
    }
    assert oip_features({"features": [1.0, 2.0]}, {"features": "FP32"}, sig) == [1.0, 2.0]


@pytest.mark.parametrize(
    ("prod", "cand", "spec", "agree", "delta"),
    [
        (
            {"label": "a", "scores": [0.9, 0.1]},
            {"label": "a", "scores": [0.7, 0.3]},
            None,
            True,
            pytest.approx(0.2),
        ),
        (
            {"label": "a", "scores": [0.6, 0.3, 0.1]},
            {"label": "b", "scores": [0.3, 0.5, 0.2]},
            None,
            False,
            pytest.approx(-0.3),
        ),
        (
            {"label": None, "values": [10.0]},
            {"label": None, "values": [10.4]},
            RegressionSpec(absolute_tolerance=0.5),
            True,
            pytest.approx(0.4),
        ),
        (
            {"label": None, "values": [10.0, 1.0]},
            {"label": None, "values": [10.4, 2.0]},
            RegressionSpec(absolute_tolerance=0.5),
            False,
            pytest.approx(1.0),
        ),
        (
            {"label": None, "values": [100.0]},
            {"label": None, "values": [109.0]},
            RegressionSpec(relative_tolerance=0.1),
            True,
            pytest.approx(9.0),
        ),
        (
            {"label": None, "values": [1.0]},
            {"label": None, "values": [1.0 + 1e-9]},
            None,
            False,
            pytest.approx(1e-9),
        ),
    ],
)
def test_agreement(prod: Any, cand: Any, spec: Any, agree: bool, delta: Any) -> None:
    assert agreement(prod, cand, spec) == (agree, delta)


def test_regressor_comparisons_use_the_deployment_tolerance(
    table: dict[str, DeploymentRoute], tmp_path: Path
) -> None:
    route = table["price"]
    shadow = DeploymentRoute(
        route.state.model_copy(
            update={"mode": Mode.SHADOW, "candidate": route.production.ref, "epoch": 4}
        ),
        route.production,
        route.production,
        route.regression,
    )
    result = score_batch(
        [RawRecord(Topic.REQUESTS, 0, 1, None, orjson.dumps(_native("r", "price", [1, 2, 3])))],
        {"price": shadow},
        max_request_bytes=65536,
    )
    [comparison] = _out(result, Topic.COMPARISONS)
    assert comparison["agree"] is True and comparison["score_delta"] == 0.0
