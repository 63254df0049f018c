"""A traffic generator: synthetic card transactions sent as ``InferenceRequest``s.

Used by ``rollout demo``, the tests and the benchmarks. Requests are keyed by card id (the
entity key), features are sent by name (or as a list in the model's order), and sends are
pipelined: one ``send`` appends to the producer's batch, delivery is awaited in bulk.
``send_feedback`` plays the ground truth that arrives later (the generator knows each
transaction's true label) as a labelling pipeline should: every request of the deployment's
audit sample (``app.core.audit``, the policy's ``audit_rate``) is labelled, plus, optionally,
a share of the others (shown, never tested).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer

from app.core.audit import in_audit
from app.core.events import Feedback, InferenceRequest, encode, now_ms
from app.core.topics import Topic
from app.settings import Settings
from app.training.stream import LABELS, current_traffic


@dataclass(frozen=True)
class SentRequest:
    request: InferenceRequest
    key: bytes
    label: str | None = None  # the ground truth, known to the generator (for feedback)


def make_requests(
    n: int, seed: int, run_id: str, deployment: str = "fraud", as_list: bool = False
) -> list[SentRequest]:
    """``n`` requests drawn from current traffic; ids are ``{run_id}-{i}``."""
    tx = current_traffic(n, seed)
    rows = tx.features.tolist() if as_list else tx.feature_dicts()
    return [
        SentRequest(
            InferenceRequest(
                request_id=f"{run_id}-{i}",
                deployment=deployment,
                features=row,
                entity_key=None,
                sent_at=None,
            ),
            tx.card_ids[i].encode("utf-8"),
            LABELS[int(tx.labels[i])],
        )
        for i, row in enumerate(rows)
    ]


async def send(
    producer: AIOKafkaProducer,
    requests: Sequence[SentRequest],
    rate: float = 0.0,
    topic: str | None = None,
) -> None:
    """Send ``requests`` (stamping ``sent_at``), at ``rate`` per second (0: as fast as possible)
    to ``topic`` (None: the requests topic by the environment's settings)."""
    topic = topic or Settings().topics.name(Topic.REQUESTS)
    started = time.monotonic()
    pending: list[asyncio.Future[object]] = []
    for i, sent in enumerate(requests):
        if rate > 0:
            due = started + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        stamped = sent.request.model_copy(update={"sent_at": now_ms()})
        pending.append(await producer.send(topic, value=encode(stamped), key=sent.key))
        if len(pending) >= 5000:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)
    await producer.flush()


async def send_raw(
    producer: AIOKafkaProducer,
    values: Sequence[tuple[bytes | None, bytes]],
    topic: str | None = None,
) -> None:
    """Send ``(key, value)`` pairs as they are (malformed input for tests)."""
    topic = topic or Settings().topics.name(Topic.REQUESTS)
    pending = [await producer.send(topic, value=value, key=key) for key, value in values]
    await asyncio.gather(*pending)


async def send_feedback(
    producer: AIOKafkaProducer,
    requests: Sequence[SentRequest],
    *,
    audit_rate: float,
    others: float = 0.0,
    seed: int = 0,
    topic: str | None = None,
) -> int:
    """Ground truth for every request of the audit sample of inclusion probability
    ``audit_rate`` (the deployment policy's), and for an ``others`` share of the remaining
    requests (chosen by a seeded draw), as a fraud team's reviews would report it. Returns
    how many were sent."""
    topic = topic or Settings().topics.name(Topic.FEEDBACK)
    rng = random.Random(seed)
    pending = []
    for sent in requests:
        if sent.label is None:
            continue
        request = sent.request
        if not in_audit(request.deployment, request.request_id, audit_rate) and (
            rng.random() >= others
        ):
            continue
        feedback = Feedback(
            request_id=request.request_id,
            deployment=request.deployment,
            label=sent.label,
            observed_at=now_ms(),
        )
        key = request.deployment.encode("utf-8")
        pending.append(await producer.send(topic, value=encode(feedback), key=key))
    await asyncio.gather(*pending)
    return len(pending)
