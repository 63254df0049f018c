"""Integration fixtures: a model store the tests may tamper with, settings pointed at it and
the session's broker, a producer, a controller process, and `clean` (fraud at v1, nothing
in flight, before and after a test)."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from app.adapters.kafka_clients import plain_producer
from app.harness.processes import CONTROLLER_READY, RolloutProcess
from app.settings import Settings
from tests.builders import controller_process
from tests.integration.control import reset_fraud

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of ``models/`` plus version ``4`` of ``fraud``: version 2's manifest over a model
    file with one byte changed after the manifest was written (a tampered artifact)."""
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(REPO / "models" / "fraud", root / "fraud")
    tampered = root / "fraud" / "4"
    shutil.copytree(root / "fraud" / "2", tampered)
    manifest = orjson.loads((tampered / "model.json").read_bytes())
    manifest["version"] = "4"
    (tampered / "model.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    blob = bytearray((tampered / "model.onnx").read_bytes())
    blob[-1] ^= 0x01
    (tampered / "model.onnx").write_bytes(bytes(blob))
    return root


@pytest.fixture(scope="module")
def settings_(kafka_bootstrap: str, model_store: Path) -> Settings:
    """Settings for the session's broker and the tamperable model store."""
    return Settings(bootstrap_servers=kafka_bootstrap, model_store=model_store)


@pytest.fixture(scope="module")
async def producer(settings_: Settings) -> AsyncIterator[AIOKafkaProducer]:
    """A plain (idempotent, non-transactional) producer, stopped after the module."""
    p = plain_producer(settings_)
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


@pytest.fixture(scope="module")
def controller(
    kafka_bootstrap: str, model_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RolloutProcess]:
    logs = tmp_path_factory.mktemp("controller")
    proc = controller_process(
        kafka_bootstrap, logs, ROLLOUT_MODEL_STORE=str(model_store), ROLLOUT_HOME=str(logs)
    ).start()
    try:
        proc.wait_for(CONTROLLER_READY)
        yield proc
    finally:
        proc.terminate()


@pytest.fixture
async def clean(controller: RolloutProcess, settings_: Settings) -> AsyncIterator[None]:
    """Each test starts, and leaves the deployment, with production v1 and no candidate."""
    await reset_fraud(settings_)
    yield
    await reset_fraud(settings_)
