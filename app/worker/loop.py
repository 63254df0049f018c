"""The worker's consume → score → publish loop, exactly once, on plain aiokafka.

Take up to ``batch_max_records`` records (what the fetcher holds, waiting at most
``batch_max_wait_ms``), score them (``app.core.scoring``), then publish every output and
the batch's input offsets in one Kafka transaction. Two batches overlap by one stage: the
next batch is taken and scored while the previous one's transaction commits (the loop would
otherwise sit idle through its round trips). A batch is never split over two transactions
and transactions never overlap, so ``send_offsets_to_transaction`` is called once per
transaction.

Rebalances: a revocation waits for the batch in flight to commit (it takes the same lock),
and a batch taken before a revocation is dropped: its partitions restart from their committed
offsets, wherever they are assigned next. When a batch is dropped or its transaction aborts,
the batch taken behind it is dropped too and rewound once the first one's rewind is done.

Crashes: the transactional id is the worker's stable id, so a restarted worker fences its
previous incarnation and aborts whatever transaction it left open before it reads
committed offsets. Readers of the outputs use ``read_committed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import IllegalStateError, KafkaError, ProducerFenced

from app.adapters import worker_metrics
from app.adapters.batch_send import BatchSender
from app.adapters.kafka_clients import group_consumer, transactional_producer
from app.adapters.round_trips import RoundTrips
from app.core.batch_result import BatchResult, BatchScorer, Topics
from app.core.events import now_ms
from app.core.requests import RawRecord
from app.settings import Settings
from app.worker.batch_trace import BatchTrace

log = logging.getLogger(__name__)


@dataclass
class WorkerStats:
    batches: int = 0
    records: int = 0
    predictions: int = 0
    comparisons: int = 0
    dead_letters: int = 0
    aborted_batches: int = 0
    dropped_batches: int = 0
    shadow_sampled: int = 0
    shadow_shed: int = 0
    started: float = field(default_factory=time.monotonic)
    first_batch_at: float = 0.0  # when the first batch committed (monotonic)
    last_batch_at: float = 0.0


class _Part(NamedTuple):
    """A scored part of a batch: how many of its records (in order), what they yielded."""

    records: int
    result: BatchResult


class _Revocations(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self._worker.joined = False
        async with self._worker.lock:  # waits for the batch in flight to commit
            self._worker.generation += 1
            log.info(
                "partitions revoked: %s", sorted(f"{tp.topic}-{tp.partition}" for tp in revoked)
            )

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info("partitions assigned: %s", sorted(f"{tp.topic}-{tp.partition}" for tp in assigned))
        if self._worker.on_assigned is not None:
            await self._worker.on_assigned()
        self._worker.joined = True


class Worker:
    def __init__(
        self,
        settings: Settings,
        worker_id: str,
        score: BatchScorer,
        topics: Topics | None = None,
        on_assigned: Callable[[], Awaitable[None]] | None = None,
        trace: Callable[[BatchTrace], None] | None = None,
    ) -> None:
        """``score`` turns each batch (and the worker's lag) into what to publish
        (``app.core.scoring.table_scorer`` in production); ``topics.requests`` is consumed
        (None: the settings' topic names). ``trace``, when given, receives each committed
        batch's ``BatchTrace`` with its transaction's round trips (``rollout bench``)."""
        self.settings = settings
        self.worker_id = worker_id
        self.topics = topics if topics is not None else Topics.of(settings.topics)
        self._score = score
        self.on_assigned = on_assigned
        self._trace = trace
        self._round_trips = RoundTrips() if trace is not None else None
        self.lock = asyncio.Lock()
        self.generation = 0
        self.stats = WorkerStats()
        # For the health probes: when the loop last went round, whether the group has given
        # this worker its assignment, and its lag then.
        self.beat_at: float | None = None
        self.joined = False
        self.lag = 0
        # Scoped by the environment's prefix (ROLLOUT_TOPIC_PREFIX), like the topics.
        self._group_id = settings.topics.scoped(settings.group_id)
        self._transactional_id = settings.topics.scoped(f"rollout-worker-{worker_id}")

    def _producer(self) -> AIOKafkaProducer:
        producer = transactional_producer(self.settings, self._transactional_id)
        if self._round_trips is not None:
            self._round_trips.attach(producer)
        return producer

    async def run(self, stop: asyncio.Event) -> WorkerStats:
        producer = self._producer()
        # Fence any earlier incarnation before reading offsets (see the module docstring).
        await producer.start()
        sender = BatchSender(producer)
        consumer = group_consumer(
            self.settings,
            self._group_id,
            max_poll_records=self.settings.batch_max_records,
            client_id=f"rollout-worker-{self.worker_id}",
            session_timeout_ms=self.settings.worker_session_timeout_ms,
            heartbeat_interval_ms=max(self.settings.worker_session_timeout_ms // 6, 100),
        )
        consumer.subscribe([self.topics.requests], listener=_Revocations(self))
        commit: asyncio.Task[bool] | None = None  # the previous batch's transaction
        aborted = 0  # aborted transactions before it began
        try:
            await consumer.start()
            while not stop.is_set():
                self.beat_at = time.monotonic()
                generation = self.generation
                trace = BatchTrace()
                records = await self._take(consumer, stop)
                trace.fetched(len(records))
                if not records:
                    self.lag = await self._lag(consumer)
                # Scored while the previous batch's transaction is still in flight.
                scored = (
                    [_Part(len(records), await self._prepare(consumer, records))]
                    if records
                    else None
                )
                trace.lap("score")
                if commit is not None:
                    committed = await commit
                    trace.lap("wait")
                    commit = None
                    if self.stats.aborted_batches != aborted:
                        producer = await self._replace_producer(producer, stop)
                        sender = BatchSender(producer)
                    if not committed and records:
                        # The previous batch went back to its partitions (dropped or aborted),
                        # maybe while this one was being taken: this one goes back too, now
                        # that nothing else moves the positions.
                        async with self.lock:
                            await self._rewind_dropped(consumer, records)
                        continue
                    if scored is not None:
                        await self._top_up(consumer, records, scored)
                        trace.lap("top-up")
                if records and scored is not None:
                    aborted = self.stats.aborted_batches
                    commit = asyncio.create_task(
                        self._commit(producer, sender, consumer, records, scored, generation, trace)
                    )
            if commit is not None:
                await commit
        finally:
            if commit is not None and not commit.done():
                commit.cancel()
                with contextlib.suppress(asyncio.CancelledError, KafkaError):
                    await commit
            await consumer.stop()
            await producer.stop()
        return self.stats

    async def _replace_producer(
        self, broken: AIOKafkaProducer, stop: asyncio.Event
    ) -> AIOKafkaProducer:
        """A fresh producer under the same transactional id after an aborted transaction.
        aiokafka's producer does not survive every failure (a broker restart can leave its
        transaction manager in a fatal state, and the next ``begin_transaction`` fails an
        assertion): starting a new one fences the old and aborts what it left open. Retried
        while the broker is unreachable."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(broken.stop(), timeout=10)
        while True:
            producer = self._producer()
            try:
                await producer.start()
                return producer
            except KafkaError as exc:
                log.warning("producer restart failed (%s); retrying", exc)
                with contextlib.suppress(Exception):
                    await producer.stop()
                if stop.is_set():
                    raise
                await asyncio.sleep(1.0)

    async def _rewind_dropped(
        self, consumer: AIOKafkaConsumer, records: list[ConsumerRecord]
    ) -> None:
        """A rebalance happened while the batch was taken: drop it unscored, and put every
        partition of it that is still (or newly) ours back at its committed offset. Part of
        the batch may have been fetched after the new assignment, moving the position past
        records that nobody has scored."""
        self.stats.dropped_batches += 1
        assigned = consumer.assignment()
        earliest: dict[TopicPartition, int] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            earliest[tp] = min(earliest.get(tp, r.offset), r.offset)
        for tp, offset in earliest.items():
            if tp not in assigned:
                continue
            committed = await consumer.committed(tp)
            _seek_if_assigned(consumer, tp, committed if committed is not None else offset)
        log.info(
            "dropped a batch of %d records; its partitions restart from their committed offsets",
            len(records),
        )

    async def _take(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> list[ConsumerRecord]:
        """Up to ``batch_max_records``: wait for the first record, then take what the fetcher
        holds. The batch closes when it is full, when nothing more is buffered, or after
        ``batch_max_wait_ms``, whichever comes first: records that arrive while a transaction
        commits are taken together by the next batch, so batches grow with the load by
        themselves and a lone request never waits for company."""
        limit = self.settings.batch_max_records
        taken: list[ConsumerRecord] = []
        first = await consumer.getmany(timeout_ms=200, max_records=limit)
        for part in first.values():
            taken.extend(part)
        if not taken:
            return taken
        deadline = time.monotonic() + self.settings.batch_max_wait_ms / 1000.0
        while len(taken) < limit and not stop.is_set() and time.monotonic() < deadline:
            more = await consumer.getmany(timeout_ms=0, max_records=limit - len(taken))
            if not more:
                break
            for part in more.values():
                taken.extend(part)
        return taken

    async def _top_up(
        self, consumer: AIOKafkaConsumer, records: list[ConsumerRecord], scored: list[_Part]
    ) -> None:
        """Add to the batch what arrived while the previous transaction committed (scored
        now, published in the same transaction): otherwise those records would wait for
        this batch's transaction and then for their own."""
        room = self.settings.batch_max_records - len(records)
        if room <= 0:
            return
        more = await consumer.getmany(timeout_ms=0, max_records=room)
        extra = [r for part in more.values() for r in part]
        if extra:
            scored.append(_Part(len(extra), await self._prepare(consumer, extra)))
            records.extend(extra)

    async def _prepare(
        self, consumer: AIOKafkaConsumer, records: list[ConsumerRecord]
    ) -> BatchResult:
        raw = [
            _raw_record((r.topic, r.partition, r.offset, r.key, r.value, r.timestamp, r.headers))
            for r in records
        ]
        lag = self.lag = await self._lag(consumer)
        worker_metrics.observe_lag(lag)
        return self._score(raw, lag)

    async def _commit(
        self,
        producer: AIOKafkaProducer,
        sender: BatchSender,
        consumer: AIOKafkaConsumer,
        records: list[ConsumerRecord],
        scored: list[_Part],
        generation: int,
        trace: BatchTrace,
    ) -> bool:
        """Publish one scored batch and its input offsets in one transaction. False when the
        batch was not committed: dropped (taken across a rebalance) or aborted."""
        trace.lap("wait")  # the task starts once the loop awaits (the next batch's fetch)
        async with self.lock:
            trace.lap("lock")
            if generation != self.generation:
                await self._rewind_dropped(consumer, records)
                return False
            committed = await self._publish(producer, sender, consumer, records, scored, trace)
        if committed and self._trace is not None:
            self._trace(trace)
        return committed

    async def _publish(
        self,
        producer: AIOKafkaProducer,
        sender: BatchSender,
        consumer: AIOKafkaConsumer,
        records: list[ConsumerRecord],
        parts: list[_Part],
        trace: BatchTrace,
    ) -> bool:
        first: dict[TopicPartition, int] = {}
        offsets: dict[TopicPartition, int] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            first.setdefault(tp, r.offset)
            offsets[tp] = max(offsets.get(tp, -1), r.offset + 1)
        if self._round_trips is not None:
            self._round_trips.take()  # what came before this transaction is not its
        try:
            began = trace.lap("lock")
            async with producer.transaction():
                await sender.send(  # an Outgoing is the (topic, key, value, headers) it sends
                    [o for _, result in parts for o in (*result.outgoing, *result.shed_reports)]
                )
                trace.lap("encode")
                await producer.send_offsets_to_transaction(offsets, self._group_id)
                trace.lap("offsets")
            trace.stages["transaction"] = trace.lap("commit") - began
        except ProducerFenced:
            log.error(
                "another worker with id %r took over (producer fenced); stopping", self.worker_id
            )
            raise
        except KafkaError as exc:
            # The transaction was aborted: nothing of this batch is visible. Read it again.
            log.warning("transaction aborted (%s); re-reading %d records", exc, len(records))
            self.stats.aborted_batches += 1
            worker_metrics.observe_abort()
            for tp, offset in first.items():
                _seek_if_assigned(consumer, tp, offset)
            return False
        trace.committed_at = time.time()
        trace.inputs = {tp.partition: (first[tp], offsets[tp] - 1) for tp in first}
        if self._round_trips is not None:
            trace.round_trips = self._round_trips.take()
        s = self.stats
        s.last_batch_at = time.monotonic()
        if not s.batches:
            s.first_batch_at = s.last_batch_at
        s.batches += 1
        s.records += len(records)
        at, start = now_ms(), 0
        for n, result in parts:  # each scored part with its own records
            self._count(result)
            worker_metrics.observe_batch(
                result, [r.timestamp for r in records[start : start + n]], at
            )
            start += n
        return True

    def _count(self, result: BatchResult) -> None:
        s = self.stats
        s.predictions += result.predictions
        s.comparisons += result.comparisons
        s.dead_letters += result.dead_letters
        s.shadow_sampled += sum(result.shadow_sampled.values())
        s.shadow_shed += sum(result.shadow_shed.values())

    async def _lag(self, consumer: AIOKafkaConsumer) -> int:
        """Records behind the log end over this worker's partitions (as of the last fetch)."""
        behind = 0
        for tp in consumer.assignment():
            end = consumer.highwater(tp)
            if end is not None:
                behind += max(0, end - await consumer.position(tp))
        return behind


# ``RawRecord(...)`` runs a Python-level ``__new__``: one per consumed record is made this way
# instead (the same tuple, faster).
_raw_record: Callable[[tuple[Any, ...]], RawRecord] = functools.partial(tuple.__new__, RawRecord)


def _seek_if_assigned(consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int) -> None:
    """Rewind ``tp`` to ``offset`` if it is still ours. The assignment can be lost while the
    worker awaits (a coordinator lost in a broker outage drops it without a revocation
    callback); a partition that is no longer ours restarts from its committed offset wherever
    it is assigned next, so there is nothing to rewind."""
    try:
        consumer.seek(tp, offset)
    except IllegalStateError:
        log.info("%s-%d is no longer assigned: not rewound", tp.topic, tp.partition)
