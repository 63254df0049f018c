"""Integration fixtures: a model store the tests may tamper with, and a controller process."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from app.harness.processes import CONTROLLER_READY, RolloutProcess
from tests.builders import controller_process

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
