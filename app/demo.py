"""``rollout demo``: the whole service on one machine, end to end, with a live view.

Starts the local broker when ``KAFKA_BOOTSTRAP_SERVERS`` is not set, applies ``topics.yaml``,
then runs a worker and a traffic generator in this process and shows the committed
predictions as they arrive (read back with ``read_committed``, as any consumer would).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter, deque
from dataclasses import dataclass, field

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from app.adapters import kafka_local
from app.adapters.kafka_clients import partitions_of, plain_producer, reader
from app.adapters.topics import apply_topics, load_topics_file
from app.core.events import Prediction, decode
from app.settings import Settings
from app.traffic import make_requests, send
from app.worker.service import serve

console = Console()


async def ensure_kafka(settings: Settings) -> None:
    """The local broker when no cluster is configured; then the topics of ``topics.yaml``."""
    if not os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        console.print("[bold]Kafka[/bold]: starting the local broker (first run fetches it)…")
        config = kafka_local.BrokerConfig.from_settings(settings)
        result = await asyncio.to_thread(kafka_local.start, config)
        console.print(f"  {result.action} on {result.status.bootstrap} in {result.seconds:.1f}s")
    applied = await apply_topics(settings.bootstrap_servers, load_topics_file(settings.topics_file))
    console.print(
        f"[bold]Topics[/bold]: {len(applied.created)} created, {len(applied.present)} present"
    )


@dataclass
class _Seen:
    total: int = 0
    by_version: Counter[str] = field(default_factory=Counter)
    by_label: Counter[str] = field(default_factory=Counter)
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=2000))
    recent: deque[Prediction] = field(default_factory=lambda: deque(maxlen=6))
    started: float = field(default_factory=time.monotonic)


def _view(seen: _Seen, sent: int) -> Group:
    elapsed = max(time.monotonic() - seen.started, 1e-6)
    lat = sorted(seen.latencies)
    p50 = lat[len(lat) // 2] if lat else 0.0
    p99 = lat[int(len(lat) * 0.99)] if lat else 0.0
    head = Table.grid(padding=(0, 2))
    head.add_row("requests sent", f"{sent:,}", "predictions committed", f"{seen.total:,}")
    head.add_row(
        "throughput",
        f"{seen.total / elapsed:,.0f}/s",
        "end-to-end p50 / p99",
        f"{p50:.0f} / {p99:.0f} ms",
    )
    head.add_row(
        "by version",
        ", ".join(f"v{v}: {n:,}" for v, n in sorted(seen.by_version.items())),
        "by label",
        ", ".join(f"{k}: {n:,}" for k, n in sorted(seen.by_label.items())),
    )
    recent = Table("request", "card", "model", "epoch", "label", "fraud score", title="latest")
    for p in seen.recent:
        recent.add_row(
            p.request_id,
            p.entity_key,
            f"v{p.model.version} {p.model.sha256[:8]}",
            str(p.epoch),
            p.output.label,
            f"{p.output.scores[-1]:.3f}",
        )
    return Group(head, recent)


async def _watch(settings: Settings, seen: _Seen, run_id: str, stop: asyncio.Event) -> None:
    consumer = reader(settings)
    await consumer.start()
    try:
        partitions = await partitions_of(consumer, "inference.predictions")
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for tp in partitions:
            await consumer.position(tp)
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200)
            now = time.time() * 1000
            for records in batch.values():
                for r in records:
                    p = decode(Prediction, r.value)
                    if not p.request_id.startswith(run_id):
                        continue
                    seen.total += 1
                    seen.by_version[p.model.version] += 1
                    seen.by_label[p.output.label] += 1
                    seen.latencies.append(now - r.timestamp if r.timestamp else 0.0)
                    seen.recent.append(p)
    finally:
        await consumer.stop()


async def run_demo(settings: Settings, seconds: float, rate: float) -> int:
    await ensure_kafka(settings)
    run_id = f"demo-{int(time.time())}"
    n = int(seconds * rate)
    requests = make_requests(n, seed=int(time.time()) % 10_000, run_id=run_id)
    stop_worker, stop_watch = asyncio.Event(), asyncio.Event()
    seen = _Seen()
    worker = asyncio.create_task(serve(settings, "demo-worker", stop_worker))
    watcher = asyncio.create_task(_watch(settings, seen, run_id, stop_watch))
    producer = plain_producer(settings)
    await producer.start()
    console.print(
        f"[bold]Serving[/bold] {n:,} card transactions at {rate:,.0f}/s "
        "through a worker; predictions read back from inference.predictions:"
    )
    sender = asyncio.create_task(send(producer, requests, rate=rate))
    with Live(_view(seen, 0), console=console, refresh_per_second=4) as live:
        deadline = time.monotonic() + seconds + 30
        while time.monotonic() < deadline and (not sender.done() or seen.total < n):
            await asyncio.sleep(0.25)
            live.update(
                _view(
                    seen,
                    n if sender.done() else int(min(n, (time.monotonic() - seen.started) * rate)),
                )
            )
            if worker.done():
                break
    await sender
    await producer.stop()
    stop_worker.set()
    stop_watch.set()
    stats = await worker
    await watcher
    ok = seen.total == n
    console.print(
        f"[bold]{'Done' if ok else 'Incomplete'}[/bold]: {seen.total:,} of {n:,} requests got "
        f"a committed prediction; the worker scored {stats.records:,} records in "
        f"{stats.batches:,} batches."
    )
    return 0 if ok else 1
