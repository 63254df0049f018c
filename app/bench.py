"""``rollout bench``: throughput of one worker against ceilings measured in the same run.

Each line drains a backlog of the same generated requests through the worker's own loop
(``app.worker.loop.Worker``: same consumer, micro-batching, batched producer and one
transaction per batch), in this process, on the configured broker:

- **C_io**: every request copied to a sink topic as it is (no decoding, no model);
- **C_parse**: each request decoded and a small JSON output encoded (the realistic ceiling);
- **fan-out-2**: C_parse writing two outputs per request (the ceiling for shadow);
- **C_compute**: onnxruntime alone, rows/s at the worker's batch size (no Kafka);
- **worker** in production-only, canary 10 % (paired) and shadow 100 % modes.

Rates are records per second between the first and the last committed batch. Absolute
figures drift from run to run on shared machines; the ratios to the ceilings are the result.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import orjson
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from app.adapters.kafka_clients import (
    assign_at_end,
    group_consumer,
    partitions_of,
    plain_producer,
    reader,
)
from app.adapters.model_store import ModelStore
from app.core.events import DeploymentState, Mode, Phase, encode, now_ms
from app.core.policy import Policy
from app.core.requests import RawRecord
from app.settings import Settings
from app.traffic import make_requests, send
from app.worker.loop import Worker
from app.worker.scoring import DeploymentRoute, Outgoing, RoutingTable
from app.worker.service import install_stop_signals

SINK = "bench.sink"
C_PARSE = "C_parse (decode + encode)"
FAN_OUT = "fan-out-2 (C_parse, 2 outputs)"


@dataclass(frozen=True)
class Line:
    name: str
    records: int
    seconds: float
    cpu_s: float

    @property
    def per_second(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0


def _passthrough(batch: list[RawRecord]) -> list[Outgoing]:
    return [Outgoing(SINK, r.key, r.value or b"") for r in batch]


def _parse(fan_out: int) -> Callable[[list[RawRecord]], list[Outgoing]]:
    def transform(batch: list[RawRecord]) -> list[Outgoing]:
        out: list[Outgoing] = []
        for r in batch:
            body = orjson.loads(r.value or b"{}")
            value = orjson.dumps(
                {
                    "request_id": body["request_id"],
                    "deployment": body["deployment"],
                    "output": {"label": "legit", "scores": [1.0, 0.0]},
                }
            )
            out.extend(Outgoing(SINK, r.key, value) for _ in range(fan_out))
        return out

    return transform


def fixed_table(store: ModelStore, mode: Mode) -> RoutingTable:
    production = store.load(store.ref("fraud", "1"))
    candidate = store.load(store.ref("fraud", "2")) if mode is not Mode.MANUAL else None
    state = DeploymentState(
        deployment="fraud",
        epoch=1,
        mode=mode,
        phase=Phase.PROGRESSING if candidate else Phase.STABLE,
        production=production.ref,
        candidate=candidate.ref if candidate else None,
        canary_weight=0.10 if mode is Mode.CANARY else 0.0,
        shadow_sample_rate=1.0,
        policy=Policy(),
        updated_at=now_ms(),
    )
    return {"fraud": DeploymentRoute(state, production, candidate)}


async def _fresh_group(settings: Settings) -> Settings:
    """A consumer group whose committed offsets are the requests topic's current end."""
    group = f"rollout-bench-{uuid.uuid4().hex[:8]}"
    consumer = group_consumer(settings, group)
    await consumer.start()
    try:
        partitions = await partitions_of(consumer, "inference.requests")
        ends = await consumer.end_offsets(partitions)
        consumer.assign(partitions)
        await consumer.commit({TopicPartition(tp.topic, tp.partition): o for tp, o in ends.items()})
    finally:
        await consumer.stop()
    return settings.model_copy(update={"group_id": group})


async def _ensure_sink(settings: Settings) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics([NewTopic(SINK, num_partitions=6, replication_factor=1)])
    finally:
        await admin.close()


async def drain(
    settings: Settings,
    name: str,
    requests: int,
    table: RoutingTable,
    transform: Callable[[list[RawRecord]], list[Outgoing]] | None = None,
) -> Line:
    """Write a backlog of ``requests``, then time one in-process worker draining it."""
    group = await _fresh_group(settings)
    producer = plain_producer(settings)
    await producer.start()
    try:
        await send(
            producer, make_requests(requests, seed=3, run_id=f"bench-{uuid.uuid4().hex[:6]}")
        )
    finally:
        await producer.stop()
    worker = Worker(group, f"bench-{uuid.uuid4().hex[:6]}", lambda: table, transform=transform)
    stop = asyncio.Event()
    cpu0 = _cpu()
    task = asyncio.create_task(worker.run(stop))
    deadline = time.monotonic() + 300
    while worker.stats.records < requests and time.monotonic() < deadline and not task.done():
        await asyncio.sleep(0.05)
    cpu = _cpu() - cpu0
    stop.set()
    stats = await task
    # Rate over the batches after the first (its wait for the group to form is not work).
    first_batch = stats.records / max(stats.batches, 1)
    seconds = max(stats.last_batch_at - stats.first_batch_at, 1e-6)
    return Line(name, int(stats.records - first_batch), seconds, cpu)


@dataclass(frozen=True)
class Latency:
    name: str
    rate: float
    requests: int
    answered: int
    p50_ms: float
    p99_ms: float


async def latency(
    settings: Settings, name: str, mode: Mode, rate: float, seconds: float
) -> Latency:
    """End-to-end latency under open-loop load at ``rate``: from handing a request to the
    producer to reading its committed prediction (``read_committed``). The worker runs in a
    process of its own (``python -m app.bench MODE``), so the load does not share its loop."""
    group = await _fresh_group(settings)
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "ROLLOUT_GROUP_ID": group.group_id,
        "ROLLOUT_MODEL_STORE": str(settings.model_store),
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "app.bench", mode.value, group.group_id],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    tail = reader(settings)
    await tail.start()
    producer = plain_producer(settings)
    await producer.start()
    run = f"lat-{uuid.uuid4().hex[:6]}"
    requests = make_requests(int(rate * seconds), seed=5, run_id=run)
    sent: dict[str, float] = {}
    seen: dict[str, float] = {}
    done = asyncio.Event()

    async def collect() -> None:
        while not done.is_set():
            batch = await tail.getmany(timeout_ms=50)
            now = time.time() * 1000
            for records in batch.values():
                for record in records:
                    if run.encode() in record.value:
                        seen.setdefault(orjson.loads(record.value)["request_id"], now)

    try:
        await assign_at_end(tail, "inference.predictions")
        collector = asyncio.create_task(collect())
        probe = make_requests(1, seed=9, run_id=f"{run}-probe")[0]
        deadline = time.monotonic() + 60
        while f"{run}-probe-0" not in seen and time.monotonic() < deadline:  # worker ready?
            await producer.send_and_wait("inference.requests", encode(probe.request), key=probe.key)
            await asyncio.sleep(1.0)
        started = time.monotonic()
        for i, req in enumerate(requests):
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            sent[req.request.request_id] = time.time() * 1000
            await producer.send("inference.requests", encode(req.request), key=req.key)
        deadline = time.monotonic() + 30
        while sum(1 for rid in sent if rid in seen) < len(requests) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        done.set()
        await collector
    finally:
        done.set()
        worker.terminate()
        worker.wait(timeout=30)
        await producer.stop()
        await tail.stop()
    delays = sorted(seen[rid] - sent[rid] for rid in sent if rid in seen)
    return Latency(
        name, rate, len(requests), len(delays), _quantile(delays, 0.5), _quantile(delays, 0.99)
    )


def _quantile(ordered: list[float], q: float) -> float:
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)] if ordered else float("nan")


def compute_ceiling(store: ModelStore, batch: int, seconds: float = 2.0) -> Line:
    model = store.load(store.ref("fraud", "1"))
    x = np.random.default_rng(0).random((batch, len(model.feature_names)), dtype=np.float32)
    rows, started = 0, time.perf_counter()
    cpu0 = _cpu()
    while time.perf_counter() - started < seconds:
        model.predict(x)
        rows += batch
    return Line("C_compute (onnxruntime)", rows, time.perf_counter() - started, _cpu() - cpu0)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run_bench(
    settings: Settings, requests: int, out_dir: Path, progress: Callable[[str], None]
) -> tuple[list[Line], list[Latency]]:
    await _ensure_sink(settings)
    store = ModelStore(settings.model_store)
    prod_only = fixed_table(store, Mode.MANUAL)
    plan: list[tuple[str, RoutingTable, Callable[[list[RawRecord]], list[Outgoing]] | None]] = [
        ("C_io (passthrough)", prod_only, _passthrough),
        (C_PARSE, prod_only, _parse(1)),
        (FAN_OUT, prod_only, _parse(2)),
        ("worker: production only", prod_only, None),
        ("worker: canary 10% (paired)", fixed_table(store, Mode.CANARY), None),
        ("worker: shadow 100%", fixed_table(store, Mode.SHADOW), None),
    ]
    progress("warming up (broker, clients, models) …")
    await drain(settings, "warm-up", min(requests, 5000), prod_only)
    lines: list[Line] = []
    for name, table, transform in plan:
        progress(f"{name} …")
        lines.append(await drain(settings, name, requests, table, transform))
        progress(f"{name}: {lines[-1].per_second:,.0f}/s")
    lines.append(compute_ceiling(store, settings.batch_max_records))
    latencies: list[Latency] = []
    for line, (name, table, transform) in zip(lines, plan, strict=False):
        if transform is None:  # the worker's modes: latency at half their sustained rate
            progress(f"{name}: latency at {line.per_second / 2:,.0f}/s …")
            mode = fixed_table_mode(table)
            latencies.append(await latency(settings, name, mode, line.per_second / 2, 10.0))
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "throughput": [asdict(line) | {"per_second": line.per_second} for line in lines],
        "latency": [asdict(x) for x in latencies],
    }
    (out_dir / "bench.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    (out_dir / "bench.md").write_text(markdown(lines, latencies, settings.batch_max_wait_ms))
    return lines, latencies


def markdown(lines: list[Line], latencies: Sequence[Latency] = (), wait_ms: int = 20) -> str:
    """The table; worker lines carry their ratio to their ceiling (shadow: fan-out-2)."""
    by_name = {line.name: line.per_second for line in lines}
    rows = ["| line | records/s | ratio to ceiling | CPU s |", "|---|---:|---:|---:|"]
    for line in lines:
        ratio = ""
        if line.name.startswith("worker"):
            ceiling = FAN_OUT if "shadow" in line.name else C_PARSE
            if by_name.get(ceiling):
                ratio = f"{line.per_second / by_name[ceiling]:.2f} of {ceiling.split(' ')[0]}"
        rows.append(f"| {line.name} | {line.per_second:,.0f} | {ratio} | {line.cpu_s:.1f} |")
    if latencies:
        rows += [
            "",
            f"End-to-end latency at half the sustained rate (goal: p99 <= the "
            f"{wait_ms} ms batch wait + 10 ms):",
            "",
            "| line | rate/s | answered | p50 ms | p99 ms |",
            "|---|---:|---:|---:|---:|",
        ]
        rows += [
            f"| {x.name} | {x.rate:,.0f} | {x.answered:,}/{x.requests:,} | "
            f"{x.p50_ms:.1f} | {x.p99_ms:.1f} |"
            for x in latencies
        ]
    return "\n".join(rows) + "\n"


def fixed_table_mode(table: RoutingTable) -> Mode:
    return table["fraud"].state.mode


async def _serve_fixed(mode: Mode, worker_id: str) -> None:
    """The worker's loop with a fixed routing table, until SIGTERM (``rollout bench``'s
    latency lines run it as a process of its own)."""
    settings = Settings()
    table = fixed_table(ModelStore(settings.model_store), mode)
    stop = asyncio.Event()
    install_stop_signals(stop)
    await Worker(settings, worker_id, lambda: table).run(stop)


if __name__ == "__main__":
    asyncio.run(_serve_fixed(Mode(sys.argv[1]), sys.argv[2]))
