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
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from app.adapters import kafka_local
from app.adapters.kafka_clients import (
    assign_at_end,
    group_consumer,
    partitions_of,
    plain_producer,
    reader,
)
from app.adapters.model_store import ModelStore
from app.adapters.process_stats import cpu_seconds
from app.bench_rollout import NaiveLine, PaceReport, SwapReport, naive_peer, service_lines
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
PROD_ONLY = "worker: production only"
CANARY = "worker: canary 10% (paired)"
SHADOW = "worker: shadow 100%"


@dataclass(frozen=True)
class Line:
    name: str
    records: int
    seconds: float
    cpu_s: float  # this process (the worker's loop, the load's producer)
    broker_cpu_s: float = 0.0
    rates: tuple[float, ...] = ()  # every round's records/s (this line is their median)

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


Offsets = dict[TopicPartition, int]


async def _fresh_group(settings: Settings, at: Offsets | None = None) -> Settings:
    """A consumer group whose committed offsets are ``at``, else the requests topic's end."""
    group = f"rollout-bench-{uuid.uuid4().hex[:8]}"
    consumer = group_consumer(settings, group)
    await consumer.start()
    try:
        partitions = await partitions_of(consumer, "inference.requests")
        if at is None:
            at = await consumer.end_offsets(partitions)
        consumer.assign(partitions)
        await consumer.commit({TopicPartition(tp.topic, tp.partition): o for tp, o in at.items()})
    finally:
        await consumer.stop()
    return settings.model_copy(update={"group_id": group})


async def write_backlog(settings: Settings, requests: int) -> Offsets:
    """Append ``requests`` generated requests; returns where they start (per partition)."""
    consumer = group_consumer(settings, f"rollout-bench-{uuid.uuid4().hex[:8]}")
    await consumer.start()
    try:
        partitions = await partitions_of(consumer, "inference.requests")
        start: Offsets = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
    producer = plain_producer(settings)
    await producer.start()
    try:
        await send(
            producer, make_requests(requests, seed=3, run_id=f"bench-{uuid.uuid4().hex[:6]}")
        )
    finally:
        await producer.stop()
    return start


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
    progress: Callable[[str], None] | None = None,
    backlog: Offsets | None = None,
) -> Line:
    """Time one in-process worker draining ``requests`` records: the backlog that starts at
    ``backlog``, or a new one written first."""
    if backlog is None:
        backlog = await write_backlog(settings, requests)
    group = await _fresh_group(settings, at=backlog)
    worker = Worker(group, f"bench-{uuid.uuid4().hex[:6]}", lambda: table, transform=transform)
    stop = asyncio.Event()
    cpu0, broker0 = _cpu(), _broker_cpu(settings)
    task = asyncio.create_task(worker.run(stop))
    deadline = time.monotonic() + 300
    shown = time.monotonic()
    while worker.stats.records < requests and time.monotonic() < deadline and not task.done():
        await asyncio.sleep(0.05)
        if progress is not None and time.monotonic() - shown > 5:
            shown = time.monotonic()
            progress(f"  {worker.stats.records:,}/{requests:,} …")
    cpu, broker = _cpu() - cpu0, _broker_cpu(settings) - broker0
    stop.set()
    stats = await task
    # Rate over the batches after the first (its wait for the group to form is not work).
    first_batch = stats.records / max(stats.batches, 1)
    seconds = max(stats.last_batch_at - stats.first_batch_at, 1e-6)
    return Line(name, int(stats.records - first_batch), seconds, cpu, broker)


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
    # No linger: the clock starts when a request is handed to the producer, and what is
    # measured is what the service adds (an idempotent producer still batches what queues
    # behind its one request in flight).
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers, enable_idempotence=True, linger_ms=0
    )
    await producer.start()
    run = f"lat-{uuid.uuid4().hex[:6]}"
    requests = [
        (r.request.request_id, r.key, encode(r.request))
        for r in make_requests(int(rate * seconds), seed=5, run_id=run)
    ]
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
        started, i = time.monotonic(), 0
        while i < len(requests):  # open loop: each tick sends what is due by now
            due = min(int((time.monotonic() - started) * rate) + 1, len(requests))
            now = time.time() * 1000
            for request_id, key, value in requests[i:due]:
                sent[request_id] = now
                await producer.send("inference.requests", value, key=key)
            i = max(i, due)
            await asyncio.sleep(0.001)
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


def _median(runs: list[Line]) -> Line:
    ordered = sorted(runs, key=lambda x: x.per_second)
    middle = ordered[len(ordered) // 2]
    return replace(middle, rates=tuple(x.per_second for x in runs))


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _broker_cpu(settings: Settings) -> float:
    """CPU seconds of the local broker so far (0 when the cluster is not ours to see)."""
    status = kafka_local.status(kafka_local.BrokerConfig.from_settings(settings))
    if not status.running or status.pid is None:
        return 0.0
    return cpu_seconds(status.pid) or 0.0


@dataclass(frozen=True)
class Report:
    lines: list[Line]
    latencies: list[Latency]
    wait_ms: int
    naive: NaiveLine | None = None
    swaps: SwapReport | None = None
    pace: PaceReport | None = None

    def rate(self, name: str) -> float:
        return next((x.per_second for x in self.lines if x.name == name), 0.0)

    def to_json(self) -> dict[str, Any]:
        return {
            "throughput": [asdict(x) | {"per_second": x.per_second} for x in self.lines],
            "latency": [asdict(x) for x in self.latencies],
            "batch_max_wait_ms": self.wait_ms,
            "naive_peer": asdict(self.naive) | {"per_second": self.naive.per_second}
            if self.naive
            else None,
            "swaps": asdict(self.swaps) if self.swaps else None,
            "controller_pace": asdict(self.pace) | {"per_second": self.pace.per_second}
            if self.pace
            else None,
            "goals": [asdict(g) for g in goals(self)],
        }


async def run_bench(
    settings: Settings,
    requests: int,
    out_dir: Path,
    progress: Callable[[str], None],
    naive_requests: int = 5000,
    swaps: int = 20,
    swap_rate: float = 1000.0,
    rounds: int = 3,
) -> Report:
    await _ensure_sink(settings)
    store = ModelStore(settings.model_store)
    prod_only = fixed_table(store, Mode.MANUAL)
    plan: list[tuple[str, RoutingTable, Callable[[list[RawRecord]], list[Outgoing]] | None]] = [
        ("C_io (passthrough)", prod_only, _passthrough),
        (C_PARSE, prod_only, _parse(1)),
        (FAN_OUT, prod_only, _parse(2)),
        (PROD_ONLY, prod_only, None),
        (CANARY, fixed_table(store, Mode.CANARY), None),
        (SHADOW, fixed_table(store, Mode.SHADOW), None),
    ]
    progress("warming up (broker, clients, models) …")
    await drain(settings, "warm-up", min(requests, 5000), prod_only)
    progress(f"writing a backlog of {requests:,} requests (every line drains the same one) …")
    backlog = await write_backlog(settings, requests)
    runs: dict[str, list[Line]] = {name: [] for name, _, _ in plan}
    for round_ in range(1, rounds + 1):  # interleaved, so that drift hits every line alike
        for name, table, transform in plan:
            line = await drain(settings, name, requests, table, transform, progress, backlog)
            runs[name].append(line)
            progress(f"round {round_}/{rounds}: {name}: {line.per_second:,.0f}/s")
    lines = [_median(runs[name]) for name, _, _ in plan]
    lines.append(compute_ceiling(store, settings.batch_max_records))
    latencies: list[Latency] = []
    for line, (name, table, transform) in zip(lines, plan, strict=False):
        if transform is None:  # the worker's modes: latency at half their sustained rate
            progress(f"{name}: latency at {line.per_second / 2:,.0f}/s …")
            mode = fixed_table_mode(table)
            latencies.append(await latency(settings, name, mode, line.per_second / 2, 10.0))
            progress(f"  p50 {latencies[-1].p50_ms:.1f} ms, p99 {latencies[-1].p99_ms:.1f} ms")
    progress(f"naive peer (faust, per record) over {naive_requests:,} requests …")
    naive = await naive_peer(settings, naive_requests, SINK, _fresh_group)
    progress(f"naive peer: {naive.per_second:,.0f}/s")
    swapped, pace = await service_lines(settings, swap_rate, swaps, requests, progress)
    report = Report(lines, latencies, settings.batch_max_wait_ms, naive, swapped, pace)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench.json").write_bytes(orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2))
    (out_dir / "bench.md").write_text(markdown(report))
    return report


@dataclass(frozen=True)
class Goal:
    goal: str
    measured: str
    met: bool


def goals(r: Report) -> list[Goal]:
    """The issue's goals, each against what this run measured."""
    out: list[Goal] = []
    parse, fan_out, prod = r.rate(C_PARSE), r.rate(FAN_OUT), r.rate(PROD_ONLY)
    if parse:
        out.append(
            Goal("production-only >= 0.8 x C_parse", f"{prod / parse:.2f}", prod >= 0.8 * parse)
        )
    if fan_out:
        shadow = r.rate(SHADOW)
        out.append(
            Goal(
                "shadow 100% >= 0.8 x fan-out-2", f"{shadow / fan_out:.2f}", shadow >= 0.8 * fan_out
            )
        )
    if r.naive and r.naive.per_second:
        ratio = prod / r.naive.per_second
        out.append(Goal("production-only >= 10 x the naive peer", f"{ratio:.1f}x", ratio >= 10))
    ceiling = r.wait_ms + 10
    for x in r.latencies:
        out.append(
            Goal(
                f"{x.name}: p99 <= {ceiling} ms at half load",
                f"{x.p99_ms:.0f} ms",
                x.p99_ms <= ceiling,
            )
        )
    if r.swaps:
        worst = max(r.swaps.promote_ms + r.swaps.rollback_ms, default=float("nan"))
        out.append(Goal("swap <= 1 s", f"max {worst:.0f} ms", worst <= 1000))
        out.append(
            Goal(
                "swaps lose and duplicate nothing",
                f"{r.swaps.lost} lost, {r.swaps.duplicated} duplicated",
                r.swaps.lost == 0 and r.swaps.duplicated == 0,
            )
        )
    if r.pace:
        caught = r.pace.caught_up_s
        out.append(
            Goal(
                "controller keeps pace with full-rate shadow comparisons",
                f"max lag {r.pace.max_lag_s:.1f} s; caught up "
                + (f"{caught:.1f} s after the last" if caught is not None else "never"),
                caught is not None and r.pace.max_lag_s <= 5.0,
            )
        )
    return out


def markdown(r: Report) -> str:
    """The tables; worker lines carry their ratio to their ceiling (shadow: fan-out-2)."""
    by_name = {line.name: line.per_second for line in r.lines}
    rows = [
        "| line | records/s (median of rounds; range) | ratio to ceiling | CPU s (this process)"
        " | CPU s (broker) |",
        "|---|---:|---:|---:|---:|",
    ]
    for line in r.lines:
        ratio = ""
        if line.name.startswith("worker"):
            ceiling = FAN_OUT if "shadow" in line.name else C_PARSE
            if by_name.get(ceiling):
                ratio = f"{line.per_second / by_name[ceiling]:.2f} of {ceiling.split(' ')[0]}"
        broker = f"{line.broker_cpu_s:.1f}" if line.broker_cpu_s else ""
        spread = (
            f" ({min(line.rates):,.0f} to {max(line.rates):,.0f})" if len(line.rates) > 1 else ""
        )
        rows.append(
            f"| {line.name} | {line.per_second:,.0f}{spread} | {ratio} | {line.cpu_s:.1f} | "
            f"{broker} |"
        )
    if r.naive:
        prod = by_name.get(PROD_ONLY, 0.0)
        ratio = f"worker is {prod / r.naive.per_second:.1f}x" if r.naive.per_second else ""
        rows.append(
            f"| naive peer (faust agent, per record) | {r.naive.per_second:,.0f} | {ratio} | "
            f"{r.naive.cpu_s:.1f} (its process) | |"
        )
    if r.latencies:
        rows += [
            "",
            f"End-to-end latency (produce → committed prediction, read_committed) under "
            f"open-loop load at half the sustained rate; batch wait {r.wait_ms} ms:",
            "",
            "| line | rate/s | answered | p50 ms | p99 ms |",
            "|---|---:|---:|---:|---:|",
        ]
        rows += [
            f"| {x.name} | {x.rate:,.0f} | {x.answered:,}/{x.requests:,} | "
            f"{x.p50_ms:.1f} | {x.p99_ms:.1f} |"
            for x in r.latencies
        ]
    if r.swaps:
        w = r.swaps

        def ms(values: list[float]) -> str:
            if not values:
                return "-"
            return f"median {values[len(values) // 2]:.0f}, max {values[-1]:.0f}"

        rows += [
            "",
            f"Model swaps: {w.swaps} promotes and {w.swaps} rollbacks under {w.rate:,.0f} "
            f"requests/s (controller + 1 worker), {w.seconds:.0f} s:",
            "",
            "| command → first prediction by the new version | ms |",
            "|---|---|",
            f"| promote | {ms(w.promote_ms)} |",
            f"| rollback | {ms(w.rollback_ms)} |",
            "",
            f"Requests sent {w.sent:,}; answered {w.answered:,}; lost {w.lost}; "
            f"duplicated {w.duplicated}.",
        ]
    if r.pace:
        p = r.pace
        caught = f"{p.caught_up_s:.1f} s" if p.caught_up_s is not None else "not within 15 s"
        rows += [
            "",
            f"Controller pace: shadow 100% over a backlog, {p.comparisons:,} comparison offsets "
            f"in {p.seconds:.1f} s ({p.per_second:,.0f}/s) on the deployment's partition; "
            f"{p.snapshots} analysis snapshots; max lag {p.max_lag_records:,} records / "
            f"{p.max_lag_s:.1f} s; covered the last comparison {caught} after it was written "
            f"(snapshots every 2 s).",
        ]
    cpu = [("swaps", r.swaps.cpu_s if r.swaps else {}), ("pace", r.pace.cpu_s if r.pace else {})]
    if any(c for _, c in cpu):
        rows += ["", "| CPU seconds | broker | worker | controller |", "|---|---:|---:|---:|"]
        for phase, c in cpu:
            cells = " | ".join(
                f"{c[k]:.1f}" if k in c else "-" for k in ("broker", "worker", "controller")
            )
            rows.append(f"| {phase} | {cells} |")
    found = goals(r)
    if found:
        rows += ["", "| goal | measured | met |", "|---|---|---|"]
        rows += [f"| {g.goal} | {g.measured} | {'yes' if g.met else 'no'} |" for g in found]
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
