"""The naive peer of ``rollout bench``: what a faust tutorial would build to serve a model.

One faust agent that, for each record on its own, decodes the request, runs onnxruntime on
that one row and sends the prediction (faust's default at-least-once guarantee, no
transactions, no validation, no routing). ``rollout bench`` runs it as a process of its own
(``python -m app.bench.naive_peer APP_ID SINK``, started by :func:`measure`) with a consumer group
whose offsets it has put at the end of ``inference.requests``, and times the outputs it writes
to ``SINK``.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import faust
import numpy as np
import orjson

from app.adapters.kafka_clients import (
    assign_at_end,
    configure_aiokafka,
    plain_producer,
    reader,
)
from app.adapters.model_store import ModelStore
from app.adapters.process_stats import cpu_seconds
from app.bench.report import NaiveLine
from app.core.topics import Topic
from app.harness.processes import RolloutProcess
from app.harness.traffic import make_requests, send
from app.settings import Settings


def build_naive_app(settings: Settings, app_id: str, sink: str) -> faust.App:
    store = ModelStore(settings.model_store)
    model = store.load(store.ref("fraud", store.spec("fraud").initial_production))
    names = model.feature_names
    (settings.home / "naive-peer").mkdir(parents=True, exist_ok=True)
    app = faust.App(
        app_id,
        broker=";".join(f"kafka://{host}" for host in settings.bootstrap_servers.split(",")),
        key_serializer="raw",
        value_serializer="raw",
        topic_allow_declare=False,
        topic_disable_leader=True,
        datadir=str(settings.home / "naive-peer" / app_id),
        web_enabled=False,
    )
    requests = app.topic(settings.topics.name(Topic.REQUESTS), key_type=bytes, value_type=bytes)
    outputs = app.topic(sink, key_type=bytes, value_type=bytes)

    @app.agent(requests)
    async def predict(stream: faust.StreamT[Any]) -> None:
        async for event in stream.events():
            body = orjson.loads(event.message.value)
            x = np.array([[body["features"][name] for name in names]], dtype=np.float32)
            labels, scores = model.predict(x)
            prediction = {
                "request_id": body["request_id"],
                "deployment": body["deployment"],
                "label": labels[0] if labels else None,
                "scores": scores[0].tolist(),
            }
            await outputs.send(key=event.message.key, value=orjson.dumps(prediction))

    return app


async def measure(
    settings: Settings,
    requests: int,
    sink: str,
    fresh_group: Callable[[Settings], Awaitable[Settings]],
) -> NaiveLine:
    """Drain a backlog of ``requests`` through ``app.bench.naive_peer`` in a process of its own;
    the rate is between its first and last output (its start-up is not counted)."""
    group = await fresh_group(settings)
    run = f"naive-{uuid.uuid4().hex[:6]}"
    producer = plain_producer(settings)
    await producer.start()
    try:
        await send(
            producer,
            make_requests(requests, seed=3, run_id=run),
            topic=settings.topics.name(Topic.REQUESTS),
        )
    finally:
        await producer.stop()
    tail = reader(settings)
    await tail.start()
    await assign_at_end(tail, sink)
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "ROLLOUT_MODEL_STORE": str(settings.model_store),
        "ROLLOUT_TOPIC_PREFIX": settings.topic_prefix,
    }
    peer = RolloutProcess([group.group_id, sink], None, env, module="app.bench.naive_peer")
    peer.start()
    needle = run.encode()
    stamps: list[int] = []
    try:
        deadline = time.monotonic() + 300
        while len(stamps) < requests and time.monotonic() < deadline and peer.alive():
            batch = await tail.getmany(timeout_ms=200)
            for records in batch.values():
                stamps.extend(r.timestamp for r in records if needle in r.value)
        cpu = cpu_seconds(peer.pid) or 0.0
    finally:
        peer.terminate()
        await tail.stop()
    if len(stamps) < 2:
        return NaiveLine(len(stamps), 0.0, cpu)
    stamps.sort()
    return NaiveLine(len(stamps) - 1, (stamps[-1] - stamps[0]) / 1000, cpu)


def main(app_id: str, sink: str) -> None:
    configure_aiokafka()  # as in every Rollout process (the peer shares the clients' module)
    app = build_naive_app(Settings(), app_id, sink)
    faust.Worker(app, loglevel="warning", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
