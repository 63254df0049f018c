"""``rollout bench``'s controller pace: a shadow rollout (sample rate 1) fed a backlog, so
that the worker writes comparisons at its full shadow rate; the controller's lag behind them,
from its own analysis snapshots (``deployments.analysis``, each carrying the comparison offset
it covers), against the comparisons topic.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from app.adapters.kafka_clients import (
    partitions_of,
    plain_producer,
    reader,
)
from app.adapters.partitioning import partition_for
from app.bench.report import PaceReport
from app.bench.swaps import ProcessCpu, Progress, command
from app.core.events import (
    Action,
    Mode,
)
from app.core.topics import Topic
from app.harness.processes import Services
from app.harness.rollout_scenarios import HANDS_OFF, reset
from app.harness.traffic import make_requests, send
from app.settings import Settings


async def controller_pace(
    settings: Settings, services: Services, requests: int, progress: Progress
) -> PaceReport:
    """A shadow rollout of v2 at sample rate 1 over a backlog of ``requests``."""
    await command(
        settings, Action.DEPLOY, version="2", mode=Mode.SHADOW, sample_rate=1.0, policy=HANDS_OFF
    )
    consumer = reader(settings)
    await consumer.start()
    try:
        comparisons_topic = settings.topics.name(Topic.COMPARISONS)
        comparisons = await partitions_of(consumer, comparisons_topic)
        tp = TopicPartition(comparisons_topic, partition_for("fraud", len(comparisons)))
        analysis = await partitions_of(consumer, settings.topics.name(Topic.ANALYSIS))
        consumer.assign([tp, *analysis])
        start_offset = (await consumer.end_offsets([tp]))[tp]
        earlier = await _catch_up(consumer, tp, analysis, start_offset, progress)
        await consumer.seek_to_end(*analysis)
        for a in analysis:
            await consumer.position(a)
        cpu = ProcessCpu(settings, services)
        await _write_backlog(settings, requests)
        progress(f"  backlog of {requests:,} requests written; following the controller …")
        snapshots, end, last = await _follow(consumer, tp, analysis, start_offset)
        cpu_s = cpu.read()
        consumer.resume(tp)
        if last is None:
            last = await _last_record(consumer, tp, start_offset, end)
        report = await _pace_report(consumer, tp, start_offset, last, snapshots, cpu_s)
        return replace(report, earlier_backlog=earlier[0], earlier_caught_up_s=earlier[1])
    finally:
        await consumer.stop()
        await reset(settings)


async def _catch_up(
    consumer: AIOKafkaConsumer,
    tp: TopicPartition,
    analysis: list[TopicPartition],
    start_offset: int,
    progress: Progress,
    timeout_s: float = 300.0,
) -> tuple[int, float | None]:
    """Wait until the controller covers the comparisons already on ``tp`` before the pace's
    own: the earlier phases' (a full run's shadow lines leave hundreds of thousands for
    fraud), which a controller started after them reads from its last snapshot on.
    Otherwise the pace would time that catching up too. Returns how many comparison offsets
    it had still to cover and how long covering them took (None: not within ``timeout_s``)."""
    if start_offset == 0:
        return 0, 0.0
    last_before, _ = await _last_record(consumer, tp, max(0, start_offset - 50), start_offset)
    key = f"p{tp.partition}".encode()
    await consumer.seek_to_beginning(*analysis)
    consumer.pause(tp)
    started = time.monotonic()
    first: int | None = None
    covered = 0
    try:
        while time.monotonic() - started < timeout_s:
            batch = await consumer.getmany(*analysis, timeout_ms=500)
            found = _snapshots(batch, key)
            if found:
                covered = found[-1][1]  # the latest snapshot read
            if not batch:  # read up to the end: what the latest snapshot covers
                if first is None:
                    first = covered
                    behind = max(0, last_before + 1 - covered)
                    if behind:
                        progress(f"  the controller has {behind:,} earlier comparisons to cover …")
                if covered > last_before:
                    return max(0, last_before + 1 - first), time.monotonic() - started
    finally:
        consumer.resume(tp)
    return max(0, last_before + 1 - (first or 0)), None


async def _write_backlog(settings: Settings, requests: int) -> None:
    producer = plain_producer(settings)
    await producer.start()
    try:
        await send(
            producer,
            make_requests(requests, seed=11, run_id=f"pace-{uuid.uuid4().hex[:6]}"),
            topic=settings.topics.name(Topic.REQUESTS),
        )
    finally:
        await producer.stop()


async def _follow(
    consumer: AIOKafkaConsumer,
    tp: TopicPartition,
    analysis: list[TopicPartition],
    start_offset: int,
) -> tuple[list[tuple[int, int]], int, tuple[int, int] | None]:
    """Read the controller's snapshots of ``tp``'s partition until it covered the last
    comparison (or stayed behind 15 s after the comparisons stopped). Returns the snapshots
    as (written at ms, comparisons offset covered), the comparisons' end offset, and their
    last record (offset, timestamp) when it was looked up."""
    key = f"p{tp.partition}".encode()
    snapshots: list[tuple[int, int]] = []
    consumer.pause(tp)
    quiet_since, end, last = time.monotonic(), start_offset, None
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        snapshots += _snapshots(await consumer.getmany(*analysis, timeout_ms=250), key)
        now_end = (await consumer.end_offsets([tp]))[tp]
        if now_end != end:
            end, quiet_since, last = now_end, time.monotonic(), None
        quiet = time.monotonic() - quiet_since
        if end > start_offset and quiet > 3.0:
            if last is None:
                consumer.resume(tp)
                last = await _last_record(consumer, tp, start_offset, end)
                consumer.pause(tp)
            if snapshots and snapshots[-1][1] > last[0]:
                break  # the controller covered the last comparison
            if quiet > 15.0:
                break  # it did not: reported as not caught up
    return snapshots, end, last


def _snapshots(
    batch: dict[TopicPartition, list[ConsumerRecord]], key: bytes
) -> list[tuple[int, int]]:
    """The analysis snapshots of partition ``key`` in ``batch``, in order: (written at ms,
    comparisons offset covered)."""
    return [
        (r.timestamp, orjson.loads(r.value)["comparisons_offset"])
        for records in batch.values()
        for r in records
        if r.key == key and r.value
    ]


async def _last_record(
    consumer: AIOKafkaConsumer, tp: TopicPartition, start: int, end: int
) -> tuple[int, int]:
    """Offset and timestamp of the last committed record in [start, end) (the offsets after
    it may be transaction markers)."""
    consumer.seek(tp, max(start, end - 50))
    found = (start, 0)
    while True:
        batch = await consumer.getmany(tp, timeout_ms=1000)
        if not batch.get(tp):
            return found
        r = batch[tp][-1]
        found = (r.offset, r.timestamp)
        if r.offset >= end - 1:
            return found


async def _pace_report(
    consumer: AIOKafkaConsumer,
    tp: TopicPartition,
    start: int,
    last: tuple[int, int],
    snapshots: list[tuple[int, int]],
    cpu_s: dict[str, float],
) -> PaceReport:
    """Lag at each snapshot: comparisons written by then that it did not cover, and how old
    the oldest of them was."""

    async def timestamp_at(offset: int) -> int:
        consumer.seek(tp, offset)
        batch = await consumer.getmany(tp, timeout_ms=2000, max_records=1)
        return batch[tp][0].timestamp if batch.get(tp) else 0

    last_offset, last_ts = last
    first_ts = await timestamp_at(start)
    max_records, max_s = 0, 0.0
    caught_up: float | None = None
    for written_at, covered in snapshots:
        found = await consumer.offsets_for_times({tp: written_at})
        written_by = found[tp].offset if found.get(tp) is not None else last_offset + 1
        behind = max(0, written_by - max(covered, start))
        max_records = max(max_records, behind)
        if behind:
            max_s = max(max_s, (written_at - await timestamp_at(max(covered, start))) / 1000)
        if caught_up is None and covered > last_offset:
            caught_up = (written_at - last_ts) / 1000
    return PaceReport(
        comparisons=last_offset + 1 - start,
        seconds=max((last_ts - first_ts) / 1000, 1e-3),
        snapshots=len(snapshots),
        max_lag_records=max_records,
        max_lag_s=max_s,
        caught_up_s=caught_up,
        cpu_s=cpu_s,
    )
