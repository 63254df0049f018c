"""The dashboard in a real browser (Debian's chromium, driven by Playwright) against a real
controller and worker on the real broker: a canary's weight rises on the page as the
controller advances it, a click on "pause" (confirmed) pauses the rollout, and an automatic
rollback shows in the timeline with its reason. The controller's API needs a token: the page
asks for it once, and the pause is issued by the token's identity. Also: both processes serve
``/metrics`` without one.

The browser is never downloaded: ``ROLLOUT_CHROMIUM`` or ``chromium`` on the PATH. Without
one the test skips, unless ``ROLLOUT_REQUIRE_BROWSER=1`` (CI) makes that a failure.
Screenshots go to ``artifacts/`` (git-ignored).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from playwright.async_api import Locator

from app.core.events import Action, Mode, Phase
from app.harness.processes import RolloutProcess
from app.harness.traffic import make_requests, send
from app.settings import Settings
from tests.builders import controller_process, running_workers
from tests.integration.control import command, reset_fraud, state

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts"
SMALL_STEPS = {"min_samples_per_step": 40}
OPERATOR = "dash-operator"
TOKEN = f"token-{uuid.uuid4().hex}"


def chromium_path() -> str:
    path = os.environ.get("ROLLOUT_CHROMIUM") or shutil.which("chromium")
    if path is None:
        message = "no chromium (apt-get install chromium, or set ROLLOUT_CHROMIUM)"
        if os.environ.get("ROLLOUT_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read()
        return body.decode()


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    return {"dashboard": free_port(), "metrics": free_port()}


@pytest.fixture(scope="module")
def dashboard_controller(
    kafka_bootstrap: str,
    model_store: Path,
    tmp_path_factory: pytest.TempPathFactory,
    ports: dict[str, int],
) -> Iterator[RolloutProcess]:
    logs = tmp_path_factory.mktemp("dashboard")
    proc = controller_process(
        kafka_bootstrap,
        logs,
        name="dash",
        ROLLOUT_MODEL_STORE=str(model_store),
        ROLLOUT_HOME=str(logs),
        ROLLOUT_DASHBOARD_PORT=str(ports["dashboard"]),
        ROLLOUT_API_TOKENS=f"{OPERATOR}:operator:{TOKEN}",
    ).start()
    try:
        proc.wait_ready(ports["dashboard"])
        yield proc
    finally:
        proc.terminate()


@pytest.fixture(scope="module")
def worker(
    kafka_bootstrap: str,
    model_store: Path,
    tmp_path_factory: pytest.TempPathFactory,
    ports: dict[str, int],
) -> Iterator[RolloutProcess]:
    logs = tmp_path_factory.mktemp("dashboard-worker")
    with running_workers(
        kafka_bootstrap,
        ["dash-1"],
        logs,
        ROLLOUT_MODEL_STORE=str(model_store),
        ROLLOUT_METRICS_PORT=str(ports["metrics"]),
    ) as procs:
        procs[0].wait_ready(ports["metrics"])
        yield procs[0]


@contextlib.asynccontextmanager
async def traffic(producer: AIOKafkaProducer, rate: float = 300.0) -> AsyncIterator[None]:
    """Requests at ``rate`` per second until the block ends."""

    async def run() -> None:
        n = 0
        while True:
            await send(producer, make_requests(150, seed=n, run_id=f"dash-{time.time_ns()}"), rate)
            n += 1

    task = asyncio.create_task(run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def newest(
    timeline: Locator, action: str, after_epoch: int, timeout_s: float = 30
) -> Locator:
    """The newest decision ``action`` in the page's timeline from an epoch after
    ``after_epoch`` (the timeline also holds earlier tests' rollouts), once it shows."""
    item = timeline.locator(f"[data-action={action}]").first
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await item.count():
            epoch = await item.get_attribute("data-epoch")
            if epoch is not None and int(epoch) > after_epoch:
                return item
        await asyncio.sleep(0.2)
    raise AssertionError(f"no {action} after epoch {after_epoch} on the page within {timeout_s}s")


async def test_dashboard_follows_a_canary_pauses_it_and_shows_a_rollback(
    dashboard_controller: RolloutProcess,
    worker: RolloutProcess,
    settings_: Settings,
    producer: AIOKafkaProducer,
    ports: dict[str, int],
) -> None:
    from playwright.async_api import Page, async_playwright, expect

    executable = chromium_path()
    ARTIFACTS.mkdir(exist_ok=True)
    await reset_fraud(settings_)
    deployed = await command(
        settings_, Action.DEPLOY, version="2", mode=Mode.CANARY, weight=0.1, policy=SMALL_STEPS
    )
    assert deployed.accepted, deployed.reason
    url = f"http://127.0.0.1:{ports['dashboard']}/"
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=executable,
            headless=True,
            args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
        )
        try:
            page: Page = await browser.new_page(viewport={"width": 1400, "height": 1000})
            dialogs: list[str] = []

            async def accept(dialog: object) -> None:
                dialogs.append(dialog.message)  # type: ignore[attr-defined]
                await dialog.accept()  # type: ignore[attr-defined]

            page.on("dialog", accept)
            await page.goto(url)
            # 0. The API needs a token: the page asks for it once and keeps it for the tab.
            await expect(page.get_by_test_id("login")).to_be_visible(timeout=15_000)
            await page.get_by_test_id("token").fill(TOKEN)
            await page.get_by_test_id("login-button").click()
            await expect(page.get_by_test_id("login")).to_be_hidden()
            card = page.get_by_test_id("deployment-fraud")
            weight = card.get_by_test_id("weight")
            await expect(card.get_by_test_id("candidate")).to_have_text("v2", timeout=15_000)
            await expect(weight).to_have_text("10%")

            # 1. The weight rises on the page, without a reload, as the controller advances.
            seen: list[str] = []
            async with traffic(producer):
                deadline = time.monotonic() + 90
                while time.monotonic() < deadline:
                    text = await weight.text_content() or ""
                    if not seen or seen[-1] != text:
                        seen.append(text)
                    if text not in ("10%", ""):
                        break
                    await asyncio.sleep(0.1)
            assert len(seen) >= 2 and seen[0] == "10%", seen
            risen = int(seen[-1].rstrip("%"))
            assert risen > 10, seen
            timeline = card.get_by_test_id("timeline")
            advance = await newest(timeline, "advance", after_epoch=deployed.epoch)
            await expect(advance).to_contain_text("advancing to")
            assert (
                await card.get_by_test_id("agreement").text_content()
            ) != "\u2013"  # the "no data" dash
            await page.screenshot(path=str(ARTIFACTS / "dashboard-canary.png"), full_page=True)

            # 2. "Pause", confirmed in the browser's dialog, pauses the rollout.
            await card.get_by_test_id("btn-pause").click()
            await expect(card.get_by_test_id("phase")).to_have_text("paused", timeout=20_000)
            assert dialogs and "pause fraud" in dialogs[0]
            st = await state(settings_)
            assert st.phase is Phase.PAUSED and st.candidate is not None
            assert st.candidate.version == "2"
            paused = await newest(timeline, "pause", deployed.epoch)
            await expect(paused).to_contain_text(f"by {OPERATOR}")

            # 3. A degraded candidate is rolled back; the timeline says why.
            assert (await command(settings_, Action.ABORT)).accepted
            deployed = await command(
                settings_,
                Action.DEPLOY,
                version="3",
                mode=Mode.CANARY,
                weight=0.5,
                policy=SMALL_STEPS,
            )
            assert deployed.accepted, deployed.reason
            await expect(card.get_by_test_id("candidate")).to_have_text("v3", timeout=15_000)
            async with traffic(producer):
                rollback = await newest(timeline, "rollback", deployed.epoch, timeout_s=90)
            await expect(rollback.get_by_test_id("reason")).to_contain_text(
                "disagreement with production"
            )
            await expect(card.get_by_test_id("candidate")).to_have_text("none")
            await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        finally:
            await browser.close()
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
    final = await state(settings_)
    assert final.candidate is None and final.production.version == "1"


async def test_worker_and_controller_serve_metrics(
    dashboard_controller: RolloutProcess,
    worker: RolloutProcess,
    producer: AIOKafkaProducer,
    settings_: Settings,
    ports: dict[str, int],
) -> None:
    await send(producer, make_requests(200, seed=1, run_id=f"metrics-{time.time_ns()}"))
    # The fixtures waited for /readyz: the servers are up, so no read below races them.
    deadline = time.monotonic() + 30
    text = ""
    while time.monotonic() < deadline:
        text = await asyncio.to_thread(http_get, f"http://127.0.0.1:{ports['metrics']}/metrics")
        if 'rollout_predictions_total{deployment="fraud",role="production",version="1"}' in text:
            break
        await asyncio.sleep(0.5)
    for name in (
        "rollout_requests_total",
        'rollout_predictions_total{deployment="fraud",role="production",version="1"}',
        "rollout_inference_latency_seconds_bucket",
        "rollout_end_to_end_latency_seconds_bucket",
        "rollout_batch_size_records_bucket",
        "rollout_consumer_lag_records",
        'rollout_deployment_epoch{deployment="fraud"}',
    ):
        assert name in text, name
    controller = await asyncio.to_thread(http_get, f"http://127.0.0.1:{ports['dashboard']}/metrics")
    assert 'rollout_deployment_mode{deployment="fraud",mode="' in controller
    assert "rollout_decisions_total{" in controller


@pytest.mark.parametrize("process", ["worker", "controller"])
async def test_health_probes_answer_without_a_token(
    dashboard_controller: RolloutProcess,
    worker: RolloutProcess,
    ports: dict[str, int],
    process: str,
) -> None:
    port = ports["metrics" if process == "worker" else "dashboard"]
    for path in ("/healthz", "/readyz"):
        body = orjson.loads(await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}{path}"))
        assert body["ok"] is True and body["reasons"] == [], body
    ready = orjson.loads(await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/readyz"))
    if process == "worker":
        assert ready["joined"] and ready["models_loaded"]
    else:
        assert ready["partitions"] == ready["restored"] and ready["partitions"], ready
