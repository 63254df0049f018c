"""Artifacts reach a worker through Kafka alone, on the real broker: a controller with its own
model store and a worker whose store starts EMPTY (no shared files). A deployment created
with the CLI on the controller's host is served by the worker; versions deployed later are
fetched and served; a tampered chunk is refused (never served, reported); versions no state
refers to are tombstoned after the grace period and the worker unloads them."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from app.adapters.artifact_cache import ArtifactCache, upload_version
from app.adapters.control_client import current_states, send_command
from app.adapters.kafka_clients import plain_producer
from app.adapters.model_store import ModelStore
from app.adapters.partitioning import partition_for
from app.adapters.publishing import publish
from app.core.artifacts import chunk_key
from app.core.events import Action, ControlCommand, DeploymentState, Mode, Prediction
from app.core.topics import Topic
from app.harness.processes import CONTROLLER_READY, RolloutProcess
from app.settings import Settings
from app.training import model_kinds as sm
from tests.builders import controller_process, running_workers
from tests.integration.control import cli
from tests.integration.outputs import Tail

pytestmark = pytest.mark.kafka
RUN = uuid.uuid4().hex[:6]
NAME = f"far-{RUN}"
# Long enough for the test to deploy a version it has just put on the topic (a version no
# state refers to yet is retired after the grace, too), short enough to watch retirements.
GRACE_S = 6


@pytest.fixture(scope="module")
def hosts(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, Path, RolloutProcess, RolloutProcess]]:
    """The controller's store, the worker's (empty) cache, the controller, the worker."""
    ctl_store = tmp_path_factory.mktemp("ctl-store")
    wk_store = tmp_path_factory.mktemp("wk-store")
    logs = tmp_path_factory.mktemp("far-logs")
    controller = controller_process(
        kafka_bootstrap,
        logs,
        name="far",
        ROLLOUT_MODEL_STORE=str(ctl_store),
        ROLLOUT_ARTIFACT_CACHE=str(tmp_path_factory.mktemp("ctl-cache")),
        ROLLOUT_HOME=str(logs),
        ROLLOUT_ARTIFACT_GRACE_S=str(GRACE_S),
    ).start()
    try:
        controller.wait_for(CONTROLLER_READY)
        # The worker's host: an empty seed, and its own cache (what it fetches lands there).
        env = {
            "ROLLOUT_MODEL_STORE": str(tmp_path_factory.mktemp("wk-seed")),
            "ROLLOUT_ARTIFACT_CACHE": str(wk_store),
            "ROLLOUT_HOME": str(logs),
        }
        with running_workers(kafka_bootstrap, [f"far-{RUN}"], logs, **env) as workers:
            yield ctl_store, wk_store, controller, workers[0]
    finally:
        controller.terminate()


async def _serve(
    settings: Settings, producer: AIOKafkaProducer, tag: str, n: int = 40
) -> list[Prediction]:
    """Send ``n`` requests for the deployment; its committed predictions."""
    tail = await Tail(settings).start()
    rows, _ = sm.iris_requests(n)
    prefix = f"{NAME}-{tag}"
    for i, row in enumerate(rows.tolist()):
        body = {"request_id": f"{prefix}-{i}", "deployment": NAME, "features": row}
        await producer.send(
            settings.topics.name(Topic.REQUESTS), orjson.dumps(body), key=f"e{i}".encode()
        )
    await producer.flush()
    found: dict[str, Prediction] = {}
    deadline = time.monotonic() + 90
    try:
        while len(found) < n and time.monotonic() < deadline:
            for record in await tail.poll(500):
                prediction = Prediction.model_validate_json(record.value)
                if prediction.request_id.startswith(prefix):
                    found[prediction.request_id] = prediction
    finally:
        await tail.stop()
    assert len(found) == n, f"{len(found)} of {n} predictions"
    return list(found.values())


async def _state(settings: Settings, epoch_above: int = -1) -> DeploymentState:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = (await current_states(settings)).get(NAME)
        if state is not None and state.epoch > epoch_above:
            return state
        await asyncio.sleep(0.2)
    raise AssertionError(f"no state of {NAME} past epoch {epoch_above}")


def _cli(bootstrap: str, store: Path, *args: str) -> str:
    result = cli(bootstrap, *args, env={"ROLLOUT_MODEL_STORE": str(store)})
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


async def _until(what: str, check: object, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"not within {timeout_s}s: {what}")


async def _taken(settings: Settings, worker: RolloutProcess) -> DeploymentState:
    """The deployment's latest state, once the worker routes by it."""
    state = await _state(settings)
    mark = f"deployment {NAME}: epoch {state.epoch},"

    async def taken() -> bool:
        return mark in worker.log()

    await _until(f"the worker takes epoch {state.epoch}", taken)
    return state


async def test_an_empty_store_worker_serves_fetches_refuses_and_frees(
    kafka_bootstrap: str,
    hosts: tuple[Path, Path, RolloutProcess, RolloutProcess],
    tmp_path: Path,
) -> None:
    ctl_store, wk_store, controller, worker = hosts
    settings = Settings(bootstrap_servers=kafka_bootstrap, model_store=ctl_store)
    models = [sm.iris_like(tmp_path / f"m{v}", seed=v).path for v in (1, 2, 3, 4)]
    producer = plain_producer(settings)
    await producer.start()
    try:
        # Created on the controller's host: the worker has nothing of it but Kafka.
        _cli(kafka_bootstrap, ctl_store, "deployments", "create", NAME, "--model", str(models[0]))
        v1 = ModelStore(ctl_store).manifest(NAME, "1")
        await _taken(settings, worker)
        served = await _serve(settings, producer, "v1")
        assert {(p.model.version, p.model.sha256) for p in served} == {("1", v1.sha256)}
        assert ModelStore(wk_store).stored_sha256(NAME, "1") == v1.sha256

        # Versions 2 and 3 published in the controller's store only, made production in
        # turn: the controller puts each on the topic, the worker fetches and serves it.
        for version, model in (("2", models[1]), ("3", models[2])):
            publish(ModelStore(ctl_store), NAME, model, version=version)
            _cli(kafka_bootstrap, ctl_store, "deploy", NAME, version, "--mode", "automatic")
            sha = ModelStore(ctl_store).manifest(NAME, version).sha256
            await _taken(settings, worker)
            served = await _serve(settings, producer, f"v{version}")
            assert {(p.model.version, p.model.sha256) for p in served} == {(version, sha)}

        # Version 1 is neither production (3) nor the rollback target (2): the worker has
        # unloaded it, and the controller tombstones it after the grace period.
        assert f"unloaded {NAME} v1" in worker.log()
        cache = ArtifactCache(settings, ModelStore(tmp_path / "probe"))

        async def retired(version: str) -> bool:
            inventory = (await cache.inventory([NAME]))[NAME]
            return version not in inventory.versions() and "3" in inventory.versions()

        await _until("v1 retired", lambda: retired("1"), timeout_s=GRACE_S + 30)
        assert f"retired {NAME} v1" in controller.log()

        # Version 4 on the topic with a tampered chunk (a later record under its key), the
        # controller holding the true file: the worker refuses it and serves production.
        publish(ModelStore(ctl_store), NAME, models[3], version="4")
        v4 = ModelStore(ctl_store).manifest(NAME, "4")
        data = (ctl_store / NAME / "4" / "model.onnx").read_bytes()
        await upload_version(producer, settings, v4, data, chunk_bytes=64)
        topic = settings.topics.name(Topic.ARTIFACTS)
        partition = partition_for(NAME, len(await producer.partitions_for(topic)))
        await producer.send_and_wait(
            topic, b"\x00" * 64, key=chunk_key(NAME, "4", 0), partition=partition
        )
        decision = await send_command(
            settings,
            ControlCommand(
                command_id=uuid.uuid4().hex,
                deployment=NAME,
                action=Action.DEPLOY,
                version="4",
                mode=Mode.CANARY,
                weight=1.0,
                issued_by="tests",
            ),
            timeout_s=30,
        )
        assert decision is not None and decision.accepted, decision
        state = await _taken(settings, worker)
        assert state.candidate is not None and state.candidate.version == "4"
        served = await _serve(settings, producer, "v4")
        assert {p.model.version for p in served} == {"3"}  # production serves everything
        assert {p.epoch for p in served} == {state.epoch}
        assert "refused" in worker.log() and "taken without its candidate 4" in worker.log()
        assert ModelStore(wk_store).stored_sha256(NAME, "4") is None

        # Rolled back: version 4 is referred to by no state, and is retired in its turn.
        _cli(kafka_bootstrap, ctl_store, "rollback", NAME)
        await _until("v4 retired", lambda: retired("4"), timeout_s=GRACE_S + 30)
    finally:
        await producer.stop()
