"""What a ``rollout fleet`` run reads back while it runs: every committed prediction and dead
letter of its requests (``read_committed``, by request sequence number), every state and
decision of its deployments, the controller's consumer lag, and the processes' CPU and
memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from app.adapters.kafka_clients import partitions_of, reader
from app.adapters.process_stats import cpu_seconds
from app.core.events import DecisionEvent, DeploymentState, decode
from app.core.topics import Topic
from app.harness.processes import Services
from app.settings import Settings


def sequence(request_id: str, prefix: str) -> int | None:
    """The sequence number of one of this run's request ids (``<prefix><n>``), else None."""
    if not request_id.startswith(prefix):
        return None
    tail = request_id[len(prefix) :]
    return int(tail) if tail.isdigit() else None


@dataclass
class Observed:
    predicted: list[int] = field(default_factory=list)  # request sequence numbers
    dead_lettered: list[int] = field(default_factory=list)
    served_by: Counter[tuple[str, str]] = field(default_factory=Counter)  # (deployment, version)
    states: list[DeploymentState] = field(default_factory=list)
    decisions: list[DecisionEvent] = field(default_factory=list)
    latest: dict[str, DeploymentState] = field(default_factory=dict)
    # The controller's analysis snapshots: partition -> (comparisons, feedback) offsets covered.
    covered: dict[int, tuple[int, int]] = field(default_factory=dict)
    snapshot_max_bytes: int = 0


class Observer:
    """Reads the run's outputs from where the topics end at :meth:`start`."""

    def __init__(self, settings: Settings, run: str, deployments: set[str]) -> None:
        self._settings = settings
        self._prefix = f"{run}-"
        self._deployments = deployments
        topics = settings.topics
        self._handlers: dict[str, Callable[[bytes | None, bytes], None]] = {
            topics.name(Topic.PREDICTIONS): self._prediction,
            topics.name(Topic.DLQ): self._dead_letter,
            topics.name(Topic.STATE): self._state,
            topics.name(Topic.EVENTS): self._decision,
            topics.name(Topic.ANALYSIS): self._snapshot,
        }
        self.seen = Observed()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        consumer = reader(self._settings, client_id="rollout-fleet")
        await consumer.start()
        partitions: list[TopicPartition] = []
        for name in self._handlers:
            partitions += await partitions_of(consumer, name)
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for tp in partitions:
            await consumer.position(tp)
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(), name="fleet-observer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            batch = await self._consumer.getmany(timeout_ms=200)
            for tp, records in batch.items():
                handle = self._handlers[tp.topic]
                for record in records:
                    if record.value is not None:
                        handle(record.key, record.value)

    def _ours(self, key: bytes | None) -> bool:
        return key is not None and key.decode(errors="replace") in self._deployments

    def _dead_letter(self, key: bytes | None, value: bytes) -> None:
        letter = orjson.loads(value)
        seq = sequence(letter.get("request_id") or "", self._prefix)
        if seq is not None:
            self.seen.dead_lettered.append(seq)

    def _state(self, key: bytes | None, value: bytes) -> None:
        if self._ours(key):
            state = decode(DeploymentState, value)
            self.seen.states.append(state)
            known = self.seen.latest.get(state.deployment)
            if known is None or known.epoch < state.epoch:
                self.seen.latest[state.deployment] = state

    def _decision(self, key: bytes | None, value: bytes) -> None:
        if self._ours(key):
            self.seen.decisions.append(decode(DecisionEvent, value))

    def _snapshot(self, key: bytes | None, value: bytes) -> None:
        """The offsets a partition's snapshot covers, from its header record (key ``p<N>``;
        the evidence and pending chunks are records of their own, ``p<N>/...``): read from
        its head, the whole record only if they are not there. Every record counts for the
        largest size."""
        self.seen.snapshot_max_bytes = max(self.seen.snapshot_max_bytes, len(value))
        if key is None or b"/" in key:
            return
        head = value[:300]
        found = [_OFFSET[k].search(head) for k in ("partition", "comparisons", "feedback")]
        if all(found):
            n, c, f = (int(m.group(1)) for m in found if m is not None)
        else:
            data = orjson.loads(value)
            n, c, f = data["partition"], data["comparisons_offset"], data["feedback_offset"]
        self.seen.covered[n] = (c, f)

    def _prediction(self, key: bytes | None, value: bytes) -> None:
        if self._prefix.encode() not in value:
            return
        p = orjson.loads(value)
        seq = sequence(p["request_id"], self._prefix)
        if seq is not None:
            self.seen.predicted.append(seq)
            self.seen.served_by[(p["deployment"], p["model"]["version"])] += 1


_OFFSET = {
    "partition": re.compile(rb'"partition":\s*(\d+)'),
    "comparisons": re.compile(rb'"comparisons_offset":\s*(\d+)'),
    "feedback": re.compile(rb'"feedback_offset":\s*(\d+)'),
}


def rss_bytes(pid: int) -> int | None:
    """Resident memory of ``pid`` (``VmRSS``), or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return None


@dataclass
class ProcessMeter:
    """CPU seconds since the start and the largest resident memory seen, per process."""

    pids: dict[str, int]
    cpu_start: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    rss_max: dict[str, int] = field(default_factory=dict)
    rss_last: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, services: Services) -> ProcessMeter:
        meter = cls({name: proc.pid for name, proc in services.procs.items()})
        meter.cpu_start = {n: cpu_seconds(pid) or 0.0 for n, pid in meter.pids.items()}
        return meter

    def sample(self) -> None:
        for name, pid in self.pids.items():
            cpu = cpu_seconds(pid)
            if cpu is not None:
                self.cpu[name] = cpu - self.cpu_start.get(name, 0.0)
            rss = rss_bytes(pid)
            if rss is not None:
                self.rss_last[name] = rss
                self.rss_max[name] = max(rss, self.rss_max.get(name, 0))


async def controller_lag(settings: Settings, covered: dict[int, tuple[int, int]]) -> int | None:
    """Records of ``inference.comparisons`` and ``inference.feedback`` written but not yet
    covered by the controller's latest analysis snapshot of their partition (snapshots come
    at most every 2 s while evidence arrives, so this includes up to 2 s of records). None
    before the first snapshot."""
    if not covered:
        return None
    consumer = reader(settings)
    await consumer.start()
    try:
        comparisons = settings.topics.name(Topic.COMPARISONS)
        feedback = settings.topics.name(Topic.FEEDBACK)
        tps = [TopicPartition(t, n) for n in covered for t in (comparisons, feedback)]
        ends = await consumer.end_offsets(tps)
    except Exception:  # the figure is informative; the run goes on without it
        return None
    finally:
        await consumer.stop()
    behind = 0
    for n, (c, f) in covered.items():
        behind += max(0, int(ends[TopicPartition(comparisons, n)]) - c)
        behind += max(0, int(ends[TopicPartition(feedback, n)]) - f)
    return behind
