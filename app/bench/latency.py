"""End-to-end latency of the worker under open-loop load: the worker in a process of its own
(``python -m app.bench.latency MODE GROUP``, a fixed routing table), requests handed to a
producer without linger at a steady rate, their predictions read back with ``read_committed``.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid

import orjson
from aiokafka import AIOKafkaProducer

from app.adapters.kafka_clients import (
    assign_at_end,
    configure_aiokafka,
    reader,
)
from app.adapters.model_store import ModelStore
from app.bench.report import Latency
from app.bench.setup import fixed_table, fresh_group
from app.core.events import (
    Mode,
    encode,
)
from app.core.scoring import Topics, table_scorer
from app.core.topics import Topic
from app.harness.processes import RolloutProcess
from app.harness.traffic import make_requests
from app.settings import Settings
from app.worker.loop import Worker
from app.worker.service import install_stop_signals


async def latency(
    settings: Settings, name: str, mode: Mode, rate: float, seconds: float
) -> Latency:
    """End-to-end latency under open-loop load at ``rate``: from handing a request to the
    producer to reading its committed prediction (``read_committed``). The worker runs in a
    process of its own (``python -m app.bench.latency MODE GROUP``), so the load does not
    share its loop."""
    group = await fresh_group(settings)
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "ROLLOUT_GROUP_ID": group.group_id,
        "ROLLOUT_MODEL_STORE": str(settings.model_store),
    }
    worker = RolloutProcess(
        [mode.value, group.group_id], None, env, module="app.bench.latency"
    ).start()
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
        await assign_at_end(tail, settings.topics.name(Topic.PREDICTIONS))
        requests_topic = settings.topics.name(Topic.REQUESTS)
        collector = asyncio.create_task(collect())
        probe = make_requests(1, seed=9, run_id=f"{run}-probe")[0]
        deadline = time.monotonic() + 60
        while f"{run}-probe-0" not in seen and time.monotonic() < deadline:  # worker ready?
            await producer.send_and_wait(requests_topic, encode(probe.request), key=probe.key)
            await asyncio.sleep(1.0)
        started, i = time.monotonic(), 0
        while i < len(requests):  # open loop: each tick sends what is due by now
            due = min(int((time.monotonic() - started) * rate) + 1, len(requests))
            now = time.time() * 1000
            for request_id, key, value in requests[i:due]:
                sent[request_id] = now
                await producer.send(requests_topic, value, key=key)
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
        await producer.stop()
        await tail.stop()
    delays = sorted(seen[rid] - sent[rid] for rid in sent if rid in seen)
    return Latency(
        name, rate, len(requests), len(delays), _quantile(delays, 0.5), _quantile(delays, 0.99)
    )


def _quantile(ordered: list[float], q: float) -> float:
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)] if ordered else float("nan")


async def _serve_fixed(mode: Mode, worker_id: str) -> None:
    """The worker's loop with a fixed routing table, until SIGTERM (``rollout bench``'s
    latency lines run it as a process of its own)."""
    configure_aiokafka()
    settings = Settings()
    table = fixed_table(ModelStore(settings.model_store), mode)
    stop = asyncio.Event()
    install_stop_signals(stop)
    score = table_scorer(
        lambda: table,
        worker_id=worker_id,
        max_request_bytes=settings.max_request_bytes,
        shed_lag=settings.shadow_shed_lag,
        topics=Topics.of(settings.topics),
    )
    await Worker(settings, worker_id, score).run(stop)


if __name__ == "__main__":
    asyncio.run(_serve_fixed(Mode(sys.argv[1]), sys.argv[2]))
