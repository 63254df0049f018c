"""Reading what the workers committed, and what onnxruntime says directly, for assertions."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import numpy as np
import onnxruntime as ort
import orjson
from aiokafka import ConsumerRecord

from app.adapters.kafka_clients import assign_at_end, reader
from app.adapters.topic_reader import read_topic
from app.core.events import Comparison, Prediction, decode, now_ms
from app.core.topics import Topic
from app.harness.traffic import SentRequest
from app.settings import Settings
from app.training.stream import FEATURE_NAMES

MODELS = Path(__file__).resolve().parents[2] / "models"
# Outputs are read from the start of this test session on (not the topics' whole history).
SESSION_START_MS = now_ms() - 60_000


def direct(version: str, rows: np.ndarray) -> tuple[list[str], np.ndarray]:
    """What onnxruntime computes for ``rows`` with no Rollout code in between."""
    session = ort.InferenceSession(str(MODELS / "fraud" / version / "model.onnx"))
    manifest = orjson.loads((MODELS / "fraud" / version / "model.json").read_bytes())
    label, scores = session.run(None, {session.get_inputs()[0].name: rows})
    labels = [manifest["labels"][int(x)] if not isinstance(x, str) else x for x in label]
    return labels, np.asarray(scores)


def feature_rows(sent: list[SentRequest]) -> np.ndarray:
    feats = [s.request.features for s in sent]
    return np.array(
        [[f[n] for n in FEATURE_NAMES] if isinstance(f, dict) else f for f in feats],
        dtype=np.float32,
    )


async def predictions(
    settings: Settings, prefix: str, expect: int, settle_s: float = 3.0, timeout_s: float = 120
) -> list[tuple[ConsumerRecord, Prediction]]:
    """Committed predictions whose request id starts with ``prefix`` (with their records)."""
    return await _matching(
        settings,
        settings.topics.name(Topic.PREDICTIONS),
        Prediction,
        prefix,
        expect,
        settle_s,
        timeout_s,
    )


async def comparisons(
    settings: Settings, prefix: str, expect: int, settle_s: float = 3.0, timeout_s: float = 120
) -> list[Comparison]:
    found = await _matching(
        settings,
        settings.topics.name(Topic.COMPARISONS),
        Comparison,
        prefix,
        expect,
        settle_s,
        timeout_s,
    )
    return [c for _, c in found]


_Keyed = TypeVar("_Keyed", Prediction, Comparison)


async def _matching(
    settings: Settings,
    topic: str,
    kind: type[_Keyed],
    prefix: str,
    expect: int,
    settle_s: float,
    timeout_s: float,
) -> list[tuple[ConsumerRecord, _Keyed]]:
    """Read ``topic`` (from the session's start) until ``expect`` records of ``kind`` with a
    request id starting with ``prefix`` are in; each record is decoded once, as it arrives."""
    needle = prefix.encode()
    found: list[tuple[ConsumerRecord, _Keyed]] = []
    scanned = 0

    def take(records: list[ConsumerRecord]) -> int:
        nonlocal scanned
        for record in records[scanned:]:
            if record.value and needle in record.value:
                event = decode(kind, record.value)
                if event.request_id.startswith(prefix):
                    found.append((record, event))
        scanned = len(records)
        return len(found)

    records = await read_topic(
        settings,
        topic,
        lambda rs: take(rs) >= expect,
        timeout_s=timeout_s,
        settle_s=settle_s,
        since_ms=SESSION_START_MS,
    )
    take(records)
    return found


class Tail:
    """Follows a topic from its end at ``start()``: what gets committed from then on."""

    def __init__(self, settings: Settings, topic: str | None = None) -> None:
        """``topic``: a cluster name (None: the predictions topic)."""
        self._consumer = reader(settings)
        self._topic = topic or settings.topics.name(Topic.PREDICTIONS)
        self.records: list[ConsumerRecord] = []

    async def start(self) -> Tail:
        await self._consumer.start()
        await assign_at_end(self._consumer, self._topic)
        return self

    async def poll(self, timeout_ms: int = 100) -> list[ConsumerRecord]:
        batch = await self._consumer.getmany(timeout_ms=timeout_ms)
        new = [r for part in batch.values() for r in part]
        self.records.extend(new)
        return new

    async def stop(self) -> None:
        await self._consumer.stop()
