"""``rollout bench``: throughput of one worker against ceilings measured in the same run.

Each line drains a backlog of the same generated requests through the worker's own loop
(``app.worker.loop.Worker``: same consumer, micro-batching, batched producer and one
transaction per batch), in this process, on the configured broker:

- **C_io**: every request copied to a sink topic as it is (no decoding, no model);
- **C_parse**: each request decoded and a small JSON output encoded (the realistic ceiling);
- **fan-out-2**: C_parse writing two outputs per request (the ceiling for shadow);
- **C_compute**: onnxruntime alone, rows/s at the worker's batch size (no Kafka);
- **worker** in production-only, canary 10 % (paired) and shadow 100 % modes;
- **worker** on two other model kinds (``app.bench.kinds``), production only, each draining
  a backlog of its own generated requests: a 3-class classifier (4 numbers in a list) and a
  classifier on an 8x8 tensor (``{"image": 8 lists of 8}``, the general input path).

Rates are records per second between the first and the last committed batch. Absolute
figures drift from run to run on shared machines; the ratios to the ceilings are the result.
Then, in the same run: latency at half each mode's rate (``app.bench.latency``), the naive
peer (``app.bench.naive_peer``), model swaps (``app.bench.swaps``) and the controller's pace
(``app.bench.pace``); the tables and goals are ``app.bench.report``.
"""

from __future__ import annotations

import asyncio
import resource
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import orjson

from app.adapters.kafka_clients import configure_aiokafka
from app.adapters.model_store import ModelStore
from app.adapters.process_stats import cpu_seconds
from app.bench import naive_peer
from app.bench.kinds import kinds
from app.bench.latency import latency
from app.bench.pace import controller_pace
from app.bench.report import (
    C_PARSE,
    CANARY,
    FAN_OUT,
    PROD_ONLY,
    SHADOW,
    Latency,
    Line,
    Report,
    markdown,
    median_line,
)
from app.bench.setup import (
    SINK,
    Offsets,
    broker_pid,
    ensure_topics,
    fixed_table,
    fixed_table_mode,
    fresh_group,
    write_backlog,
)
from app.bench.swaps import bench_services, ready, swaps_under_load
from app.core.events import (
    Mode,
)
from app.core.requests import RawRecord
from app.core.scoring import (
    BatchResult,
    BatchScorer,
    Outgoing,
    RoutingTable,
    Topics,
    table_scorer,
)
from app.settings import Settings
from app.worker.loop import Worker

# A ceiling: what it publishes for a batch, in place of scoring.
Transform = Callable[[Sequence[RawRecord]], list[Outgoing]]


class _Planned(NamedTuple):
    """A drain line: its routing table, or a ceiling's transform in place of scoring, and
    the backlog it drains."""

    name: str
    table: RoutingTable
    transform: Transform | None
    backlog: Offsets


def _passthrough(batch: Sequence[RawRecord]) -> list[Outgoing]:
    return [Outgoing(SINK, r.key, r.value or b"") for r in batch]


def _parse(fan_out: int) -> Transform:
    def transform(batch: Sequence[RawRecord]) -> list[Outgoing]:
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


async def drain(
    settings: Settings,
    name: str,
    requests: int,
    table: RoutingTable,
    transform: Transform | None = None,
    progress: Callable[[str], None] | None = None,
    backlog: Offsets | None = None,
) -> Line:
    """Time one in-process worker draining ``requests`` records: the backlog that starts at
    ``backlog`` (on its topic), or a new one of ``fraud`` requests written first."""
    if backlog is None:
        backlog = await write_backlog(settings, requests)
    group = await fresh_group(settings, at=backlog)
    worker_id = f"bench-{uuid.uuid4().hex[:6]}"
    topics = replace(Topics.of(settings.topics), requests=next(iter(backlog)).topic)
    worker = Worker(group, worker_id, _scorer(group, worker_id, table, transform), topics)
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


def _scorer(
    settings: Settings,
    worker_id: str,
    table: RoutingTable,
    transform: Transform | None,
) -> BatchScorer:
    """The worker's own scoring by ``table``, or a ceiling's ``transform`` in its place (its
    records are published as the batch's outputs, through the same client, batching and
    transaction)."""
    if transform is None:
        return table_scorer(
            lambda: table,
            worker_id=worker_id,
            max_request_bytes=settings.max_request_bytes,
            shed_lag=settings.shadow_shed_lag,
            topics=Topics.of(settings.topics),
        )
    return lambda records, lag: BatchResult(outgoing=transform(records))


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


def _broker_cpu(settings: Settings) -> float:
    """CPU seconds of the local broker so far (0 when the cluster is not ours to see)."""
    pid = broker_pid(settings)
    return (cpu_seconds(pid) or 0.0) if pid is not None else 0.0


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
    configure_aiokafka()
    progress("training the other model kinds (3-class, 8x8 tensor) …")
    other_kinds = kinds()
    await ensure_topics(settings, [SINK, *(k.topic for k in other_kinds)])
    store = ModelStore(settings.model_store)
    prod_only = fixed_table(store, Mode.MANUAL)
    progress("warming up (broker, clients, models) …")
    await drain(settings, "warm-up", min(requests, 5000), prod_only)
    progress(f"writing a backlog of {requests:,} requests (the fraud lines drain the same one) …")
    backlog = await write_backlog(settings, requests)
    plan: list[_Planned] = [
        _Planned("C_io (passthrough)", prod_only, _passthrough, backlog),
        _Planned(C_PARSE, prod_only, _parse(1), backlog),
        _Planned(FAN_OUT, prod_only, _parse(2), backlog),
        _Planned(PROD_ONLY, prod_only, None, backlog),
        _Planned(CANARY, fixed_table(store, Mode.CANARY), None, backlog),
        _Planned(SHADOW, fixed_table(store, Mode.SHADOW), None, backlog),
    ]
    for kind in other_kinds:
        progress(f"writing a backlog of {requests:,} {kind.deployment} requests …")
        at = await write_backlog(settings, requests, kind.topic, kind.make)
        plan.append(_Planned(kind.line, kind.table, None, at))
    runs: dict[str, list[Line]] = {p.name: [] for p in plan}
    for round_ in range(1, rounds + 1):  # interleaved, so that drift hits every line alike
        for p in plan:
            line = await drain(
                settings, p.name, requests, p.table, p.transform, progress, p.backlog
            )
            runs[p.name].append(line)
            progress(f"round {round_}/{rounds}: {p.name}: {line.per_second:,.0f}/s")
    lines = [median_line(runs[p.name]) for p in plan]
    lines.append(compute_ceiling(store, settings.batch_max_records))
    latencies: list[Latency] = []
    for line, (name, table, _, _) in zip(lines, plan, strict=False):
        if name in (PROD_ONLY, CANARY, SHADOW):  # latency at half their sustained rate
            progress(f"{name}: latency at {line.per_second / 2:,.0f}/s …")
            mode = fixed_table_mode(table)
            latencies.append(await latency(settings, name, mode, line.per_second / 2, 10.0))
            progress(f"  p50 {latencies[-1].p50_ms:.1f} ms, p99 {latencies[-1].p99_ms:.1f} ms")
    progress(f"naive peer (faust, per record) over {naive_requests:,} requests …")
    naive = await naive_peer.measure(settings, naive_requests, SINK, fresh_group)
    progress(f"naive peer: {naive.per_second:,.0f}/s")
    services = bench_services(settings)
    services.start()
    try:
        progress("starting a controller and a worker …")
        await ready(settings, services)
        progress(f"{swaps} model swaps under {swap_rate:,.0f} requests/s …")
        swapped = await swaps_under_load(settings, services, swap_rate, swaps, progress)
        progress(f"controller pace: shadow over {requests:,} requests …")
        pace = await controller_pace(settings, services, requests, progress)
    finally:
        services.stop()
    report = Report(lines, latencies, settings.batch_max_wait_ms, naive, swapped, pace)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench.json").write_bytes(orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2))
    (out_dir / "bench.md").write_text(markdown(report))
    return report
