"""Publications answered per partition in order, partitions side by side (``controller.lanes``)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from app.controller.lanes import PartitionLanes


@dataclass(frozen=True)
class Rec:
    partition: int
    offset: int
    key: bytes | None = None
    value: bytes | None = None


class Recorder:
    """A handle that takes ``slow`` seconds on the partitions listed, and the order of
    answers and acks."""

    def __init__(self, slow: dict[int, float] | None = None, fail: set[int] | None = None):
        self.slow = slow or {}
        self.fail = fail or set()
        self.answered: list[tuple[int, int]] = []
        self.acked: list[tuple[int, int]] = []
        self.started: list[tuple[int, int]] = []

    async def handle(self, key: bytes | None, value: bytes | None, p: int, offset: int) -> None:
        self.started.append((p, offset))
        await asyncio.sleep(self.slow.get(p, 0.0))
        if offset in self.fail:
            raise RuntimeError("boom")
        self.answered.append((p, offset))

    def ack(self, rec: Rec) -> object:
        return lambda: self.acked.append((rec.partition, rec.offset))


async def settle(lanes: PartitionLanes) -> None:
    for _ in range(200):
        await asyncio.sleep(0.005)
        if not any(lanes.busy().values()):
            break
    await asyncio.sleep(0.02)


def answered(r: Recorder, offsets: int) -> Recorder:
    """``r`` after a lane answered offsets 0 .. ``offsets`` - 1 of partition 0."""

    async def run() -> Recorder:
        lanes = PartitionLanes(r.handle)
        for offset in range(offsets):
            rec = Rec(0, offset)
            await lanes.put(rec, r.ack(rec))
        await settle(lanes)
        await lanes.stop()
        return r

    return asyncio.run(run())


def test_a_partition_answers_in_order_and_acks_each_after_its_answer() -> None:
    r = answered(Recorder(), 5)
    assert r.answered == [(0, o) for o in range(5)]
    assert r.acked == r.answered


def test_a_slow_partition_does_not_hold_the_others() -> None:
    async def run() -> Recorder:
        r = Recorder(slow={0: 0.5})
        lanes = PartitionLanes(r.handle)
        for rec in (Rec(0, 0), Rec(0, 1), Rec(1, 0), Rec(2, 0), Rec(1, 1)):
            await lanes.put(rec, r.ack(rec))
        await asyncio.sleep(0.1)  # partition 0's first answer still takes 0.4 s more
        assert sorted(r.answered) == [(1, 0), (1, 1), (2, 0)]
        assert (0, 0) not in r.acked and (0, 1) not in r.started
        await lanes.stop()
        return r

    r = asyncio.run(run())
    assert [a for a in r.answered if a[0] == 1] == [(1, 0), (1, 1)]


def test_a_released_partition_drops_what_it_queued_unanswered_and_unacked() -> None:
    async def run() -> Recorder:
        r = Recorder(slow={0: 0.3})
        lanes = PartitionLanes(r.handle)
        for offset in range(3):
            rec = Rec(0, offset)
            await lanes.put(rec, r.ack(rec))
        await asyncio.sleep(0.05)
        await lanes.release(0)  # the partition moved to another controller
        await asyncio.sleep(0.4)
        assert lanes.busy() == {}
        rec = Rec(0, 1)  # assigned back: read again from the committed offset
        await lanes.put(rec, r.ack(rec))
        await asyncio.sleep(0.5)
        await lanes.stop()
        return r

    r = asyncio.run(run())
    assert r.started[0] == (0, 0) and r.answered == [(0, 1)] and r.acked == [(0, 1)]


def test_an_answer_that_raises_is_logged_and_the_lane_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    r = answered(Recorder(fail={1}), 3)
    assert r.answered == [(0, 0), (0, 2)]
    assert r.acked == [(0, 0), (0, 1), (0, 2)]  # faust's commit is not held at a gap
    assert "offset 1 of partition 0 could not be answered" in caplog.text
