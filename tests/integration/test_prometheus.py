"""A real Prometheus (Debian's ``prometheus`` package) scrapes a real worker and controller on
the real broker, with the repository's alert rules loaded; after traffic and a rollout (a
canary deployed, then rolled back by an operator), its HTTP API answers for
``rollout_predictions_total``, the decision counters, and the ``RolloutRolledBack`` alert.
Without the binary the test skips, unless ``ROLLOUT_REQUIRE_PROMETHEUS=1`` (CI)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiokafka import AIOKafkaProducer

from app.core.events import Action, Mode
from app.harness.processes import RolloutProcess
from app.harness.traffic import make_requests, send
from app.settings import Settings
from tests.builders import controller_process, running_workers
from tests.integration.control import command, reset_fraud

pytestmark = pytest.mark.kafka

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "rules.yml"


def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        message = "no prometheus (apt-get install prometheus)"
        if os.environ.get("ROLLOUT_REQUIRE_PROMETHEUS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    return {"controller": free_port(), "worker": free_port(), "prometheus": free_port()}


@pytest.fixture(scope="module")
def services(
    kafka_bootstrap: str,
    model_store: Path,
    tmp_path_factory: pytest.TempPathFactory,
    ports: dict[str, int],
) -> Iterator[tuple[RolloutProcess, RolloutProcess]]:
    logs = tmp_path_factory.mktemp("prometheus-services")
    controller = controller_process(
        kafka_bootstrap,
        logs,
        name="prom",
        ROLLOUT_MODEL_STORE=str(model_store),
        ROLLOUT_HOME=str(logs),
        ROLLOUT_DASHBOARD_PORT=str(ports["controller"]),
    ).start()
    try:
        controller.wait_ready(ports["controller"])
        with running_workers(
            kafka_bootstrap,
            ["prom-1"],
            logs,
            ROLLOUT_MODEL_STORE=str(model_store),
            ROLLOUT_METRICS_PORT=str(ports["worker"]),
        ) as (worker,):
            worker.wait_ready(ports["worker"])
            yield controller, worker
    finally:
        controller.terminate()


@pytest.fixture(scope="module")
def prometheus(
    services: object, tmp_path_factory: pytest.TempPathFactory, ports: dict[str, int]
) -> Iterator[str]:
    home = tmp_path_factory.mktemp("prometheus")
    shutil.copy(RULES, home / "rules.yml")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules.yml"],
        "scrape_configs": [
            {
                "job_name": "rollout-workers",
                "static_configs": [{"targets": [f"127.0.0.1:{ports['worker']}"]}],
            },
            {
                "job_name": "rollout-controller",
                "static_configs": [{"targets": [f"127.0.0.1:{ports['controller']}"]}],
            },
        ],
    }
    (home / "prometheus.yml").write_text(yaml.safe_dump(config))
    address = f"127.0.0.1:{ports['prometheus']}"
    with (home / "prometheus.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                prometheus_binary(),
                f"--config.file={home / 'prometheus.yml'}",
                f"--storage.tsdb.path={home / 'data'}",
                f"--web.listen-address={address}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=home,
        )
    try:
        url = f"http://{address}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, (home / "prometheus.log").read_text()
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def api(url: str, path: str, **params: str) -> Any:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    with urllib.request.urlopen(f"{url}/api/v1/{path}{query}", timeout=10) as r:
        body = orjson.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]


async def query_until(
    url: str, promql: str, timeout_s: float = 60, least: int = 1
) -> list[dict[str, Any]]:
    """The query's result once it has at least ``least`` series."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result: list[dict[str, Any]] = (await asyncio.to_thread(api, url, "query", query=promql))[
            "result"
        ]
        if len(result) >= least:
            return result
        await asyncio.sleep(1)
    raise AssertionError(f"no result for {promql} within {timeout_s}s")


async def test_prometheus_scrapes_both_and_sees_a_rollout(
    prometheus: str, settings_: Settings, producer: AIOKafkaProducer
) -> None:
    # Both targets: Prometheus scrapes them on their own schedules, so the first answer may
    # hold only one (the test raced the second scrape).
    targets = await query_until(prometheus, 'up{job=~"rollout-.*"} == 1', least=2)
    assert {t["metric"]["job"] for t in targets} == {"rollout-workers", "rollout-controller"}
    groups = api(prometheus, "rules")["groups"]
    alerts = {rule["name"] for g in groups for rule in g["rules"]}
    assert {"RolloutControllerAbsent", "RolloutGuardrailFailed", "RolloutRolledBack"} <= alerts

    await reset_fraud(settings_)
    await send(producer, make_requests(300, seed=11, run_id=f"prom-{time.time_ns()}"))
    deployed = await command(settings_, Action.DEPLOY, version="2", mode=Mode.CANARY, weight=0.2)
    assert deployed.accepted, deployed.reason
    await send(producer, make_requests(300, seed=12, run_id=f"prom-{time.time_ns()}"))
    rolled_back = await command(settings_, Action.ROLLBACK, reason="prometheus test")
    assert rolled_back.accepted, rolled_back.reason

    served = await query_until(
        prometheus, 'sum by (version) (rollout_predictions_total{deployment="fraud"}) > 0'
    )
    assert {s["metric"]["version"] for s in served} >= {"1"}
    decisions = await query_until(
        prometheus,
        'rollout_decisions_total{deployment="fraud",action="rollback",accepted="true"} > 0',
    )
    assert decisions[0]["metric"]["decided_by"] == "tests"
    firing = await query_until(
        prometheus, 'ALERTS{alertname="RolloutRolledBack",deployment="fraud",alertstate="firing"}'
    )
    assert firing[0]["metric"]["decided_by"] == "tests"
