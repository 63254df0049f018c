"""``rollout bench``: throughput of one worker against ceilings measured in the same run.

Each line drains a backlog of the same generated requests (on the bench's own topic,
``bench.requests.fraud``) through the worker's own loop
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
Then, in the same run: open-loop latency of the worker at 100 and 1,000 requests/s and at
half each mode's rate, with a per-batch breakdown of where the time goes
(``app.bench.latency``, ``app.bench.breakdown``); the peers' drains and latency lines (the
naive faust agent, Quix Streams at least once and exactly once: ``app.bench.peers``); model
swaps (``app.bench.swaps``) and the controller's pace (``app.bench.pace``); the goals are
``app.bench.report``, the tables ``app.bench.tables``.
"""

from __future__ import annotations

import asyncio
import resource
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import orjson

from app.adapters.kafka_clients import configure_aiokafka
from app.adapters.model_store import ModelStore
from app.adapters.process_stats import cpu_seconds
from app.bench import peers
from app.bench.breakdown import Breakdown, breakdown
from app.bench.ceilings import Transform, parse_answers, passthrough
from app.bench.kinds import kinds
from app.bench.latency import latency
from app.bench.pace import controller_pace
from app.bench.report import (
    C_PARSE,
    CANARY,
    FAN_OUT,
    HALF_DRAIN,
    HIGH_RATE,
    LOW_RATE,
    PROD_ONLY,
    SHADOW,
    Latency,
    Line,
    PeerLine,
    Report,
    median_line,
)
from app.bench.setup import (
    FRAUD_BACKLOG,
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
from app.bench.tables import markdown
from app.core.batch_result import BatchResult, BatchScorer, Topics
from app.core.events import (
    Mode,
)
from app.core.routes import RoutingTable
from app.core.scoring import table_scorer
from app.settings import Settings
from app.worker.batch_trace import BatchTrace
from app.worker.loop import Worker


class _Planned(NamedTuple):
    """A drain line: its routing table, or a ceiling's transform in place of scoring, and
    the backlog it drains."""

    name: str
    table: RoutingTable
    transform: Transform | None
    backlog: Offsets


async def drain(
    settings: Settings,
    name: str,
    requests: int,
    table: RoutingTable,
    transform: Transform | None = None,
    progress: Callable[[str], None] | None = None,
    backlog: Offsets | None = None,
    traces: list[BatchTrace] | None = None,
) -> Line:
    """Time one in-process worker draining ``requests`` records: the backlog that starts at
    ``backlog`` (on its topic), or a new one of ``fraud`` requests written first (on the
    bench's own topic); each committed batch's trace goes to ``traces`` when given."""
    if backlog is None:
        backlog = await write_backlog(settings, requests, FRAUD_BACKLOG)
    group = await fresh_group(settings, at=backlog)
    worker_id = f"bench-{uuid.uuid4().hex[:6]}"
    topics = replace(Topics.of(settings.topics), requests=next(iter(backlog)).topic)
    worker = Worker(
        group,
        worker_id,
        _scorer(group, worker_id, table, transform),
        topics,
        trace=traces.append if traces is not None else None,
    )
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


@dataclass(frozen=True)
class Sizes:
    """How much ``rollout bench`` does (``--quick``: a short pass of every phase)."""

    requests: int = 50_000  # each drain line's backlog
    peer_requests: int = 50_000  # each peer's backlog: the same as the worker's
    swaps: int = 20
    swap_rate: float = 1000.0
    rounds: int = 3
    latency_s: float = 10.0  # each open-loop latency line

    @classmethod
    def quick(cls) -> Sizes:
        return cls(requests=5000, peer_requests=5000, swaps=3, rounds=1, latency_s=5.0)


@dataclass
class _Drained:
    lines: list[Line]
    breakdowns: list[Breakdown] = field(default_factory=list)


async def _drains(
    settings: Settings, store: ModelStore, sizes: Sizes, progress: Callable[[str], None]
) -> tuple[list[_Planned], _Drained]:
    requests = sizes.requests
    other_kinds = kinds()
    await ensure_topics(settings, [SINK, FRAUD_BACKLOG, *(k.topic for k in other_kinds)])
    prod_only = fixed_table(store, Mode.MANUAL)
    progress("warming up (broker, clients, models) …")
    await drain(settings, "warm-up", min(requests, 5000), prod_only)
    progress(f"writing a backlog of {requests:,} requests (the fraud lines drain the same one) …")
    backlog = await write_backlog(settings, requests, FRAUD_BACKLOG)
    plan: list[_Planned] = [
        _Planned("C_io (passthrough)", prod_only, passthrough, backlog),
        _Planned(C_PARSE, prod_only, parse_answers(1), backlog),
        _Planned(FAN_OUT, prod_only, parse_answers(2), backlog),
        _Planned(PROD_ONLY, prod_only, None, backlog),
        _Planned(CANARY, fixed_table(store, Mode.CANARY), None, backlog),
        _Planned(SHADOW, fixed_table(store, Mode.SHADOW), None, backlog),
    ]
    for kind in other_kinds:
        progress(f"writing a backlog of {requests:,} {kind.deployment} requests …")
        at = await write_backlog(settings, requests, kind.topic, kind.make)
        plan.append(_Planned(kind.line, kind.table, None, at))
    runs: dict[str, list[tuple[Line, list[BatchTrace]]]] = {p.name: [] for p in plan}
    for round_ in range(1, sizes.rounds + 1):  # interleaved: drift hits every line alike
        for p in plan:
            traces: list[BatchTrace] = []
            line = await drain(
                settings, p.name, requests, p.table, p.transform, progress, p.backlog, traces
            )
            runs[p.name].append((line, traces))
            progress(f"round {round_}/{sizes.rounds}: {p.name}: {line.per_second:,.0f}/s")
    drained = _Drained([median_line([line for line, _ in runs[p.name]]) for p in plan])
    for name in (PROD_ONLY, SHADOW):  # the breakdown of the median round
        line, traces = sorted(runs[name], key=lambda x: x[0].per_second)[len(runs[name]) // 2]
        drained.breakdowns.append(breakdown(f"{name}, draining", [t.to_json() for t in traces[1:]]))
    return plan, drained


async def _latencies(
    settings: Settings,
    plan: list[_Planned],
    lines: list[Line],
    sizes: Sizes,
    progress: Callable[[str], None],
) -> tuple[list[Latency], list[Breakdown]]:
    """The worker's modes at 100 and 1,000/s (production only, shadow), at half their drain
    rate, then up to their open-loop sustained rate and at half of it."""
    latencies: list[Latency] = []
    parts: list[Breakdown] = []
    for line, p in zip(lines, plan, strict=False):
        if p.name not in (PROD_ONLY, CANARY, SHADOW):
            continue
        half = line.per_second / 2
        rates = [half] if p.name == CANARY else [LOW_RATE, HIGH_RATE, half]
        progress(f"{p.name}: latency at {', '.join(f'{r:,.0f}' for r in rates)}/s …")
        found, broken = await latency(
            settings, p.name, fixed_table_mode(p.table), rates, sizes.latency_s, line.per_second
        )
        at = len(rates) - 1  # the half-drain line; the ramp's lines follow
        found[at] = replace(found[at], half_load=True, basis=HALF_DRAIN)
        latencies += found
        parts += broken
        for x in found:
            progress(f"  {x.rate:,.0f}/s: p50 {x.p50_ms:.1f} ms, p99 {x.p99_ms:.1f} ms")
    return latencies, parts


async def _peers(
    settings: Settings, sizes: Sizes, progress: Callable[[str], None]
) -> tuple[list[PeerLine], list[Latency]]:
    drains: list[PeerLine] = []
    latencies: list[Latency] = []
    for peer in peers.PEERS:
        progress(f"peer {peer.name}: draining {sizes.peer_requests:,} requests …")
        drains.append(await peers.drain(settings, peer, sizes.peer_requests, SINK))
        progress(f"  {drains[-1].per_second:,.0f}/s; latency at 100 and 1,000/s …")
        found = await peers.latency(settings, peer, (LOW_RATE, HIGH_RATE), sizes.latency_s, SINK)
        latencies += found
        for x in found:
            progress(f"  {x.rate:,.0f}/s: p50 {x.p50_ms:.1f} ms, p99 {x.p99_ms:.1f} ms")
    return drains, latencies


async def run_bench(
    settings: Settings,
    out_dir: Path,
    progress: Callable[[str], None],
    sizes: Sizes | None = None,
) -> Report:
    sizes = sizes or Sizes()
    configure_aiokafka()
    progress("training the other model kinds (3-class, 8x8 tensor) …")
    store = ModelStore(settings.model_store)
    plan, drained = await _drains(settings, store, sizes, progress)
    lines = [*drained.lines, compute_ceiling(store, settings.batch_max_records)]
    latencies, parts = await _latencies(settings, plan, drained.lines, sizes, progress)
    peer_lines, peer_latencies = await _peers(settings, sizes, progress)
    services = bench_services(settings, (await fresh_group(settings)).group_id)
    services.start()
    try:
        progress("starting a controller and a worker …")
        await ready(settings, services)
        progress(f"{sizes.swaps} model swaps under {sizes.swap_rate:,.0f} requests/s …")
        swapped = await swaps_under_load(settings, services, sizes.swap_rate, sizes.swaps, progress)
        progress(f"controller pace: shadow over {sizes.requests:,} requests …")
        pace = await controller_pace(settings, services, sizes.requests, progress)
    finally:
        services.stop()
    report = Report(
        lines,
        latencies + peer_latencies,
        settings.batch_max_wait_ms,
        peer_lines,
        swapped,
        pace,
        parts + drained.breakdowns,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench.json").write_bytes(orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2))
    (out_dir / "bench.md").write_text(markdown(report))
    return report
