"""Continuous load of known request ids, and reading back what was committed for them.

:class:`Load` sends, at a steady rate until stopped, valid requests (ids ``<run>-<n>``, keyed
by card id) mixed with malformed records (keyed ``<run>-bad-<n>``) of four kinds. Only what
the broker acknowledged counts as sent: a send that failed (the broker was down too long) is
reported apart, never resent (a resend could duplicate the input itself).
:func:`read_outputs` reads ``inference.predictions`` and ``inference.dlq`` with
``read_committed`` until every sent record has its output, then a little longer to catch
duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import orjson
from aiokafka import AIOKafkaProducer, TopicPartition

from app.adapters.kafka_clients import partitions_of, reader
from app.core.events import encode, now_ms
from app.core.topics import Topic
from app.harness.traffic import make_requests
from app.settings import Settings
from app.training.stream import FEATURE_NAMES

BAD_EVERY = 25  # one malformed record in 25


def _malformed(n: int, run_id: str) -> bytes:
    """Four kinds in turn: cut-off JSON, unknown deployment, missing features, a NaN."""
    kind = n % 4
    if kind == 0:
        return b'{"request_id": "' + run_id.encode() + b'", "features": '
    features: object = [0.0] * len(FEATURE_NAMES)
    if kind == 2:
        features = {"amount": 1.0}
    body = {
        "request_id": f"{run_id}-bad-{n}",
        "deployment": "no-such-deployment" if kind == 1 else "fraud",
        "features": features,
    }
    raw = orjson.dumps(body)
    return raw.replace(b"[0.0,", b"[NaN,", 1) if kind == 3 else raw


@dataclass
class Load:
    """Valid and malformed records at ``rate`` per second until ``stop``."""

    producer: AIOKafkaProducer
    run_id: str
    requests_topic: str  # the cluster's name: settings.topics.name(Topic.REQUESTS)
    rate: float = 300.0
    chunk: int = 30
    valid: dict[str, int] = field(default_factory=dict)  # acknowledged: request id → sent ms
    invalid: list[str] = field(default_factory=list)  # acknowledged: record keys
    failed: int = 0  # sends the broker never acknowledged
    started_ms: int = field(default_factory=now_ms)

    async def run(self, stop: asyncio.Event) -> None:
        pending: list[tuple[str, bool, int, asyncio.Future[object]]] = []
        n = 0
        began = time.monotonic()
        while not stop.is_set():
            requests = make_requests(self.chunk, seed=n // self.chunk, run_id=f"{self.run_id}-c{n}")
            for sent in requests:
                if n % BAD_EVERY == BAD_EVERY - 1:
                    key = f"{self.run_id}-bad-{n}"
                    value = _malformed(n, self.run_id)
                    fut = await self.producer.send(
                        self.requests_topic, value=value, key=key.encode()
                    )
                    pending.append((key, False, now_ms(), fut))
                else:
                    at = now_ms()
                    stamped = sent.request.model_copy(update={"sent_at": at})
                    fut = await self.producer.send(
                        self.requests_topic, value=encode(stamped), key=sent.key
                    )
                    pending.append((sent.request.request_id, True, at, fut))
                n += 1
            pending = self._harvest(pending)
            delay = began + n / self.rate - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.producer.flush(), timeout=60)
        await asyncio.wait([f for *_, f in pending], timeout=60) if pending else None
        self._harvest(pending, final=True)

    def _harvest(
        self, pending: list[tuple[str, bool, int, asyncio.Future[object]]], final: bool = False
    ) -> list[tuple[str, bool, int, asyncio.Future[object]]]:
        left = []
        for item in pending:
            ident, is_valid, at, fut = item
            if not fut.done():
                if final:
                    fut.cancel()
                    self.failed += 1
                else:
                    left.append(item)
                continue
            if fut.cancelled() or fut.exception() is not None:
                self.failed += 1
            elif is_valid:
                self.valid[ident] = at
            else:
                self.invalid.append(ident)
        return left


@dataclass
class Outputs:
    """What was committed for one run: each prediction's request id, serving time and epoch;
    each dead letter's key and code."""

    predicted: list[str] = field(default_factory=list)
    served_at: dict[str, int] = field(default_factory=dict)
    epochs: list[tuple[int, int]] = field(default_factory=list)  # (served_at, epoch)
    dead_letters: list[str] = field(default_factory=list)
    codes: dict[str, str] = field(default_factory=dict)


async def read_outputs(
    settings: Settings,
    load: Load,
    *,
    timeout_s: float = 90.0,
    settle_s: float = 2.0,
) -> Outputs:
    """Read from the run's start until every acknowledged record has an output (or the
    timeout), then ``settle_s`` more."""
    needle = load.run_id.encode()
    out = Outputs()
    want_valid, want_invalid = set(load.valid), set(load.invalid)
    consumer = reader(settings, client_id="rollout-chaos-reader")
    await consumer.start()
    try:
        partitions: list[TopicPartition] = []
        predictions = settings.topics.name(Topic.PREDICTIONS)
        dlq = settings.topics.name(Topic.DLQ)
        for topic in (predictions, dlq):
            partitions += await partitions_of(consumer, topic)
        consumer.assign(partitions)
        found = await consumer.offsets_for_times({tp: load.started_ms - 1000 for tp in partitions})
        ends = await consumer.end_offsets(partitions)
        for tp in partitions:
            at = found.get(tp)
            consumer.seek(tp, at.offset if at is not None else ends[tp])
        deadline = time.monotonic() + timeout_s
        settled_at: float | None = None
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for tp, records in batch.items():
                for r in records:
                    if tp.topic == predictions and r.value and needle in r.value:
                        p = orjson.loads(r.value)
                        out.predicted.append(p["request_id"])
                        out.served_at.setdefault(p["request_id"], p["served_at"])
                        out.epochs.append((p["served_at"], p["epoch"]))
                    elif tp.topic == dlq and r.key and r.key.startswith(needle):
                        key = r.key.decode()
                        out.dead_letters.append(key)
                        out.codes[key] = orjson.loads(r.value)["error"]["code"]
            complete = want_valid <= out.served_at.keys() and want_invalid <= set(out.dead_letters)
            if settled_at is None and complete:
                settled_at = time.monotonic() + settle_s
            if settled_at is not None and time.monotonic() >= settled_at:
                break
        return out
    finally:
        await consumer.stop()
