"""aiokafka clients configured the one way every Rollout process uses them.

Readers use ``read_committed``; producers that write results are transactional and
idempotent. Connection settings (bootstrap servers, SASL/SSL) come from ``Settings`` only.
Importing this module changes nothing in aiokafka: :func:`configure_aiokafka` does, when an
entry point calls it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.cluster import ClusterMetadata
from aiokafka.errors import TopicAuthorizationFailedError
from aiokafka.producer import sender as _aiokafka_sender
from pydantic import BaseModel, ValidationError

from app.adapters.kafka_security import client_options
from app.core.events import decode
from app.settings import Settings

E = TypeVar("E", bound=BaseModel)
log = logging.getLogger(__name__)

# A transaction that begins right after the previous one committed finds its commit markers
# still being written, and the broker answers its first AddPartitionsToTxn with
# CONCURRENT_TRANSACTIONS. aiokafka 0.14.0 then waits a fixed 20 ms (``BACKOFF_OVERRIDE``,
# KAFKA-5477) before it asks again, while a local broker finishes the markers in 1-2 ms: at
# light load that wait was most of a worker's p99. Back-to-back transactions are this
# service's steady state, so retry as soon as the producer's own retry backoff.
TXN_RETRY_BACKOFF_S = 0.002


class _ExpectedRetries(logging.Filter):
    """The same race answers a transaction's first produce to a partition whose previous
    commit marker is not written yet with NOT_ENOUGH_REPLICAS (KIP-890 verification, as an old
    client sees it); aiokafka retries it and warns each time. It is the steady state of
    back-to-back transactions, not news: demoted to debug."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and "NotEnoughReplicas" in str(record.args):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


def configure_aiokafka() -> None:
    """Tune aiokafka, process-wide, for back-to-back transactions: its retry after
    CONCURRENT_TRANSACTIONS waits ``TXN_RETRY_BACKOFF_S`` instead of a fixed 20 ms, and the
    expected NOT_ENOUGH_REPLICAS retries log at debug (``_ExpectedRetries``). Each entry
    point calls it once (the CLI, the worker, the controller, the bench's own processes, the
    tests' conftest); calling it again changes nothing."""
    _aiokafka_sender.BACKOFF_OVERRIDE = TXN_RETRY_BACKOFF_S
    sender_log = logging.getLogger(_aiokafka_sender.__name__)
    if not any(isinstance(f, _ExpectedRetries) for f in sender_log.filters):
        sender_log.addFilter(_ExpectedRetries())


def connection(settings: Settings) -> dict[str, Any]:
    """Where the cluster is and how to authenticate (``app.adapters.kafka_security``)."""
    return {"bootstrap_servers": settings.bootstrap_servers, **client_options(settings)}


def _fetching(settings: Settings) -> dict[str, Any]:
    """aiokafka sends one fetch per broker at a time, and leaves out the partitions whose
    records are still buffered; those wait until the fetch in flight returns, which the broker
    holds until data arrives elsewhere or ``fetch_max_wait_ms`` passes (500 ms by default: it
    made p99 latency 100+ ms at light load). A short hold costs idle consumers a few empty
    fetches a second."""
    return {"fetch_max_wait_ms": settings.fetch_max_wait_ms}


def transactional_producer(
    settings: Settings, transactional_id: str, max_request_size: int = 1024 * 1024
) -> AIOKafkaProducer:
    """Transactional and idempotent; compressed as ``settings.output_compression`` says."""
    codec = settings.output_compression
    return AIOKafkaProducer(
        max_request_size=max_request_size,
        **connection(settings),
        transactional_id=transactional_id,
        enable_idempotence=True,
        acks="all",
        linger_ms=2,
        max_batch_size=256 * 1024,
        compression_type=None if codec == "none" else codec,
        transaction_timeout_ms=settings.transaction_timeout_ms,
        # Back-to-back transactions meet the previous one's markers still being written: the
        # broker answers a retriable error (NOT_ENOUGH_REPLICAS to this client, KIP-890), so
        # retry soon rather than after the default 100 ms.
        retry_backoff_ms=int(TXN_RETRY_BACKOFF_S * 1000),
    )


def plain_producer(settings: Settings) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        **connection(settings),
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
        max_batch_size=256 * 1024,
    )


def group_consumer(settings: Settings, group_id: str, **extra: Any) -> AIOKafkaConsumer:
    """A consumer-group member that commits offsets only through transactions."""
    return AIOKafkaConsumer(
        **connection(settings),
        group_id=group_id,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        **(_fetching(settings) | extra),
    )


def reader(settings: Settings, **extra: Any) -> AIOKafkaConsumer:
    """A consumer outside any group (assign partitions yourself), reading committed data."""
    return AIOKafkaConsumer(
        **connection(settings),
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        **(_fetching(settings) | extra),
    )


class MissingTopicError(LookupError):
    """A topic Rollout needs does not exist, or this principal may not see it."""


async def partitions_of(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """Every partition of ``topic``, from fresh cluster metadata (aiokafka's consumer has no
    public call for a topic it is not subscribed to; this is its one private access).
    ``TopicAuthorizationFailedError`` when the principal may not describe it."""
    cluster = await consumer._client.fetch_all_metadata()
    partitions = cluster.partitions_for_topic(topic)
    if not partitions:
        # A listing leaves out the topics this principal may not describe: ask for the topic
        # by name, which says whether it is missing or not authorized.
        named = ClusterMetadata()
        await consumer._client._metadata_update(named, [topic])
        if topic in named.unauthorized_topics:
            raise TopicAuthorizationFailedError(topic)
        raise MissingTopicError(
            f"topic {topic} does not exist (or this principal may not describe it); "
            "run `rollout topics apply`"
        )
    return [TopicPartition(topic, p) for p in sorted(partitions)]


async def assign_at_end(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """Assign every partition of ``topic`` and pin the position at its current end, so that
    what is written from now on (e.g. the answer to a command about to be sent) is read."""
    partitions = await partitions_of(consumer, topic)
    consumer.assign(partitions)
    await consumer.seek_to_end(*partitions)
    for tp in partitions:
        await consumer.position(tp)  # seek_to_end is lazy: resolve it now
    return partitions


async def stop_following(
    task: asyncio.Task[None] | None, consumer: AIOKafkaConsumer | None
) -> None:
    """Stop a reader's background task, then its consumer (either may be None: not started)."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if consumer is not None:
        await consumer.stop()


async def follow_events(
    consumer: AIOKafkaConsumer,
    kind: type[E],
    handle: Callable[[E], object],
    after_batch: Callable[[], Awaitable[None]] | None = None,
    unreadable_level: int = logging.WARNING,
) -> None:
    """Forever: decode every record ``consumer`` fetches as ``kind`` and ``handle`` it (then
    ``after_batch``); tombstones are skipped, an unreadable record is logged with where it is
    and skipped."""
    while True:
        batch = await consumer.getmany(timeout_ms=500)
        for records in batch.values():
            for record in records:
                if record.value is None:
                    continue
                try:
                    handle(decode(kind, record.value))
                except (ValidationError, ValueError) as exc:
                    log.log(
                        unreadable_level,
                        "unreadable %s at %s-%d@%d: %s",
                        kind.__name__,
                        record.topic,
                        record.partition,
                        record.offset,
                        exc,
                    )
        if after_batch is not None:
            await after_batch()
