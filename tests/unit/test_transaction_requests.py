"""The overlapped coordinator requests (``app.adapters.transaction_requests``): which requests
go together for each state of aiokafka's own ``TransactionManager``, that they do run at
once, and what fails when an aiokafka upgrade moves what the overlap relies on."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import ProducerFenced
from aiokafka.producer import sender as aiokafka_sender
from aiokafka.producer.transaction_manager import TransactionManager
from aiokafka.structs import OffsetAndMetadata

from app.adapters.kafka_clients import transactional_producer
from app.adapters.transaction_requests import (
    ADD_OFFSETS,
    ADD_PARTITIONS,
    COMMIT_OFFSETS,
    overlap_transaction_requests,
    pending_requests,
)
from app.settings import Settings

OUT = TopicPartition("predictions", 0)
IN = TopicPartition("requests", 3)
OFFSETS = {IN: OffsetAndMetadata(42, "")}


def _nothing(txn: TransactionManager) -> None:
    pass


def _partitions(txn: TransactionManager) -> None:
    txn.maybe_add_partition_to_txn(OUT)


def _offsets(txn: TransactionManager) -> None:
    txn.add_offsets_to_txn(dict(OFFSETS), "group")


def _both(txn: TransactionManager) -> None:
    _offsets(txn)
    _partitions(txn)


def _group_added_then_partitions(txn: TransactionManager) -> None:
    _offsets(txn)
    txn.consumer_group_added("group")
    _partitions(txn)


def _group_added(txn: TransactionManager) -> None:
    _offsets(txn)
    txn.consumer_group_added("group")


def _all_added(txn: TransactionManager) -> None:
    _partitions(txn)
    txn.partition_added(OUT)
    _group_added(txn)
    txn.offset_committed(IN, 42, "group")


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (_nothing, []),
        (_partitions, [ADD_PARTITIONS]),
        (_offsets, [ADD_OFFSETS]),
        (_both, [ADD_PARTITIONS, ADD_OFFSETS]),
        (_group_added_then_partitions, [ADD_PARTITIONS, COMMIT_OFFSETS]),
        (_group_added, [COMMIT_OFFSETS]),
        (_all_added, []),
    ],
)
async def test_what_can_be_sent_at_once(
    state: Callable[[TransactionManager], None], expected: list[str]
) -> None:
    txn = TransactionManager("t", 60_000)
    txn.set_pid_and_epoch(7, 0)
    txn.begin_transaction()
    state(txn)
    requests = pending_requests(txn)
    assert [name for name, _ in requests] == expected
    for name, args in requests:
        if name == ADD_PARTITIONS:
            assert args == ({OUT},)
        elif name == ADD_OFFSETS:
            assert args == ("group",)
        else:
            assert args == (OFFSETS, "group")


class _Recorder:
    """Stands in for the sender's request coroutines: records when each starts and ends."""

    def __init__(self, fail: str | None = None) -> None:
        self.events: list[str] = []
        self.fail = fail

    def coroutine(self, name: str) -> Callable[..., Any]:
        async def request(*args: Any) -> bool:
            self.events.append(f"start {name}")
            await asyncio.sleep(0.01)
            self.events.append(f"end {name}")
            if name == self.fail:
                raise ProducerFenced()
            return True

        return request


def _producer_with(recorder: _Recorder) -> AIOKafkaProducer:
    producer = transactional_producer(Settings(bootstrap_servers="127.0.0.1:1"), "t")
    sender = producer._sender
    for name in (ADD_PARTITIONS, ADD_OFFSETS, COMMIT_OFFSETS):
        setattr(sender, name, recorder.coroutine(name))
    txn = sender._txn_manager
    txn.set_pid_and_epoch(7, 0)
    txn.begin_transaction()
    return producer


async def test_the_transactional_producer_sends_pending_requests_together() -> None:
    recorder = _Recorder()
    producer = _producer_with(recorder)
    try:
        _both(producer._sender._txn_manager)
        task = producer._sender._maybe_do_transactional_request()
        assert task is not None
        await task
        # Both started before either ended: one round trip, not two in a row.
        assert recorder.events[:2] == [f"start {ADD_PARTITIONS}", f"start {ADD_OFFSETS}"]
        assert sorted(recorder.events[2:]) == [f"end {ADD_OFFSETS}", f"end {ADD_PARTITIONS}"]
    finally:
        producer._closed = True  # never started: nothing to close


async def test_one_pending_request_goes_aiokafkas_own_way() -> None:
    recorder = _Recorder()
    producer = _producer_with(recorder)
    try:
        _partitions(producer._sender._txn_manager)
        task = producer._sender._maybe_do_transactional_request()
        assert task is not None
        await task
        assert recorder.events == [f"start {ADD_PARTITIONS}", f"end {ADD_PARTITIONS}"]
        assert producer._sender._maybe_do_transactional_request() is not None  # still pending
    finally:
        producer._closed = True


async def test_a_fatal_error_reaches_the_sender_once_both_finished() -> None:
    recorder = _Recorder(fail=ADD_PARTITIONS)
    producer = _producer_with(recorder)
    try:
        _both(producer._sender._txn_manager)
        task = producer._sender._maybe_do_transactional_request()
        assert task is not None
        with pytest.raises(ProducerFenced):
            await task
        assert f"end {ADD_OFFSETS}" in recorder.events
    finally:
        producer._closed = True


async def test_aiokafka_still_has_what_the_overlap_relies_on() -> None:
    """Fails when an aiokafka upgrade moves the sender's request coroutines, their
    arguments, or where the sender routine asks for the next transactional request."""
    names = {
        ADD_PARTITIONS: ["self", "tps"],
        ADD_OFFSETS: ["self", "group_id"],
        COMMIT_OFFSETS: ["self", "offsets", "group_id"],
    }
    for name, params in names.items():
        method = getattr(aiokafka_sender.Sender, name)
        assert inspect.iscoroutinefunction(method)
        assert list(inspect.signature(method).parameters) == params
    routine = inspect.getsource(aiokafka_sender.Sender._sender_routine)
    assert "self._maybe_do_transactional_request()" in routine
    serial = inspect.getsource(aiokafka_sender.Sender._maybe_do_transactional_request)
    for call in ("partitions_to_add()", "consumer_group_to_add()", "offsets_to_commit()"):
        assert call in serial
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", transactional_id="t")
    try:
        assert isinstance(producer._sender, aiokafka_sender.Sender)
        assert producer._sender._txn_manager is producer._txn_manager
    finally:
        producer._closed = True


async def test_overlapping_is_per_producer() -> None:
    overlapped = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", transactional_id="a")
    plain = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", transactional_id="b")
    try:
        overlap_transaction_requests(overlapped)
        assert "_maybe_do_transactional_request" in vars(overlapped._sender)
        assert "_maybe_do_transactional_request" not in vars(plain._sender)
    finally:
        overlapped._closed = plain._closed = True
