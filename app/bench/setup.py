"""What every ``rollout bench`` line stands on: fixed routing tables (no controller), backlogs
of generated requests, consumer groups placed at a backlog, the bench's own topics (the
ceilings' sink, the drains' backlogs), the local broker's pid.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Sequence

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from app.adapters import kafka_local
from app.adapters.kafka_clients import (
    group_consumer,
    partitions_of,
    plain_producer,
)
from app.adapters.model_store import ModelStore
from app.core.events import (
    DeploymentState,
    Mode,
    Phase,
    now_ms,
)
from app.core.policy import Policy
from app.core.routes import DeploymentRoute, RoutingTable
from app.core.topics import Topic
from app.harness.traffic import SentRequest, make_requests, send
from app.settings import Settings

SINK = "bench.sink"
# The fraud lines' backlog: a topic of the bench's own (like each other kind's), so that a drain
# never reads what something else writes to the requests topic meanwhile.
FRAUD_BACKLOG = "bench.requests.fraud"


def fixed_table(store: ModelStore, mode: Mode, deployment: str = "fraud") -> RoutingTable:
    """``deployment`` served by version 1 (candidate 2 unless ``mode`` is manual)."""
    production = store.load(store.ref(deployment, "1"))
    candidate = store.load(store.ref(deployment, "2")) if mode is not Mode.MANUAL else None
    state = DeploymentState(
        deployment=deployment,
        epoch=1,
        mode=mode,
        phase=Phase.PROGRESSING if candidate else Phase.STABLE,
        production=production.ref,
        candidate=candidate.ref if candidate else None,
        canary_weight=0.10 if mode is Mode.CANARY else 0.0,
        shadow_sample_rate=1.0,
        policy=Policy(),
        updated_at=now_ms(),
    )
    return {deployment: DeploymentRoute(state, production, candidate)}


def fixed_table_mode(table: RoutingTable) -> Mode:
    return next(iter(table.values())).state.mode


Offsets = dict[TopicPartition, int]


async def fresh_group(settings: Settings, at: Offsets | None = None) -> Settings:
    """A consumer group whose committed offsets are ``at`` (on their topic), else the requests
    topic's end."""
    group = f"rollout-bench-{uuid.uuid4().hex[:8]}"
    consumer = group_consumer(settings, group)
    await consumer.start()
    try:
        if at is None:
            at = await consumer.end_offsets(
                await partitions_of(consumer, settings.topics.name(Topic.REQUESTS))
            )
        consumer.assign(list(at))
        await consumer.commit({TopicPartition(tp.topic, tp.partition): o for tp, o in at.items()})
    finally:
        await consumer.stop()
    return settings.model_copy(update={"group_id": group})


def fraud_requests(n: int, run_id: str) -> list[SentRequest]:
    return make_requests(n, seed=3, run_id=run_id)


async def write_backlog(
    settings: Settings,
    requests: int,
    topic: str | None = None,
    make: Callable[[int, str], list[SentRequest]] = fraud_requests,
) -> Offsets:
    """Append ``requests`` generated requests (``fraud``'s unless ``make`` says otherwise) to
    ``topic`` (None: the requests topic); returns where they start (per partition)."""
    topic = topic or settings.topics.name(Topic.REQUESTS)
    consumer = group_consumer(settings, f"rollout-bench-{uuid.uuid4().hex[:8]}")
    await consumer.start()
    try:
        partitions = await partitions_of(consumer, topic)
        start: Offsets = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
    producer = plain_producer(settings)
    await producer.start()
    try:
        await send(producer, make(requests, f"bench-{uuid.uuid4().hex[:6]}"), topic=topic)
    finally:
        await producer.stop()
    return start


async def ensure_topics(settings: Settings, names: Sequence[str]) -> None:
    """Create the bench's own topics (the sink, the backlogs): 6 partitions."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        for name in names:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(name, num_partitions=6, replication_factor=1)])
    finally:
        await admin.close()


def broker_pid(settings: Settings) -> int | None:
    """The local broker's pid when it is ours to see (None for a remote cluster)."""
    status = kafka_local.status(kafka_local.BrokerConfig.from_settings(settings))
    return status.pid if status.running else None
