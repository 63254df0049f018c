"""Publications answered one partition at a time, the partitions side by side.

A publication's answer takes seconds: its artifact is read back from Kafka, verified, loaded
and smoke-run, and an automatic deploy's replay gate reads and scores the deployment's last N
requests. Answered one after another across every partition, a fleet's publications (about
one a second for 1,000 versions a day in 15 minutes) queued behind each other and rollouts
started minutes late. Each partition of ``models.published`` now has its own lane: its
publications are answered in order (a deployment's versions are on one partition, so their
order is kept), while the other partitions' go on.

Offsets stay exact: a lane commits each publication's offset inside the transaction of its
answer, and faust's own commit is held back to what the lanes have answered (the stream is
read with manual acks, and an event is acked only once its answer committed). A partition
taken away is dropped from its lane unanswered and unacked: its new owner reads it again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger(__name__)

QUEUED_PER_PARTITION = 256  # then the stream waits (small records: the artifacts are elsewhere)


class Record(Protocol):
    """What a lane needs of a faust event."""

    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...


Handle = Callable[[bytes | None, bytes | None, int, int], Awaitable[object]]


@dataclass
class _Lane:
    queue: asyncio.Queue[tuple[Record, Callable[[], object]]]
    task: asyncio.Task[None]


@dataclass
class PartitionLanes:
    """``put`` hands a record to its partition's lane; ``handle`` answers it there, then
    ``ack`` is called for it. ``handle`` answers a bad publication with its reason; should it
    raise all the same, the error is logged and the lane goes on (as the agent did before:
    the next answer's transaction commits past it)."""

    handle: Handle
    _lanes: dict[int, _Lane] = field(default_factory=dict)

    async def put(self, record: Record, ack: Callable[[], object]) -> None:
        lane = self._lanes.get(record.partition)
        if lane is None:
            queue: asyncio.Queue[tuple[Record, Callable[[], object]]] = asyncio.Queue(
                QUEUED_PER_PARTITION
            )
            task = asyncio.get_running_loop().create_task(self._run(record.partition, queue))
            lane = self._lanes[record.partition] = _Lane(queue, task)
        await lane.queue.put((record, ack))

    async def _run(
        self, partition: int, queue: asyncio.Queue[tuple[Record, Callable[[], object]]]
    ) -> None:
        while True:
            record, ack = await queue.get()
            try:
                await self.handle(record.key, record.value, record.partition, record.offset)
            except asyncio.CancelledError:
                raise
            except Exception:  # the handler answers what it can; one failure must not stop a lane
                log.exception(
                    "publication at offset %d of partition %d could not be answered",
                    record.offset,
                    partition,
                )
            ack()

    def busy(self) -> dict[int, int]:
        """Records waiting per partition (not counting the one being answered)."""
        return {p: lane.queue.qsize() for p, lane in self._lanes.items()}

    async def release(self, partition: int) -> None:
        """Stop answering ``partition``: what is queued is dropped unacked, an answer in
        progress is cancelled before its transaction (or its transaction is fenced by the
        new owner)."""
        lane = self._lanes.pop(partition, None)
        if lane is None:
            return
        lane.task.cancel()
        await asyncio.gather(lane.task, return_exceptions=True)

    async def stop(self) -> None:
        for partition in list(self._lanes):
            await self.release(partition)
