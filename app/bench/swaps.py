"""``rollout bench``'s model swaps, with a real controller and worker: 20 ``promote``s (and
20 ``rollback``s) under open-loop load, the time from sending each to the first committed
prediction by the new version, and the requests lost or answered twice over the whole run
(read with ``read_committed``). Also the pieces the pace phase shares: the services, CPU
seconds per process, commands that must be accepted.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer

from app.adapters.control_client import send_command
from app.adapters.kafka_clients import (
    assign_at_end,
    plain_producer,
    reader,
    stop_following,
)
from app.adapters.process_stats import cpu_seconds
from app.bench.report import SwapReport
from app.bench.setup import broker_pid
from app.core.events import (
    Action,
    ControlCommand,
    DecisionEvent,
    Mode,
)
from app.core.topics import Topic
from app.harness.processes import Services
from app.harness.rollout_scenarios import HANDS_OFF, reset
from app.harness.traffic import make_requests, send
from app.settings import Settings

Progress = Callable[[str], None]


def bench_services(settings: Settings, group_id: str) -> Services:
    """A controller and one worker for the swaps and the pace phase. The pace phase wants
    every comparison: no shedding of shadow scoring behind a backlog; no dashboard. The
    worker's group is ``group_id``: one whose offsets start at the requests topic's end
    (``setup.fresh_group``), or it would first serve every earlier line's requests (a full
    run's ramps write two million)."""
    return Services(
        settings,
        workers=1,
        name="bench",
        ROLLOUT_SHADOW_SHED_LAG="1000000000",
        ROLLOUT_DASHBOARD_PORT="0",
        ROLLOUT_GROUP_ID=group_id,
    )


class ProcessCpu:
    """CPU seconds of the broker, the worker and the controller between start and read."""

    def __init__(self, settings: Settings, services: Services) -> None:
        pids = {
            "controller": services.procs["controller"].pid,
            "worker": services.procs["worker-1"].pid,
        }
        broker = broker_pid(settings)
        if broker is not None:
            pids["broker"] = broker
        self._pids = pids
        self._start = self._now()

    def _now(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) or 0.0 for name, pid in self._pids.items()}

    def read(self) -> dict[str, float]:
        now = self._now()
        return {name: now[name] - self._start[name] for name in now}


class _Predictions:
    """Committed predictions of one run, read as they come: request id → [(epoch, version,
    when this reader saw it, ms)], and when each (epoch, version) was first seen."""

    def __init__(self, settings: Settings, run: str) -> None:
        self._settings = settings
        self._needle = run.encode()
        self.seen: dict[str, list[tuple[int, str, float]]] = {}
        self._first: dict[tuple[int, str], float] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._consumer = reader(self._settings)
        await self._consumer.start()
        await assign_at_end(self._consumer, self._settings.topics.name(Topic.PREDICTIONS))
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            batch = await self._consumer.getmany(timeout_ms=100)
            now = time.time() * 1000
            for records in batch.values():
                for r in records:
                    if self._needle in r.value:
                        p = orjson.loads(r.value)
                        served = (p["epoch"], p["model"]["version"])
                        self.seen.setdefault(p["request_id"], []).append((*served, now))
                        self._first.setdefault(served, now)

    async def first_by(self, epoch: int, version: str, timeout_s: float = 30.0) -> float:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            first = self._first.get((epoch, version))
            if first is not None:
                return first
            await asyncio.sleep(0.02)
        raise TimeoutError(f"no prediction by version {version} at epoch {epoch}")

    async def stop(self) -> None:
        await stop_following(self._task, self._consumer)


async def command(settings: Settings, action: Action, **fields: Any) -> DecisionEvent:
    command = ControlCommand(
        command_id=uuid.uuid4().hex,
        deployment="fraud",
        action=action,
        issued_by="bench",
        reason="rollout bench",
        **fields,
    )
    decision = await send_command(settings, command)
    if decision is None or not decision.accepted:
        raise RuntimeError(
            f"{action} was not accepted: {decision.reason if decision else 'no answer'}"
        )
    return decision


async def ready(settings: Settings, services: Services, timeout_s: float = 60.0) -> None:
    """Wait until the controller answers (its reset commands) and the worker serves."""
    deadline = time.monotonic() + timeout_s
    while True:
        services.check()
        try:
            await reset(settings)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(1.0)
    run = f"ready-{uuid.uuid4().hex[:6]}"
    answers = _Predictions(settings, run)
    await answers.start()
    producer = plain_producer(settings)
    await producer.start()
    try:
        probe = make_requests(1, seed=1, run_id=run)
        while not answers.seen:
            services.check()
            if time.monotonic() > deadline:
                raise TimeoutError("the worker answered no probe request")
            await send(producer, probe, topic=settings.topics.name(Topic.REQUESTS))
            await asyncio.sleep(0.5)
    finally:
        await producer.stop()
        await answers.stop()


async def swaps_under_load(
    settings: Settings, services: Services, rate: float, swaps: int, progress: Progress
) -> SwapReport:
    run = f"swaps-{uuid.uuid4().hex[:6]}"
    answers = _Predictions(settings, run)
    await answers.start()
    producer = plain_producer(settings)
    await producer.start()
    sent: list[str] = []
    stop = asyncio.Event()

    async def load() -> None:
        chunk = 0
        while not stop.is_set():
            batch = make_requests(max(int(rate / 2), 1), seed=chunk, run_id=f"{run}-{chunk}")
            await send(producer, batch, rate=rate, topic=settings.topics.name(Topic.REQUESTS))
            sent.extend(r.request.request_id for r in batch)
            chunk += 1

    cpu = ProcessCpu(settings, services)
    started = time.monotonic()
    promote_ms: list[float] = []
    rollback_ms: list[float] = []
    loader = asyncio.create_task(load())
    try:
        await asyncio.sleep(1.0)
        for i in range(swaps):
            await command(settings, Action.DEPLOY, version="2", mode=Mode.MANUAL, policy=HANDS_OFF)
            t0 = time.time() * 1000
            d = await command(settings, Action.PROMOTE)
            promote_ms.append(await answers.first_by(d.epoch, "2") - t0)
            t1 = time.time() * 1000
            d = await command(settings, Action.ROLLBACK)
            rollback_ms.append(await answers.first_by(d.epoch, "1") - t1)
            progress(
                f"  swap {i + 1}/{swaps}: promote {promote_ms[-1]:.0f} ms, "
                f"rollback {rollback_ms[-1]:.0f} ms"
            )
        stop.set()
        await loader
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(rid not in answers.seen for rid in sent):
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # a duplicate would come after its first copy
    finally:
        stop.set()
        if not loader.done():
            loader.cancel()
        await producer.stop()
        await answers.stop()
    counts = Counter({rid: len(answers.seen.get(rid, ())) for rid in sent})
    return SwapReport(
        swaps=swaps,
        rate=rate,
        sent=len(sent),
        answered=sum(1 for n in counts.values() if n),
        lost=sum(1 for n in counts.values() if n == 0),
        duplicated=sum(n - 1 for n in counts.values() if n > 1),
        promote_ms=sorted(promote_ms),
        rollback_ms=sorted(rollback_ms),
        cpu_s=cpu.read(),
        seconds=time.monotonic() - started,
    )
