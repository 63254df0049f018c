"""Any model a team brings, end to end on the real broker: deployments created with the CLI
while two workers and a controller run (no restart), published versions rolled out in canary
and in shadow, served, compared, and promoted or rolled back on ground truth. Models are
trained here (app/training/model_kinds.py); nothing is hand-written into the store."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiokafka import AIOKafkaProducer

from app.adapters.control_client import current_states
from app.adapters.kafka_clients import plain_producer
from app.adapters.partitioning import keyed_partition, partition_for
from app.core.events import DeploymentState
from app.core.topics import Topic
from app.harness.processes import CONTROLLER_READY, RolloutProcess
from app.settings import Settings
from app.training import model_kinds as sm
from tests.builders import controller_process, running_workers
from tests.integration.control import cli
from tests.integration.outputs import Tail

pytestmark = pytest.mark.kafka
RUN = uuid.uuid4().hex[:6]  # deployments.state keeps every name: each run its own
# Requests are sent in waves smaller than a step, each wave's ground truth before the next,
# so that feedback coverage is there when the samples are.
WAVE = 60
FAST = {
    "canary_steps": [0.5, 1.0],
    "min_samples_per_step": 150,
    "min_feedback_coverage": 0.3,
    "non_inferiority_margin": 0.05,
    # decisions on ground truth only: no guardrail may decide first
    "guardrails": {"max_disagreement": 1.0, "max_score_shift": 1e9, "max_latency_ratio": 1e9},
}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kinds-store")


@pytest.fixture(scope="module")
def services(
    kafka_bootstrap: str, store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[RolloutProcess]]:
    """A controller and two workers started on an empty model store."""
    logs = tmp_path_factory.mktemp("kinds-logs")
    env = {"ROLLOUT_MODEL_STORE": str(store), "ROLLOUT_HOME": str(logs)}
    controller = controller_process(kafka_bootstrap, logs, name="kinds", **env).start()
    try:
        controller.wait_for(CONTROLLER_READY)
        with running_workers(kafka_bootstrap, [f"kinds-{RUN}-1", f"kinds-{RUN}-2"], logs, **env):
            yield [controller]
    finally:
        controller.terminate()


@pytest.fixture(scope="module")
def settings(kafka_bootstrap: str, store: Path) -> Settings:
    return Settings(bootstrap_servers=kafka_bootstrap, model_store=store)


@pytest.fixture(scope="module")
async def producer(settings: Settings) -> AsyncIterator[AIOKafkaProducer]:
    p = plain_producer(settings)
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


def _rollout(bootstrap: str, store: Path, *args: str) -> str:
    result = cli(bootstrap, *args, env={"ROLLOUT_MODEL_STORE": str(store)})
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _create(bootstrap: str, store: Path, tmp: Path, name: str, model: Path, *extra: str) -> None:
    policy = tmp / f"{name}-policy.yaml"
    policy.write_text(yaml.safe_dump(FAST))
    out = _rollout(
        bootstrap,
        store,
        "deployments",
        "create",
        name,
        "--model",
        str(model),
        "--policy",
        str(policy),
        *extra,
    )
    assert "created" in out


async def _state(settings: Settings, name: str) -> DeploymentState | None:
    return (await current_states(settings)).get(name)


async def _send(
    producer: AIOKafkaProducer, name: str, rows: list[Any], prefix: str, headers: Any = None
) -> list[str]:
    ids = []
    for n, features in enumerate(rows):
        rid = f"{prefix}-{RUN}-{n}"
        body = {"request_id": rid, "deployment": name, "features": features}
        await producer.send(
            Settings().topics.name(Topic.REQUESTS),
            orjson.dumps(body),
            key=f"e{n}".encode(),
            headers=headers,
        )
        ids.append(rid)
    await producer.flush()
    return ids


async def _until_decided(
    settings: Settings,
    producer: AIOKafkaProducer,
    name: str,
    rows: list[Any],
    truth: list[Any],
    truth_field: str,
    timeout_s: float = 150.0,
    feedback_key: bytes | None = None,
) -> DeploymentState:
    """Send requests (and, once compared, their ground truth, keyed by the deployment or by
    ``feedback_key``) until the rollout ends."""
    comparisons = await Tail(settings, settings.topics.name(Topic.COMPARISONS)).start()
    sent: dict[str, Any] = {}
    labelled: set[str] = set()
    deadline = time.monotonic() + timeout_s
    wave = 0
    try:
        while time.monotonic() < deadline:
            state = await _state(settings, name)
            assert state is not None
            if state.candidate is None:
                return state
            start = (wave * WAVE) % len(rows)
            chunk = slice(start, start + WAVE)
            ids = await _send(producer, name, rows[chunk], f"{name}-w{wave}")
            sent.update(zip(ids, truth[chunk], strict=True))
            wave += 1
            quiet = 0
            while quiet < 5:  # until the wave's comparisons stop coming (1 s of quiet)
                quiet = 0 if await comparisons.poll(200) else quiet + 1
            compared = {
                orjson.loads(r.value)["request_id"]
                for r in comparisons.records
                if r.key == name.encode() and not r.headers
            }
            for rid in sorted(compared - labelled):
                if rid in sent:
                    feedback = {
                        "request_id": rid,
                        "deployment": name,
                        truth_field: sent[rid],
                        "observed_at": int(time.time() * 1000),
                    }
                    key = feedback_key if feedback_key is not None else name.encode()
                    await producer.send(
                        Settings().topics.name(Topic.FEEDBACK), orjson.dumps(feedback), key=key
                    )
                    labelled.add(rid)
            await producer.flush()
        raise AssertionError(f"{name}: no decision within {timeout_s}s")
    finally:
        await comparisons.stop()


async def _wait_state(settings: Settings, name: str, timeout_s: float = 30) -> DeploymentState:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = await _state(settings, name)
        if state is not None:
            return state
        await asyncio.sleep(0.2)
    raise AssertionError(f"no state for {name}")


async def test_three_kinds_at_once_created_live(
    services: list[RolloutProcess],
    kafka_bootstrap: str,
    store: Path,
    settings: Settings,
    producer: AIOKafkaProducer,
    tmp_path: Path,
) -> None:
    iris, churn, digits = f"iris-{RUN}", f"churn-{RUN}", f"digits-{RUN}"
    _create(kafka_bootstrap, store, tmp_path, iris, sm.iris_like(tmp_path / "i1", seed=1).path)
    _create(
        kafka_bootstrap,
        store,
        tmp_path,
        churn,
        sm.churn(tmp_path / "c1").path,
        "--labels",
        "stays,leaves",
    )
    _create(kafka_bootstrap, store, tmp_path, digits, sm.digits(tmp_path / "d1").path)
    for name in (iris, churn, digits):
        assert (await _wait_state(settings, name)).epoch == 0
    listed = _rollout(kafka_bootstrap, store, "deployments", "list")
    assert iris in listed and "image float32[8, 8]" in listed

    # stable: the two-input model is served, its trace header carried onto the prediction
    predictions = await Tail(settings).start()
    tenure, city, _ = sm.churn_requests(20)
    rows = [{"tenure": float(t), "city": str(c)} for t, c in zip(tenure, city, strict=True)]
    ids = await _send(producer, churn, rows, "stable", headers=[("traceparent", b"00-1-2-01")])
    seen: dict[str, Any] = {}
    deadline = time.monotonic() + 30
    while len(seen) < len(ids) and time.monotonic() < deadline:
        for r in await predictions.poll(500):
            p = orjson.loads(r.value)
            if p["request_id"] in ids:
                seen[p["request_id"]] = (p, list(r.headers))
    await predictions.stop()
    assert set(seen) == set(ids)
    assert all(p["output"]["label"] in ("stays", "leaves") for p, _ in seen.values())
    assert all(("traceparent", b"00-1-2-01") in h for _, h in seen.values())

    # canary: a better-trained 3-class version, promoted on label accuracy
    better = sm.iris_like(tmp_path / "i2", seed=2).path
    assert "version 2" in _rollout(kafka_bootstrap, store, "publish", iris, str(better))
    _rollout(kafka_bootstrap, store, "deploy", iris, "2", "--mode", "canary")
    x, y = sm.iris_requests(200)
    final = await _until_decided(
        settings, producer, iris, [r.tolist() for r in x], list(y), "label"
    )
    assert final.production.version == "2", final.reason

    # shadow: a tensor-input version trained on shuffled labels, turned down on accuracy
    worse = sm.digits(tmp_path / "d2", good=False).path
    _rollout(kafka_bootstrap, store, "publish", digits, str(worse))
    _rollout(kafka_bootstrap, store, "deploy", digits, "2", "--mode", "shadow")
    images, labels = sm.digits_requests(200)
    final = await _until_decided(
        settings,
        producer,
        digits,
        [{"image": i.tolist()} for i in images],
        [str(v) for v in labels],
        "label",
    )
    assert final.production.version == "1", final.reason
    assert "worse than production" in final.reason, final.reason


async def test_regressor_shadow_comparisons_agree_within_the_tolerance(
    services: list[RolloutProcess],
    kafka_bootstrap: str,
    store: Path,
    settings: Settings,
    producer: AIOKafkaProducer,
    tmp_path: Path,
) -> None:
    price = f"price-{RUN}"
    _create(
        kafka_bootstrap,
        store,
        tmp_path,
        price,
        sm.regressor(tmp_path / "p1").path,
        "--tolerance",
        "0.3",
        "--error-cap",
        "10",
    )
    await _wait_state(settings, price)
    _rollout(
        kafka_bootstrap,
        store,
        "publish",
        price,
        str(sm.regressor(tmp_path / "p2", good=False).path),
    )
    _rollout(kafka_bootstrap, store, "deploy", price, "2", "--mode", "shadow")
    comparisons = await Tail(settings, settings.topics.name(Topic.COMPARISONS)).start()
    x, _ = sm.regression_requests(100)
    ids = set(await _send(producer, price, [r.tolist() for r in x], "cmp"))
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + 40
    while len(found) < len(ids) and time.monotonic() < deadline:
        for r in await comparisons.poll(500):
            c = orjson.loads(r.value)
            if c.get("request_id") in ids:
                found.append(c)
    await comparisons.stop()
    assert len(found) == len(ids)
    for c in found:
        p, q = c["production"]["output"]["values"], c["candidate"]["output"]["values"]
        assert c["agree"] == (abs(q[0] - p[0]) <= 0.3)
        assert c["score_delta"] == pytest.approx(q[0] - p[0])
    assert {c["agree"] for c in found} == {True, False}  # the tolerance is what tells


async def test_regressor_rolled_back_on_value_feedback(
    services: list[RolloutProcess],
    kafka_bootstrap: str,
    store: Path,
    settings: Settings,
    producer: AIOKafkaProducer,
    tmp_path: Path,
) -> None:
    price = f"price-fb-{RUN}"
    _create(
        kafka_bootstrap,
        store,
        tmp_path,
        price,
        sm.regressor(tmp_path / "p1").path,
        "--tolerance",
        "0.05",
        # The margin (0.05) is on the capped-loss scale: with a cap of 1 it is 0.05 in the
        # target's units, and the worse version (mean error ~0.45 against ~0.08) is beyond it.
        "--error-cap",
        "1",
    )
    await _wait_state(settings, price)
    worse = sm.regressor(tmp_path / "p2", good=False).path
    _rollout(kafka_bootstrap, store, "publish", price, str(worse))
    _rollout(kafka_bootstrap, store, "deploy", price, "2", "--mode", "canary")
    x, y = sm.regression_requests(200)
    final = await _until_decided(
        settings,
        producer,
        price,
        [r.tolist() for r in x],
        [float(v) for v in y],
        "value",
        timeout_s=90,
    )
    assert final.production.version == "1", final.reason
    assert "worse than production" in final.reason, final.reason


async def test_feedback_keyed_by_something_else_still_reaches_its_rollout(
    services: list[RolloutProcess],
    kafka_bootstrap: str,
    store: Path,
    settings: Settings,
    producer: AIOKafkaProducer,
    tmp_path: Path,
) -> None:
    """Every label keyed by a request id (a common mistake) lands on a partition that is not
    the deployment's: its analyst re-keys it, and the rollout is decided on it."""
    name = f"iris-key-{RUN}"
    _create(kafka_bootstrap, store, tmp_path, name, sm.iris_like(tmp_path / "i1", seed=1).path)
    await _wait_state(settings, name)
    count = len(await producer.partitions_for(settings.topics.name(Topic.FEEDBACK)))
    key = next(
        k
        for k in (f"req-{n}".encode() for n in range(100))
        if keyed_partition(k, count) != partition_for(name, count)
    )
    worse = sm.iris_like(tmp_path / "i2", seed=2, good=False).path
    _rollout(kafka_bootstrap, store, "publish", name, str(worse))
    _rollout(kafka_bootstrap, store, "deploy", name, "2", "--mode", "canary")
    x, y = sm.iris_requests(200)
    final = await _until_decided(
        settings, producer, name, [r.tolist() for r in x], list(y), "label", feedback_key=key
    )
    assert final.production.version == "1", final.reason
    assert "worse than production" in final.reason, final.reason
    services[0].wait_for(f"feedback for {name} keyed", timeout_s=5)
