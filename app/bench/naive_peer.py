"""The naive peer of ``rollout bench``: what a faust tutorial would build to serve a model.

One faust agent that, for each record on its own, decodes the request, runs onnxruntime on
that one row and sends the prediction (faust's default at-least-once guarantee, no
transactions, no validation, no routing). ``rollout bench`` runs it as a process of its own
(``python -m app.bench.naive_peer APP_ID SINK``, ``app.bench.peers``) with a consumer group
whose committed offsets it has placed, and times the outputs it writes to ``SINK``.
"""

from __future__ import annotations

import sys
from typing import Any

import faust
import numpy as np
import orjson

from app.adapters.kafka_clients import configure_aiokafka
from app.adapters.model_store import ModelStore
from app.core.topics import Topic
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


def main(app_id: str, sink: str) -> None:
    configure_aiokafka()  # as in every Rollout process (the peer shares the clients' module)
    app = build_naive_app(Settings(), app_id, sink)
    faust.Worker(app, loglevel="warning", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
