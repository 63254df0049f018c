"""What every ``rollout bench`` line stands on: fixed routing tables (no controller), consumer
groups placed at a backlog, the sink topic of the ceilings, the local broker's pid.
"""

from __future__ import annotations

import contextlib
import uuid

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
from app.core.scoring import DeploymentRoute, RoutingTable
from app.core.topics import Topic
from app.harness.traffic import make_requests, send
from app.settings import Settings

SINK = "bench.sink"


def fixed_table(store: ModelStore, mode: Mode) -> RoutingTable:
    production = store.load(store.ref("fraud", "1"))
    candidate = store.load(store.ref("fraud", "2")) if mode is not Mode.MANUAL else None
    state = DeploymentState(
        deployment="fraud",
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
    return {"fraud": DeploymentRoute(state, production, candidate)}


def fixed_table_mode(table: RoutingTable) -> Mode:
    return table["fraud"].state.mode


Offsets = dict[TopicPartition, int]


async def fresh_group(settings: Settings, at: Offsets | None = None) -> Settings:
    """A consumer group whose committed offsets are ``at``, else the requests topic's end."""
    group = f"rollout-bench-{uuid.uuid4().hex[:8]}"
    consumer = group_consumer(settings, group)
    await consumer.start()
    try:
        partitions = await partitions_of(consumer, Topic.REQUESTS)
        if at is None:
            at = await consumer.end_offsets(partitions)
        consumer.assign(partitions)
        await consumer.commit({TopicPartition(tp.topic, tp.partition): o for tp, o in at.items()})
    finally:
        await consumer.stop()
    return settings.model_copy(update={"group_id": group})


async def write_backlog(settings: Settings, requests: int) -> Offsets:
    """Append ``requests`` generated requests; returns where they start (per partition)."""
    consumer = group_consumer(settings, f"rollout-bench-{uuid.uuid4().hex[:8]}")
    await consumer.start()
    try:
        partitions = await partitions_of(consumer, Topic.REQUESTS)
        start: Offsets = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
    producer = plain_producer(settings)
    await producer.start()
    try:
        await send(
            producer, make_requests(requests, seed=3, run_id=f"bench-{uuid.uuid4().hex[:6]}")
        )
    finally:
        await producer.stop()
    return start


async def ensure_sink(settings: Settings) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics([NewTopic(SINK, num_partitions=6, replication_factor=1)])
    finally:
        await admin.close()


def broker_pid(settings: Settings) -> int | None:
    """The local broker's pid when it is ours to see (None for a remote cluster)."""
    status = kafka_local.status(kafka_local.BrokerConfig.from_settings(settings))
    return status.pid if status.running else None
