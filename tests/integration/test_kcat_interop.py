"""Interop with a Kafka client no one here wrote: Debian's ``kcat`` (librdkafka) produces
native and Open Inference Protocol v2 requests to the real broker, a real ``rollout worker``
serves them, and ``kcat`` reads the predictions and dead letters back with
``isolation.level=read_committed``, the prediction of an OIP request as its OIP v2 inference
response (``id``, ``model_name``, ``model_version``, ``outputs``). The deployments are
``fraud`` (a copy of ``models/``) and two kinds created with ``rollout deployments create``
(a 3-class classifier with ZipMap, and a pipeline with two named inputs, one a string).

Skipped when ``kcat`` is not installed, unless ``CI`` is set (then it fails: ``.ci/run``
installs it)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.adapters.control_client import current_states
from app.adapters.kafka_clients import transactional_producer
from app.adapters.model_store import ModelStore
from app.core.events import DeploymentState, now_ms
from app.core.topics import Topic
from app.harness.processes import CONTROLLER_READY, RolloutProcess
from app.settings import Settings
from app.training import model_kinds as sm
from tests.builders import controller_process, running_workers
from tests.integration.control import cli, reset_fraud

pytestmark = pytest.mark.kafka
RUN = uuid.uuid4().hex[:6]
REPO = Path(__file__).resolve().parents[2]
IRIS, CHURN = f"iris-kcat-{RUN}", f"churn-kcat-{RUN}"
# The fraud example of docs/contracts.md, by name (model order).
FRAUD_ROW = {
    "amount": 182.5,
    "log_amount": 5.2122,
    "hour_of_day": 2.0,
    "night": 1.0,
    "merchant_risk": 0.61,
    "distance_from_home_km": 840.0,
    "card_age_days": 35.0,
    "txn_count_1h": 4.0,
    "foreign": 1.0,
    "online": 1.0,
}
IRIS_ROW = [5.1, 3.5, 1.4, 0.2]


@pytest.fixture(scope="module")
def kcat() -> str:
    path = shutil.which("kcat")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("kcat is not installed and CI is set: .ci/run must install it (apt)")
        pytest.skip("kcat is not installed (Debian: apt-get install kcat)")
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kcat-store")
    shutil.copytree(REPO / "models" / "fraud", root / "fraud")
    return root


@pytest.fixture(scope="module")
def settings(kafka_bootstrap: str, store: Path) -> Settings:
    return Settings(bootstrap_servers=kafka_bootstrap, model_store=store)


@pytest.fixture(scope="module")
def services(
    kcat: str, kafka_bootstrap: str, store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RolloutProcess]:
    """A controller and one worker on the store; the two other kinds created meanwhile."""
    logs = tmp_path_factory.mktemp("kcat-logs")
    models = tmp_path_factory.mktemp("kcat-models")
    env = {"ROLLOUT_MODEL_STORE": str(store), "ROLLOUT_HOME": str(logs)}
    controller = controller_process(kafka_bootstrap, logs, name="kcat", **env).start()
    try:
        controller.wait_for(CONTROLLER_READY)
        with running_workers(kafka_bootstrap, [f"kcat-{RUN}"], logs, **env):
            for name, model, extra in (
                (IRIS, sm.iris_like(models / "iris").path, []),
                (CHURN, sm.churn(models / "churn").path, ["--labels", "stays,leaves"]),
            ):
                result = cli(
                    kafka_bootstrap,
                    "deployments",
                    "create",
                    name,
                    "--model",
                    str(model),
                    *extra,
                    env={"ROLLOUT_MODEL_STORE": str(store)},
                )
                assert result.returncode == 0, result.stdout + result.stderr
            yield controller
    finally:
        controller.terminate()


@dataclass(frozen=True)
class Sent:
    """One record kcat produced: its value, Kafka key and headers."""

    request_id: str
    key: str
    value: dict[str, Any]
    headers: dict[str, str]


def _produce(kcat: str, bootstrap: str, sent: Sent) -> None:
    """``kcat -P``: one record, its key and headers, with the Java client's partitioner
    (murmur2) so that its prediction lands on the same partition number."""
    args = [
        kcat,
        "-P",
        "-b",
        bootstrap,
        "-t",
        Settings().topics.name(Topic.REQUESTS),
        "-k",
        sent.key,
    ]
    args += ["-X", "partitioner=murmur2_random", "-X", "enable.idempotence=true"]
    for name, value in sent.headers.items():
        args += ["-H", f"{name}={value}"]
    result = subprocess.run(args, input=orjson.dumps(sent.value), capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr.decode()


def _consume(kcat: str, bootstrap: str, topic: str, since_ms: int) -> list[dict[str, Any]]:
    """``kcat -C -J``: every committed record of ``topic`` from ``since_ms`` to its end now."""
    args = [kcat, "-C", "-b", bootstrap, "-t", topic, "-o", f"s@{since_ms}", "-e", "-J", "-q"]
    args += ["-X", "isolation.level=read_committed"]
    result = subprocess.run(args, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    return [orjson.loads(line) for line in result.stdout.splitlines() if line.strip()]


def _headers(envelope: dict[str, Any]) -> list[tuple[str, str]]:
    """kcat -J writes headers as a flat list ``[name, value, name, value, ...]``."""
    flat = envelope.get("headers") or []
    return list(zip(flat[::2], flat[1::2], strict=True))


OIP_RESPONSE_FIELDS = {"model_name", "model_version", "id", "outputs"}


def _assert_oip_response(p: dict[str, Any], sent: Sent, version: str, classes: int) -> None:
    """What a client of MLServer's or Triton's Kafka endpoints reads from the record kcat
    consumed: the inference response of its request (``id``, model, output tensors)."""
    assert p["id"] == sent.value["id"] == p["request_id"]
    assert p["model_name"] == sent.headers["rollout-deployment"]
    assert p["model_version"] == version
    tensors = {o["name"]: o for o in p["outputs"]}
    assert tensors["label"] == {
        "name": "label",
        "shape": [1],
        "datatype": "BYTES",
        "data": [p["output"]["label"]],
    }
    assert tensors["scores"]["shape"] == [1, classes]
    assert tensors["scores"]["datatype"] == "FP32"
    assert tensors["scores"]["data"] == p["output"]["scores"]


def _oip(rid: str, inputs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": rid, "inputs": inputs}


def _trace(n: int) -> str:
    return f"00-{RUN:0>32}-{n:016x}-01"


def _requests() -> tuple[list[Sent], dict[str, str]]:
    """The valid requests (native in both forms and OIP, per deployment) and the malformed
    OIP ones with the dead-letter code each must get."""
    valid: list[tuple[str, dict[str, Any], str | None]] = [
        ("fraud-by-name", {"deployment": "fraud", "features": FRAUD_ROW}, None),
        ("fraud-list", {"deployment": "fraud", "features": list(FRAUD_ROW.values())}, None),
        (
            "fraud-oip-columns",
            {"inputs": [{"name": k, "shape": [1, 1], "datatype": "FP32", "data": [v]}
                        for k, v in FRAUD_ROW.items()]},
            "fraud",
        ),
        (
            "fraud-oip-tensor",
            {"inputs": [{"name": "features", "shape": [1, 10], "datatype": "FP32",
                         "data": list(FRAUD_ROW.values())}]},
            "fraud",
        ),
        ("iris-list", {"deployment": IRIS, "features": IRIS_ROW}, None),
        ("iris-by-name", {"deployment": IRIS, "features": {"X": IRIS_ROW}}, None),
        (
            "iris-oip",
            {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32",
                         "data": [IRIS_ROW]}]},
            IRIS,
        ),
        ("churn-by-name", {"deployment": CHURN, "features": {"tenure": 3.0, "city": "lille"}},
         None),
        (
            "churn-oip",
            {"inputs": [
                {"name": "tenure", "shape": [1, 1], "datatype": "FP32", "data": [3.0]},
                {"name": "city", "shape": [1, 1], "datatype": "BYTES", "data": ["lille"]},
            ]},
            CHURN,
        ),
    ]  # fmt: skip
    malformed: list[tuple[str, dict[str, Any], str | None, str]] = [
        (
            "iris-fp64",
            {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP64", "data": IRIS_ROW}]},
            IRIS,
            "datatype_mismatch",
        ),
        (
            "iris-short",
            {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32",
                         "data": IRIS_ROW[:3]}]},
            IRIS,
            "wrong_shape",
        ),
        (
            "churn-city-fp32",
            {"inputs": [
                {"name": "tenure", "shape": [1, 1], "datatype": "FP32", "data": [3.0]},
                {"name": "city", "shape": [1, 1], "datatype": "FP32", "data": [2.0]},
            ]},
            CHURN,
            "datatype_mismatch",
        ),
        (
            "iris-no-header",
            {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": IRIS_ROW}]},
            None,
            "missing_deployment",
        ),
    ]  # fmt: skip
    sent: list[Sent] = []
    codes: dict[str, str] = {}
    rows = [(*v, None) for v in valid] + malformed
    for n, (what, body, header, code) in enumerate(rows):
        rid = f"kcat-{RUN}-{what}"
        value = {"request_id": rid, **body} if "inputs" not in body else _oip(rid, body["inputs"])
        headers = {"traceparent": _trace(n)}
        if header is not None:
            headers["rollout-deployment"] = header
        sent.append(Sent(rid, f"entity-{n}", value, headers))
        if code is not None:
            codes[rid] = code
    return sent, codes


async def _wait_state(settings: Settings, name: str, timeout_s: float = 30) -> DeploymentState:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = (await current_states(settings)).get(name)
        if state is not None:
            return state
        await asyncio.sleep(0.3)
    raise AssertionError(f"no state for {name}")


async def test_kcat_requests_served_and_read_back_with_kcat(
    kcat: str, services: RolloutProcess, kafka_bootstrap: str, settings: Settings
) -> None:
    await _wait_state(settings, "fraud")
    fraud = await reset_fraud(settings)
    expected = {"fraud": fraud, IRIS: await _wait_state(settings, IRIS)}
    expected[CHURN] = await _wait_state(settings, CHURN)
    sent, codes = _requests()
    since = now_ms() - 1000
    for s in sent:
        _produce(kcat, kafka_bootstrap, s)
    by_id = {s.request_id: s for s in sent}

    deadline = time.monotonic() + 90
    while True:
        predictions = [
            (e, orjson.loads(e["payload"]))
            for e in _consume(
                kcat, kafka_bootstrap, Settings().topics.name(Topic.PREDICTIONS), since
            )
        ]
        dead = [
            (e, orjson.loads(e["payload"]))
            for e in _consume(kcat, kafka_bootstrap, Settings().topics.name(Topic.DLQ), since)
        ]
        predictions = [(e, p) for e, p in predictions if p["request_id"] in by_id]
        dead = [(e, d) for e, d in dead if d.get("request_id") in by_id]
        answered = {p["request_id"] for _, p in predictions} | {d["request_id"] for _, d in dead}
        if answered == set(by_id) or time.monotonic() > deadline:
            break
        await asyncio.sleep(1.0)
    requests = {
        orjson.loads(e["payload"]).get("request_id") or orjson.loads(e["payload"]).get("id"): e
        for e in _consume(kcat, kafka_bootstrap, Settings().topics.name(Topic.REQUESTS), since)
        if e["key"] and e["key"].startswith("entity-") and f"kcat-{RUN}" in e["payload"]
    }
    assert set(requests) == set(by_id)

    # one prediction per valid request, none for a malformed one; and the other way round
    valid = set(by_id) - set(codes)
    assert Counter(p["request_id"] for _, p in predictions) == Counter(valid)
    assert Counter(d["request_id"] for _, d in dead) == Counter(set(codes))

    outputs: dict[str, list[float]] = {}
    store = ModelStore(settings.model_store)
    for envelope, p in predictions:
        s = by_id[p["request_id"]]
        deployment = s.value.get("deployment") or s.headers["rollout-deployment"]
        state = expected[deployment]
        assert p["deployment"] == deployment
        assert (p["role"], p["model"]["version"]) == ("production", state.production.version)
        assert p["model"]["sha256"] == store.manifest(deployment, state.production.version).sha256
        assert p["epoch"] >= state.epoch
        assert envelope["key"] == s.key and p["entity_key"] == s.key
        # kcat's murmur2 partitioner placed the request where the worker places its prediction
        assert envelope["partition"] == requests[s.request_id]["partition"]
        # every request header, carried unchanged and in order
        assert _headers(envelope) == list(s.headers.items())
        outputs[p["request_id"]] = p["output"]["scores"]
        labels = {"fraud": ("legit", "fraud"), IRIS: sm.IRIS_LABELS, CHURN: ("stays", "leaves")}
        assert p["output"]["label"] in labels[deployment]
        assert len(p["output"]["scores"]) == len(labels[deployment])
        if "inputs" in s.value:  # an OIP request: its prediction is also its OIP response
            _assert_oip_response(p, s, state.production.version, len(labels[deployment]))
        else:  # a native request's prediction is as it was: no OIP member
            assert not OIP_RESPONSE_FIELDS & set(p), p

    # the same row in every form (by name, list, OIP) gets the same answer
    for prefix in ("fraud", "iris", "churn"):
        same = [v for k, v in outputs.items() if k.startswith(f"kcat-{RUN}-{prefix}-")]
        assert len(same) >= 2 and all(v == pytest.approx(same[0], abs=1e-6) for v in same)

    for envelope, d in dead:
        s = by_id[d["request_id"]]
        assert d["error"]["code"] == codes[s.request_id], d["error"]
        assert envelope["key"] == s.key
        assert _headers(envelope) == list(s.headers.items())
        request = requests[s.request_id]
        assert d["source"] == {
            "topic": Settings().topics.name(Topic.REQUESTS),
            "partition": request["partition"],
            "offset": request["offset"],
        }
        assert orjson.loads(d["payload"]) == s.value


@pytest.mark.parametrize("codec", ["zstd", "lz4"])
async def test_compressed_outputs_are_read_by_kcat(
    kcat: str, kafka_bootstrap: str, codec: str
) -> None:
    """A transactional producer as the worker's (``ROLLOUT_OUTPUT_COMPRESSION``), one
    committed transaction; kcat (librdkafka) reads the records back, read_committed."""
    settings = Settings(bootstrap_servers=kafka_bootstrap, output_compression=codec)
    producer = transactional_producer(settings, f"kcat-compressed-{RUN}-{codec}")
    topic = settings.topics.name(Topic.PREDICTIONS)
    since = now_ms() - 1
    values = [orjson.dumps({"request_id": f"{codec}-{RUN}-{i}", "n": i}) for i in range(50)]
    await producer.start()
    try:
        async with producer.transaction():
            for value in values:
                await producer.send(topic, value=value, key=b"k")
    finally:
        await producer.stop()
    read = await asyncio.to_thread(_consume, kcat, kafka_bootstrap, topic, since)
    mine = [r["payload"] for r in read if f'"{codec}-{RUN}-' in (r.get("payload") or "")]
    assert [orjson.loads(p) for p in mine] == [orjson.loads(v) for v in values]
