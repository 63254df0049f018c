"""``rollout bench``'s lines that need the whole service: real controller and worker processes.

- **naive peer**: ``app.naive_peer`` (a faust agent, per record) draining the same kind of
  backlog as the worker lines;
- **model swaps**: 20 ``promote`` (and 20 ``rollback``) commands under open-loop load, the
  time from sending each to the first committed prediction by the new version, and the
  requests lost or answered twice over the whole run (read with ``read_committed``);
- **controller pace**: a shadow rollout (sample rate 1) fed a backlog, so that the worker
  writes comparisons at its full shadow rate; the controller's lag behind them, measured
  from its own analysis snapshots (``deployments.analysis``, each carrying the comparison
  offset it covers), against the comparisons topic;
- CPU seconds of the broker, the worker and the controller over each phase.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from app.adapters import kafka_local
from app.adapters.control_client import send_command
from app.adapters.kafka_clients import (
    assign_at_end,
    partitions_of,
    plain_producer,
    reader,
    stop_following,
)
from app.adapters.process_stats import cpu_seconds
from app.controller.analyst import ANALYSIS_TOPIC, COMPARISONS_TOPIC
from app.controller.app import partition_for
from app.core.events import Action, ControlCommand, DecisionEvent, Mode
from app.demo import Services
from app.scenarios import reset
from app.settings import Settings
from app.traffic import make_requests, send

PREDICTIONS_TOPIC = "inference.predictions"
# Keeps the controller from deciding anything during the swaps and the pace run: the commands
# (and the flood of comparisons) are the subject, not the analysis.
HANDS_OFF: dict[str, Any] = {
    "min_samples_per_step": 1_000_000_000,
    "guardrails": {
        "max_candidate_error_rate": 1.0,
        "max_latency_ratio": 1e9,
        "max_disagreement": 1.0,
        "max_score_shift": 1e9,
    },
}
Progress = Callable[[str], None]


# --------------------------------------------------------------------------- naive peer


@dataclass(frozen=True)
class NaiveLine:
    records: int
    seconds: float
    cpu_s: float

    @property
    def per_second(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0


async def naive_peer(
    settings: Settings,
    requests: int,
    sink: str,
    fresh_group: Callable[[Settings], Awaitable[Settings]],
) -> NaiveLine:
    """Drain a backlog of ``requests`` through ``app.naive_peer`` in a process of its own;
    the rate is between its first and last output (its start-up is not counted)."""
    group = await fresh_group(settings)
    run = f"naive-{uuid.uuid4().hex[:6]}"
    producer = plain_producer(settings)
    await producer.start()
    try:
        await send(producer, make_requests(requests, seed=3, run_id=run))
    finally:
        await producer.stop()
    tail = reader(settings)
    await tail.start()
    await assign_at_end(tail, sink)
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "ROLLOUT_MODEL_STORE": str(settings.model_store),
    }
    peer = subprocess.Popen(
        [sys.executable, "-m", "app.naive_peer", group.group_id, sink],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    needle = run.encode()
    stamps: list[int] = []
    try:
        deadline = time.monotonic() + 300
        while len(stamps) < requests and time.monotonic() < deadline and peer.poll() is None:
            batch = await tail.getmany(timeout_ms=200)
            for records in batch.values():
                stamps.extend(r.timestamp for r in records if needle in r.value)
        cpu = cpu_seconds(peer.pid) or 0.0
    finally:
        peer.terminate()
        peer.wait(timeout=30)
        await tail.stop()
    if len(stamps) < 2:
        return NaiveLine(len(stamps), 0.0, cpu)
    stamps.sort()
    return NaiveLine(len(stamps) - 1, (stamps[-1] - stamps[0]) / 1000, cpu)


# --------------------------------------------------------------------------- service phases


class _Cpu:
    """CPU seconds of the broker, the worker and the controller between start and read."""

    def __init__(self, settings: Settings, services: Services) -> None:
        pids = {
            "controller": services.procs["controller"].pid,
            "worker": services.procs["worker-1"].pid,
        }
        broker = kafka_local.status(kafka_local.BrokerConfig.from_settings(settings))
        if broker.running and broker.pid is not None:
            pids["broker"] = broker.pid
        self._pids = pids
        self._start = self._now()

    def _now(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) or 0.0 for name, pid in self._pids.items()}

    def read(self) -> dict[str, float]:
        now = self._now()
        return {name: now[name] - self._start[name] for name in now}


class _Predictions:
    """Committed predictions of one run, read as they come: request id → [(epoch, version,
    when this reader saw it, ms)]."""

    def __init__(self, settings: Settings, run: str) -> None:
        self._settings = settings
        self._needle = run.encode()
        self.seen: dict[str, list[tuple[int, str, float]]] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._consumer = reader(self._settings)
        await self._consumer.start()
        await assign_at_end(self._consumer, PREDICTIONS_TOPIC)
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
                        self.seen.setdefault(p["request_id"], []).append(
                            (p["epoch"], p["model"]["version"], now)
                        )

    async def first_by(self, epoch: int, version: str, timeout_s: float = 30.0) -> float:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            times = [
                t
                for answers in self.seen.values()
                for e, v, t in answers
                if (e, v) == (epoch, version)
            ]
            if times:
                return min(times)
            await asyncio.sleep(0.02)
        raise TimeoutError(f"no prediction by version {version} at epoch {epoch}")

    async def stop(self) -> None:
        await stop_following(self._task, self._consumer)


async def _command(settings: Settings, action: Action, **fields: Any) -> DecisionEvent:
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


@dataclass(frozen=True)
class SwapReport:
    swaps: int
    rate: float
    sent: int
    answered: int
    lost: int
    duplicated: int
    promote_ms: list[float]
    rollback_ms: list[float]
    cpu_s: dict[str, float]
    seconds: float


@dataclass(frozen=True)
class PaceReport:
    comparisons: int
    seconds: float
    snapshots: int
    max_lag_records: int
    max_lag_s: float
    caught_up_s: float | None  # from the last comparison written to a snapshot covering it
    cpu_s: dict[str, float] = field(default_factory=dict)

    @property
    def per_second(self) -> float:
        return self.comparisons / self.seconds if self.seconds else 0.0


async def _ready(settings: Settings, services: Services, timeout_s: float = 60.0) -> None:
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
            await send(producer, probe)
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
            await send(producer, batch, rate=rate)
            sent.extend(r.request.request_id for r in batch)
            chunk += 1

    cpu = _Cpu(settings, services)
    started = time.monotonic()
    promote_ms: list[float] = []
    rollback_ms: list[float] = []
    loader = asyncio.create_task(load())
    try:
        await asyncio.sleep(1.0)
        for i in range(swaps):
            await _command(settings, Action.DEPLOY, version="2", mode=Mode.MANUAL, policy=HANDS_OFF)
            t0 = time.time() * 1000
            d = await _command(settings, Action.PROMOTE)
            promote_ms.append(await answers.first_by(d.epoch, "2") - t0)
            t1 = time.time() * 1000
            d = await _command(settings, Action.ROLLBACK)
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


async def controller_pace(
    settings: Settings, services: Services, requests: int, progress: Progress
) -> PaceReport:
    """A shadow rollout of v2 at sample rate 1 over a backlog of ``requests``."""
    await _command(
        settings, Action.DEPLOY, version="2", mode=Mode.SHADOW, sample_rate=1.0, policy=HANDS_OFF
    )
    consumer = reader(settings)
    await consumer.start()
    try:
        comparisons = await partitions_of(consumer, COMPARISONS_TOPIC)
        tp = TopicPartition(COMPARISONS_TOPIC, partition_for("fraud", len(comparisons)))
        analysis = await partitions_of(consumer, ANALYSIS_TOPIC)
        consumer.assign([tp, *analysis])
        start_offset = (await consumer.end_offsets([tp]))[tp]
        await consumer.seek_to_end(*analysis)
        for a in analysis:
            await consumer.position(a)
        cpu = _Cpu(settings, services)
        producer = plain_producer(settings)
        await producer.start()
        try:
            await send(
                producer, make_requests(requests, seed=11, run_id=f"pace-{uuid.uuid4().hex[:6]}")
            )
        finally:
            await producer.stop()
        progress(f"  backlog of {requests:,} requests written; following the controller …")
        key = f"p{tp.partition}".encode()
        snapshots: list[tuple[int, int]] = []  # (written at ms, comparisons offset covered)
        consumer.pause(tp)
        quiet_since, end, last = time.monotonic(), start_offset, None
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            batch = await consumer.getmany(*analysis, timeout_ms=250)
            for records in batch.values():
                for r in records:
                    if r.key == key and r.value:
                        covered = orjson.loads(r.value)["comparisons_offset"]
                        snapshots.append((r.timestamp, covered))
            now_end = (await consumer.end_offsets([tp]))[tp]
            if now_end != end:
                end, quiet_since, last = now_end, time.monotonic(), None
            quiet = time.monotonic() - quiet_since
            if end > start_offset and quiet > 3.0:
                if last is None:
                    consumer.resume(tp)
                    last = await _last_record(consumer, tp, start_offset, end)
                    consumer.pause(tp)
                if snapshots and snapshots[-1][1] > last[0]:
                    break  # the controller covered the last comparison
                if quiet > 15.0:
                    break  # it did not: reported as not caught up
        cpu_s = cpu.read()
        consumer.resume(tp)
        if last is None:
            last = await _last_record(consumer, tp, start_offset, end)
        return await _pace_report(consumer, tp, start_offset, last, snapshots, cpu_s)
    finally:
        await consumer.stop()
        await reset(settings)


async def _last_record(
    consumer: AIOKafkaConsumer, tp: TopicPartition, start: int, end: int
) -> tuple[int, int]:
    """Offset and timestamp of the last committed record in [start, end) (the offsets after
    it may be transaction markers)."""
    consumer.seek(tp, max(start, end - 50))
    found = (start, 0)
    while True:
        batch = await consumer.getmany(tp, timeout_ms=1000)
        if not batch.get(tp):
            return found
        r = batch[tp][-1]
        found = (r.offset, r.timestamp)
        if r.offset >= end - 1:
            return found


async def _pace_report(
    consumer: AIOKafkaConsumer,
    tp: TopicPartition,
    start: int,
    last: tuple[int, int],
    snapshots: list[tuple[int, int]],
    cpu_s: dict[str, float],
) -> PaceReport:
    """Lag at each snapshot: comparisons written by then that it did not cover, and how old
    the oldest of them was."""

    async def timestamp_at(offset: int) -> int:
        consumer.seek(tp, offset)
        batch = await consumer.getmany(tp, timeout_ms=2000, max_records=1)
        return batch[tp][0].timestamp if batch.get(tp) else 0

    last_offset, last_ts = last
    first_ts = await timestamp_at(start)
    max_records, max_s = 0, 0.0
    caught_up: float | None = None
    for written_at, covered in snapshots:
        found = await consumer.offsets_for_times({tp: written_at})
        written_by = found[tp].offset if found.get(tp) is not None else last_offset + 1
        behind = max(0, written_by - max(covered, start))
        max_records = max(max_records, behind)
        if behind:
            max_s = max(max_s, (written_at - await timestamp_at(max(covered, start))) / 1000)
        if caught_up is None and covered > last_offset:
            caught_up = (written_at - last_ts) / 1000
    return PaceReport(
        comparisons=last_offset + 1 - start,
        seconds=max((last_ts - first_ts) / 1000, 1e-3),
        snapshots=len(snapshots),
        max_lag_records=max_records,
        max_lag_s=max_s,
        caught_up_s=caught_up,
        cpu_s=cpu_s,
    )


async def service_lines(
    settings: Settings, swap_rate: float, swaps: int, pace_requests: int, progress: Progress
) -> tuple[SwapReport, PaceReport]:
    """Start a controller and one worker, run the swaps and the pace phase, stop them."""
    # The pace phase wants every comparison: no shedding of shadow scoring behind a backlog.
    services = Services(
        settings,
        workers=1,
        name="bench",
        ROLLOUT_SHADOW_SHED_LAG="1000000000",
        ROLLOUT_DASHBOARD_PORT="0",
    )
    services.start(quiet=True)
    try:
        progress("starting a controller and a worker …")
        await _ready(settings, services)
        progress(f"{swaps} model swaps under {swap_rate:,.0f} requests/s …")
        swapped = await swaps_under_load(settings, services, swap_rate, swaps, progress)
        progress(f"controller pace: shadow over {pace_requests:,} requests …")
        pace = await controller_pace(settings, services, pace_requests, progress)
        return swapped, pace
    finally:
        services.stop()
