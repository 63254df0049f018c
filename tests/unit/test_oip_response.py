"""The prediction of an Open Inference Protocol v2 request is also its OIP inference response:
the native ``Prediction`` fields plus ``model_name``, ``model_version``, ``id`` and
``outputs``, readable by a client written for MLServer's or Triton's Kafka endpoints (checked
here against the inference-response grammar of the OIP v2 specification, and decoded to
arrays as MLServer's numpy codec does). A native request's prediction has none of them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import orjson
import pytest

from app.adapters.model_store import ModelStore
from app.adapters.publishing import create, publish
from app.core.events import DeploymentState, Mode, Phase, Prediction, decode
from app.core.manifest import RegressionSpec
from app.core.oip import oip_outputs, oip_response
from app.core.requests import RawRecord
from app.core.routes import DeploymentRoute
from app.core.scoring import score_batch
from app.core.topics import Topic
from app.training import model_kinds as sm

OIP_FIELDS = {"model_name", "model_version", "id", "outputs"}
NATIVE_FIELDS = set(Prediction.model_fields) - OIP_FIELDS

# The inference response of the OIP v2 specification (KServe's "Open Inference Protocol",
# HTTP/REST JSON form, which the Kafka endpoints reuse): what a client of those servers reads.
# Other members are allowed (the specification's JSON grammar does not forbid them).
OIP_RESPONSE = {
    "type": "object",
    "required": ["model_name", "outputs"],
    "properties": {
        "model_name": {"type": "string"},
        "model_version": {"type": "string"},
        "id": {"type": "string"},
        "parameters": {"type": "object"},
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "shape", "datatype", "data"],
                "properties": {
                    "name": {"type": "string"},
                    "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                    "datatype": {
                        "enum": [
                            *("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16"),
                            *("INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"),
                        ]
                    },
                    "parameters": {"type": "object"},
                    "data": {"type": "array"},
                },
            },
        },
    },
}
NUMPY = {"BYTES": object, "FP32": np.float32, "FP64": np.float64, "INT64": np.int64}


@pytest.mark.parametrize(
    ("output", "values_datatype", "expected"),
    [
        (
            {"label": "fraud", "scores": [0.1, 0.9], "values": None},
            "FP32",
            [
                {"name": "label", "shape": [1], "datatype": "BYTES", "data": ["fraud"]},
                {"name": "scores", "shape": [1, 2], "datatype": "FP32", "data": [0.1, 0.9]},
            ],
        ),
        (
            {"label": "virginica", "scores": [0.1, 0.2, 0.7], "values": None},
            "FP64",  # a classifier's scores are float32 whatever a regressor's would be
            [
                {"name": "label", "shape": [1], "datatype": "BYTES", "data": ["virginica"]},
                {"name": "scores", "shape": [1, 3], "datatype": "FP32", "data": [0.1, 0.2, 0.7]},
            ],
        ),
        (
            {"label": None, "scores": None, "values": [12.5]},
            "FP32",
            [{"name": "values", "shape": [1, 1], "datatype": "FP32", "data": [12.5]}],
        ),
        (
            {"label": None, "scores": None, "values": [1.5, -2.0]},
            "FP64",
            [{"name": "values", "shape": [1, 2], "datatype": "FP64", "data": [1.5, -2.0]}],
        ),
    ],
)
def test_outputs_of_each_kind(
    output: dict[str, Any], values_datatype: str, expected: list[dict[str, Any]]
) -> None:
    assert oip_outputs(output, values_datatype) == expected
    response = oip_response("r-1", "dep", "4", output, values_datatype)
    assert response == {"model_name": "dep", "model_version": "4", "id": "r-1", "outputs": expected}
    jsonschema.validate(response, OIP_RESPONSE)


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> dict[str, DeploymentRoute]:
    """iris in a canary sending every entity to version 2; the other kinds stable."""
    root = tmp_path_factory.mktemp("store")
    models = tmp_path_factory.mktemp("models")
    store = ModelStore(root)
    create(store, "iris", sm.iris_like(models).path)
    publish(store, "iris", sm.iris_like(models / "v2", seed=3).path)
    create(store, "churn", sm.churn(models).path, labels=["stays", "leaves"])
    create(store, "digits", sm.digits(models).path)
    create(store, "price", sm.regressor(models).path, regression=RegressionSpec(error_cap=5.0))
    routes: dict[str, DeploymentRoute] = {}
    for name in store.deployments():
        production = store.load(store.ref(name, "1"))
        candidate = store.load(store.ref(name, "2")) if name == "iris" else None
        state = DeploymentState(
            deployment=name,
            epoch=5,
            mode=Mode.CANARY if candidate else Mode.MANUAL,
            phase=Phase.PROGRESSING if candidate else Phase.STABLE,
            production=production.ref,
            candidate=candidate.ref if candidate else None,
            canary_weight=1.0 if candidate else 0.0,
        )
        routes[name] = DeploymentRoute(state, production, candidate, store.spec(name).regression)
    return routes


def _oip(name: str, datatype: str, shape: list[int], data: list[Any]) -> dict[str, Any]:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


IMAGE = np.arange(64, dtype=np.float32).reshape(8, 8) % 7
KINDS = [
    # deployment, native features, OIP inputs, the version that serves
    (
        "iris",
        [5.1, 3.5, 1.4, 0.2],
        [_oip("X", "FP32", [1, 4], [5.1, 3.5, 1.4, 0.2])],
        "2",
    ),
    (
        "churn",
        {"tenure": 3.0, "city": "lille"},
        [_oip("tenure", "FP32", [1, 1], [3.0]), _oip("city", "BYTES", [1, 1], ["lille"])],
        "1",
    ),
    ("digits", {"image": IMAGE.tolist()}, [_oip("image", "FP32", [1, 8, 8], IMAGE.tolist())], "1"),
    ("price", [0.1, -1.2, 0.4], [_oip("X", "FP32", [1, 3], [[0.1, -1.2, 0.4]])], "1"),
]


@pytest.mark.parametrize(("deployment", "features", "inputs", "version"), KINDS)
def test_oip_request_prediction_is_native_and_an_oip_response(
    table: dict[str, DeploymentRoute],
    deployment: str,
    features: Any,
    inputs: list[dict[str, Any]],
    version: str,
) -> None:
    native = {"request_id": "n-1", "deployment": deployment, "features": features}
    oip = {"id": "oip-1", "inputs": inputs}
    records = [
        RawRecord(Topic.REQUESTS, 0, 0, b"e-1", orjson.dumps(native)),
        RawRecord(
            Topic.REQUESTS,
            0,
            1,
            b"e-1",
            orjson.dumps(oip),
            0,
            [("mlserver-model", deployment.encode())],
        ),
    ]
    result = score_batch(records, table, max_request_bytes=65536)
    assert not [o for o in result.outgoing if o.topic == Topic.DLQ]
    by_id = {
        p["request_id"]: p
        for p in (orjson.loads(o.value) for o in result.outgoing if o.topic == Topic.PREDICTIONS)
    }
    from_native, from_oip = by_id["n-1"], by_id["oip-1"]

    # native requests' predictions stay as they were: no OIP member, not even as null
    assert set(from_native) == NATIVE_FIELDS
    # the OIP request's: every native field (a native reader is unaffected), the same answer
    assert set(from_oip) == NATIVE_FIELDS | OIP_FIELDS
    decoded = decode(Prediction, orjson.dumps(from_oip))
    assert decoded.output.model_dump() == from_native["output"]
    assert (decoded.model.version, decoded.role) == (
        from_native["model"]["version"],
        from_native["role"],
    )

    # and the OIP inference response of the request: id, model, outputs
    jsonschema.validate(from_oip, OIP_RESPONSE)
    assert from_oip["id"] == "oip-1"
    assert (from_oip["model_name"], from_oip["model_version"]) == (deployment, version)
    assert from_oip["model_version"] == from_oip["model"]["version"]
    tensors = {
        out["name"]: np.asarray(out["data"], dtype=NUMPY[out["datatype"]]).reshape(out["shape"])
        for out in from_oip["outputs"]
    }
    output = from_native["output"]
    if output["label"] is not None:
        assert set(tensors) == {"label", "scores"}
        assert tensors["label"].tolist() == [output["label"]]
        np.testing.assert_allclose(tensors["scores"], [output["scores"]], rtol=1e-6)
        assert tensors["scores"].shape == (
            1,
            len(table[deployment].production.signature.labels or ()),
        )
    else:
        assert set(tensors) == {"values"}
        np.testing.assert_allclose(tensors["values"], [output["values"]], rtol=1e-6)


def test_oip_fields_are_optional_for_a_native_reader() -> None:
    """A Prediction without the OIP members (every native one, every older record) decodes."""
    body = {
        "request_id": "r",
        "deployment": "d",
        "entity_key": "e",
        "model": {"name": "d", "version": "1", "sha256": "0" * 64},
        "role": "production",
        "mode": "canary",
        "epoch": 1,
        "output": {"label": "a", "scores": [1.0, 0.0]},
        "latency_ms": 0.1,
        "served_at": 1,
    }
    prediction = decode(Prediction, orjson.dumps(body))
    assert (prediction.id, prediction.model_name, prediction.outputs) == (None, None, None)


def test_the_docs_show_an_oip_request_and_its_answer() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "contracts.md").read_text()
    blocks = re.findall(r"<!-- example: (\w+) -->\s*\n```json\n(.*?)\n```", doc, re.DOTALL)
    [request] = [orjson.loads(b) for kind, b in blocks if kind == "OipRequest"]
    answers = [
        orjson.loads(b)
        for kind, b in blocks
        if kind == "Prediction" and orjson.loads(b).get("id") == request["id"]
    ]
    assert len(answers) == 1
    [answer] = answers
    jsonschema.validate(answer, OIP_RESPONSE)
    assert answer["outputs"] == oip_outputs(answer["output"])
