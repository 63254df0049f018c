"""The round-trip recorder wraps aiokafka internals (``app.adapters.round_trips``): these
tests fail when an aiokafka upgrade moves what it relies on, and check what it records."""

from __future__ import annotations

import inspect
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.client import AIOKafkaClient
from aiokafka.producer import sender
from aiokafka.protocol import coordination, produce, transaction
from aiokafka.protocol.coordination import FindCoordinatorRequest

from app.adapters.round_trips import API_NAMES, PER_PARTITION, TOP_LEVEL, RoundTrips


def test_the_client_send_signature_is_the_one_wrapped() -> None:
    params = inspect.signature(AIOKafkaClient.send).parameters
    assert list(params) == ["self", "node_id", "request", "group"]
    assert params["group"].kind is inspect.Parameter.KEYWORD_ONLY


async def test_the_sender_and_its_handlers_send_through_the_producers_client() -> None:
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", transactional_id="t")
    try:
        assert isinstance(producer.client, AIOKafkaClient)
        assert producer._sender.client is producer.client
    finally:
        producer._closed = True  # never started: nothing to close
    # The transactional handlers and the produce handler reach ``send`` through the sender's
    # client (an instance attribute set by attach() shadows the method for all of them);
    # coordinator look-ups go through the client's own ``self.send``.
    assert "self._sender.client.send(" in inspect.getsource(sender.BaseHandler.do)
    assert "self._client = sender.client" in inspect.getsource(
        sender.SendProduceReqHandler.__init__
    )
    assert "self._client.send(" in inspect.getsource(sender.SendProduceReqHandler.do)
    assert "self.send(" in inspect.getsource(AIOKafkaClient.coordinator_lookup)


@pytest.mark.parametrize(
    ("request_class", "api"),
    [
        (produce.ProduceRequest, 0),
        (FindCoordinatorRequest, 10),
        (transaction.InitProducerIdRequest, 22),
        (transaction.AddPartitionsToTxnRequest, 24),
        (transaction.AddOffsetsToTxnRequest, 25),
        (transaction.EndTxnRequest, 26),
        (transaction.TxnOffsetCommitRequest, 28),
    ],
)
def test_requests_carry_the_api_keys_named(request_class: Any, api: int) -> None:
    assert api == request_class.API_KEY
    assert api in API_NAMES


def _response_classes(module: Any, prefix: str) -> list[Any]:
    return [v for k, v in vars(module).items() if k.startswith(prefix) and "_v" in k]


@pytest.mark.parametrize(
    ("module", "prefix", "api"),
    [
        (produce, "ProduceResponse", 0),
        (transaction, "AddPartitionsToTxnResponse", 24),
        (transaction, "TxnOffsetCommitResponse", 28),
    ],
)
def test_per_partition_error_codes_sit_second_in_each_partition(
    module: Any, prefix: str, api: int
) -> None:
    classes = _response_classes(module, prefix)
    assert classes
    for cls in classes:
        schema = cls.SCHEMA
        nested = schema.fields[schema.names.index(PER_PARTITION[api])]
        partitions = nested.array_of.fields[1].array_of  # (topic, [partitions...])
        assert partitions.names[1] == "error_code", cls


@pytest.mark.parametrize(
    ("classes", "api"),
    [
        (_response_classes(transaction, "AddOffsetsToTxnResponse"), 25),
        (_response_classes(transaction, "EndTxnResponse"), 26),
        (_response_classes(transaction, "InitProducerIdResponse"), 22),
        (_response_classes(coordination, "FindCoordinatorResponse"), 10),
    ],
)
def test_top_level_error_codes(classes: list[Any], api: int) -> None:
    assert api in TOP_LEVEL
    assert classes
    for cls in classes:
        assert "error_code" in cls.SCHEMA.names, cls


async def test_attach_times_each_request_and_counts_retriable_answers() -> None:
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", transactional_id="t")
    producer._closed = True
    answers = {
        # CONCURRENT_TRANSACTIONS for two partitions of one request: one answer to retry.
        24: SimpleNamespace(errors=[("t", [(0, 51), (1, 51)]), ("u", [(0, 51)])]),
        0: SimpleNamespace(topics=[("t", [(0, 19, -1, -1, -1)])]),  # NOT_ENOUGH_REPLICAS
        26: SimpleNamespace(error_code=0),
    }

    async def fake_send(node_id: int, request: Any, **kwargs: Any) -> Any:
        assert kwargs == {"group": "coordination"}
        return answers[request.API_KEY]

    producer.client.send = fake_send  # type: ignore[method-assign]
    trips = RoundTrips()
    trips.attach(producer)
    for api in (24, 24, 0, 26):
        await producer.client.send(1, SimpleNamespace(API_KEY=api), group="coordination")
    calls = trips.take()
    assert {k: v.count for k, v in calls.items()} == {
        "AddPartitionsToTxn": 2,
        "Produce": 1,
        "EndTxn": 1,
    }
    assert calls["AddPartitionsToTxn"].errors == {"CONCURRENT_TRANSACTIONS": 2}
    assert calls["Produce"].errors == {"NOT_ENOUGH_REPLICAS": 1}
    assert not calls["EndTxn"].errors
    assert trips.take() == {}  # taken: starts afresh
