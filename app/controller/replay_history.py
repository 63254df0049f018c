"""What the replay gate reads, kept between gates: each gated deployment's last requests and
its recent ground truth.

A gate needs the deployment's last N requests, but ``inference.requests`` is shared by every
deployment: read back for each gate, one deployment's 1,500 meant ~150,000 records unpacked
(a fleet of 100 deployments), and with a gate every few seconds that reading was nearly half
of the controller's CPU. ``ReplayHistory`` reads each topic forward once instead, from where
it stopped to the end as of the gate, and keeps for every deployment it has gated:

- its last N requests (N its largest ``replay_gate`` so far), as the gate would read them;
- its last ``LABELS_PER_REQUEST`` x N ground-truth records (raw bytes and timestamp) of the
  deployment's feedback partition.

A deployment's first gate reads back as before (``replay_gate.recent_requests`` and
``feedback_since``), up to where the forward reading stands, so the two never overlap or
leave a gap. A later gate whose labels reach back past what is kept (labels for its oldest
requests pushed out) reads them back the same way. Memory: about (600 + 3 x 200) bytes x N
per gated deployment (~2 MB at N = 1,500).

One gate at a time reads (a lock): the lanes answer publications side by side.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition

from app.adapters.kafka_clients import partitions_of, reader
from app.adapters.partitioning import partition_for
from app.controller import replay_gate
from app.core.events import Feedback
from app.core.requests import ParsedRequest, RawRecord, parse_request
from app.core.topics import Topic
from app.settings import Settings

LABELS_PER_REQUEST = 3  # ground-truth records kept per replayed request
# Gates far apart (more records written between them than this): what was kept is dropped
# and the next gate of each deployment reads back, as a first one does.
FORWARD_LIMIT = 500_000


@dataclass
class _Label:
    timestamp: int
    value: bytes


@dataclass
class _Labels:
    """A deployment's labels kept: every record of its feedback partition written since
    ``covered_from``, but those pushed out (the newest ``items.maxlen`` stay; the latest
    timestamp pushed out is ``dropped_upto``)."""

    items: deque[_Label]
    covered_from: int
    dropped_upto: int = -1

    def add(self, new: list[_Label]) -> None:
        for label in new:
            if len(self.items) == self.items.maxlen:
                self.dropped_upto = max(self.dropped_upto, self.items[0].timestamp)
            self.items.append(label)

    def cover(self, since_ms: int, wanted: int) -> bool:
        """Whether all labels since ``since_ms`` are here, with room for ``wanted``."""
        room = self.items.maxlen or 0
        return self.covered_from <= since_ms and self.dropped_upto < since_ms and room >= wanted


@dataclass
class _Tail:
    """One topic read forward: a consumer assigned to every partition, and where it stands."""

    topic: str
    consumer: AIOKafkaConsumer | None = None
    positions: dict[TopicPartition, int] = field(default_factory=dict)

    async def start(self, settings: Settings) -> None:
        if self.consumer is not None:
            return
        consumer = reader(
            settings,
            max_partition_fetch_bytes=replay_gate.FETCH_BYTES,
            fetch_max_bytes=replay_gate.FETCH_BYTES,
        )
        await consumer.start()
        partitions = await partitions_of(consumer, self.topic)
        consumer.assign(partitions)
        self.positions = dict(await consumer.end_offsets(partitions))  # nothing before now
        self.consumer = consumer

    async def read_to_end(self) -> list[RawRecord] | None:
        """The records from where it stands to the end as of now; None (and it stands at the
        end) when that is more than ``FORWARD_LIMIT``: reading back is then cheaper."""
        assert self.consumer is not None
        consumer = self.consumer
        partitions = list(self.positions)
        ends = await consumer.end_offsets(partitions)
        if sum(ends[tp] - self.positions[tp] for tp in partitions) > FORWARD_LIMIT:
            self.positions.update(ends)
            return None
        bounds = {tp: end for tp, end in ends.items() if end > self.positions[tp]}
        for tp in partitions:
            if tp in bounds:
                consumer.resume(tp)
                consumer.seek(tp, self.positions[tp])
            else:
                consumer.pause(tp)
        got = await replay_gate.read_ranges(consumer, bounds, dict(self.positions))
        self.positions.update(ends)
        return [
            RawRecord(
                r.topic,
                r.partition,
                r.offset,
                r.key,
                r.value,
                r.timestamp,
                tuple(r.headers or ()),
            )
            for r in got
            if r.value is not None
        ]

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()
            self.consumer = None


class ReplayHistory:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._requests = _Tail(settings.topics.name(Topic.REQUESTS))
        self._feedback = _Tail(settings.topics.name(Topic.FEEDBACK))
        self._kept: dict[str, deque[RawRecord]] = {}
        self._labels: dict[str, _Labels] = {}
        self._lock = asyncio.Lock()

    async def requests(self, deployment: str, n: int) -> list[RawRecord]:
        """``deployment``'s last ``n`` readable requests, oldest first (as
        ``replay_gate.recent_requests``)."""
        async with self._lock:
            await self._requests.start(self._settings)
            records = await self._requests.read_to_end()
            if records is None:
                self._kept.clear()
            else:
                self._take_requests(records)
            kept = self._kept.get(deployment)
            if kept is None or (kept.maxlen or 0) < n:
                found = await replay_gate.recent_requests(
                    self._settings, deployment, n, ends=dict(self._requests.positions)
                )
                kept = self._kept[deployment] = deque(found, maxlen=n)
            records = sorted(kept, key=lambda r: (r.timestamp, r.partition, r.offset))
            return records[-n:] if n else []

    def _take_requests(self, records: list[RawRecord]) -> None:
        if not self._kept:
            return
        names = frozenset(self._kept)
        needles = [name.encode("utf-8") for name in names]
        limit = self._settings.max_request_bytes
        # Newest last, as a gate reading back sorts them: what is kept is the last by time.
        for raw in sorted(records, key=lambda r: (r.timestamp, r.partition, r.offset)):
            value = raw.value or b""
            if not any(n in value or any(n in v for _, v in raw.headers) for n in needles):
                continue
            parsed = parse_request(raw, names, limit)
            if isinstance(parsed, ParsedRequest):
                self._kept[parsed.deployment].append(raw)

    async def feedback(self, deployment: str, since_ms: int, requests: int) -> list[Feedback]:
        """``deployment``'s ground truth written at or after ``since_ms`` up to now (as
        ``replay_gate.feedback_since``); ``requests``: how many requests the gate replays
        (what is kept scales with it)."""
        async with self._lock:
            await self._feedback.start(self._settings)
            records = await self._feedback.read_to_end()
            if records is None:
                self._labels.clear()
            else:
                self._take_labels(records)
            labels = self._labels.get(deployment)
            wanted = max(requests, 1) * LABELS_PER_REQUEST
            if labels is None or not labels.cover(since_ms, wanted):
                topic = self._feedback.topic
                tp = TopicPartition(topic, partition_for(deployment, len(self._feedback.positions)))
                back = await replay_gate.feedback_records(
                    self._settings, deployment, since_ms, until=self._feedback.positions[tp]
                )
                kept = [_Label(r.timestamp, r.value) for r in back if r.value is not None]
                # Room for what it read back and as much again: a gate's window of labels.
                room = max(wanted, 2 * len(kept))
                labels = self._labels[deployment] = _Labels(deque(kept, maxlen=room), since_ms)
            values = [label.value for label in labels.items if label.timestamp >= since_ms]
        return replay_gate.decoded_feedback(deployment, values)

    def _take_labels(self, records: list[RawRecord]) -> None:
        count = len(self._feedback.positions)
        for name, labels in self._labels.items():
            needle = name.encode("utf-8")
            home = partition_for(name, count)  # where its feedback is, or is re-keyed to
            labels.add(
                [
                    _Label(r.timestamp, r.value)
                    for r in records
                    if r.partition == home and r.value is not None and needle in r.value
                ]
            )

    async def stop(self) -> None:
        await self._requests.stop()
        await self._feedback.stop()
