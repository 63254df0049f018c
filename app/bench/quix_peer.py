"""A Quix Streams peer of ``rollout bench``: the worker's job as a Quix Streams 3 application
would do it, per message (decode the JSON request, onnxruntime on that one row of the same
fraud model, produce the prediction as JSON), with Quix's defaults (a commit every 5 s)
and the processing guarantee given: ``at-least-once`` or ``exactly-once`` (a Kafka
transaction per commit).

``rollout bench`` runs it as a process of its own (``python -m app.bench.quix_peer GROUP
SINK GUARANTEE``, ``app.bench.peers``) with a consumer group whose committed offsets it has
placed, and times what it writes to ``SINK``.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
from quixstreams import Application

from app.adapters.model_store import ModelStore
from app.core.topics import Topic
from app.settings import Settings


def build_quix_app(
    settings: Settings, group: str, sink: str, guarantee: str
) -> tuple[Application, Any]:
    store = ModelStore(settings.model_store)
    model = store.load(store.ref("fraud", store.spec("fraud").initial_production))
    names = model.feature_names

    def predict(body: dict[str, Any]) -> dict[str, Any]:
        x = np.array([[body["features"][name] for name in names]], dtype=np.float32)
        labels, scores = model.predict(x)
        return {
            "request_id": body["request_id"],
            "deployment": body["deployment"],
            "label": labels[0] if labels else None,
            "scores": scores[0].tolist(),
        }

    app = Application(
        broker_address=settings.bootstrap_servers,
        consumer_group=group,
        auto_offset_reset="earliest",
        processing_guarantee="exactly-once" if guarantee == "exactly-once" else "at-least-once",
        state_dir=str(settings.home / "quix-peer" / group),
        loglevel="WARNING",
        auto_create_topics=False,
        use_changelog_topics=False,
    )
    requests = app.topic(
        settings.topics.name(Topic.REQUESTS), key_deserializer="bytes", value_deserializer="json"
    )
    outputs = app.topic(sink, key_serializer="bytes", value_serializer="json")
    sdf = app.dataframe(requests).apply(predict)
    sdf.to_topic(outputs)
    return app, sdf


def main(group: str, sink: str, guarantee: str) -> None:
    app, sdf = build_quix_app(Settings(), group, sink, guarantee)
    app.run(sdf)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
