"""``rollout bench``: how fast one worker drains a backlog, measured on the local broker.

A first benchmark (the full suite of ceilings is still to come): it writes a backlog of
generated requests, starts one ``rollout worker`` process, and times the committed
predictions from the first to the last (read back with ``read_committed``). The worker's
consumer group is fresh, so it reads exactly this backlog.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass

from aiokafka import TopicPartition

from app.adapters.kafka_clients import (
    assign_at_end,
    group_consumer,
    partitions_of,
    plain_producer,
    reader,
)
from app.settings import Settings
from app.traffic import make_requests, send


@dataclass(frozen=True)
class DrainResult:
    requests: int
    predictions: int
    seconds: float
    worker_cpu_s: float

    @property
    def per_second(self) -> float:
        return self.predictions / self.seconds if self.seconds else 0.0


async def drain(settings: Settings, requests: int) -> DrainResult:
    run = f"bench-{uuid.uuid4().hex[:8]}"
    group = f"rollout-bench-{run}"
    producer = plain_producer(settings)
    await producer.start()
    consumer = reader(settings)
    await consumer.start()
    try:
        await assign_at_end(consumer, "inference.predictions")
        # A fresh group would read the whole topic: start it at the end, before the backlog.
        await _commit_group_at_end(settings, group)
        await send(producer, make_requests(requests, seed=3, run_id=run))
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
            "ROLLOUT_GROUP_ID": group,
        }
        worker = subprocess.Popen(
            [sys.executable, "-m", "app", "worker", "--worker-id", run],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        first = last = 0.0
        seen = 0
        deadline = time.monotonic() + 300
        try:
            while seen < requests and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=200)
                now = time.monotonic()
                for records in batch.values():
                    mine = sum(1 for r in records if run.encode() in r.value)
                    if mine and not first:
                        first = now
                    if mine:
                        last = now
                    seen += mine
            cpu = _cpu_seconds(worker.pid)
        finally:
            worker.terminate()
            worker.wait(timeout=30)
        return DrainResult(requests, seen, last - first, cpu)
    finally:
        await consumer.stop()
        await producer.stop()


async def _commit_group_at_end(settings: Settings, group: str) -> None:
    """Give ``group`` committed offsets at the current end of the requests topic."""
    consumer = group_consumer(settings, group)
    await consumer.start()
    try:
        partitions = await partitions_of(consumer, "inference.requests")
        ends = await consumer.end_offsets(partitions)
        consumer.assign(partitions)
        await consumer.commit(
            {TopicPartition(tp.topic, tp.partition): off for tp, off in ends.items()}
        )
    finally:
        await consumer.stop()


def _cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks
