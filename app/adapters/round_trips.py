"""Every request a producer's client sends, timed and named by its Kafka API: where a
transaction's time goes (``rollout bench``'s per-batch breakdown).

aiokafka has no hook for this; :meth:`RoundTrips.attach` wraps one producer's
``AIOKafkaClient.send`` (an instance attribute shadows the method, so no other client is
touched): the sender's transactional requests (AddPartitionsToTxn, AddOffsetsToTxn,
TxnOffsetCommit, EndTxn), its produce requests and its coordinator look-ups all go through
it. Retriable answers (CONCURRENT_TRANSACTIONS, NOT_ENOUGH_REPLICAS, NOT_COORDINATOR…) are
read off the responses of the APIs whose error codes sit where ``_error_codes`` looks, and
counted once per response (each is one request to retry, however many partitions it names).
``tests/unit/test_round_trips.py`` fails when an aiokafka upgrade moves any of this.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer

# Kafka API keys (the protocol's, not aiokafka's) of the requests a transactional producer sends.
API_NAMES = {
    0: "Produce",
    3: "Metadata",
    10: "FindCoordinator",
    22: "InitProducerId",
    24: "AddPartitionsToTxn",
    25: "AddOffsetsToTxn",
    26: "EndTxn",
    28: "TxnOffsetCommit",
}
# Where each API's response keeps its error codes: one top-level ``error_code``, or a list of
# (topic, [(partition, error_code, ...)]) under the named field.
TOP_LEVEL = frozenset({10, 22, 25, 26})
PER_PARTITION = {0: "topics", 24: "errors", 28: "errors"}
ERROR_NAMES = {
    14: "COORDINATOR_LOAD_IN_PROGRESS",
    15: "COORDINATOR_NOT_AVAILABLE",
    16: "NOT_COORDINATOR",
    19: "NOT_ENOUGH_REPLICAS",
    51: "CONCURRENT_TRANSACTIONS",
}


@dataclass
class Calls:
    """Requests of one API: how many, their summed round-trip time, the errors answered."""

    count: int = 0
    seconds: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "ms": self.seconds * 1000, "errors": dict(self.errors)}


def _error_codes(api: int, response: Any) -> Iterable[int]:
    if api in TOP_LEVEL:
        return (response.error_code,)
    nested = PER_PARTITION.get(api)
    if nested is None:
        return ()
    return (p[1] for _, partitions in getattr(response, nested) for p in partitions)


class RoundTrips:
    """The requests of the producers attached, by API, since the last :meth:`take`."""

    def __init__(self) -> None:
        self._calls: dict[str, Calls] = {}

    def attach(self, producer: AIOKafkaProducer) -> None:
        client = producer.client
        send = client.send  # the bound method: whatever aiokafka's ``send`` does, unchanged

        async def timed(node_id: int, request: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            api = getattr(request, "API_KEY", -1)
            response = None
            try:
                response = await send(node_id, request, **kwargs)
                return response
            finally:
                self._record(api, time.perf_counter() - started, response)

        client.send = timed

    def _record(self, api: int, seconds: float, response: Any) -> None:
        calls = self._calls.setdefault(API_NAMES.get(api, f"api-{api}"), Calls())
        calls.count += 1
        calls.seconds += seconds
        if response is None:
            calls.errors["no response"] += 1
            return
        # Once per answer: a request refused for 5 partitions at once is one retry, not 5.
        for code in set(_error_codes(api, response)):
            if code:
                calls.errors[ERROR_NAMES.get(code, f"error {code}")] += 1

    def take(self) -> dict[str, Calls]:
        """What was recorded since the previous call (and start afresh)."""
        calls, self._calls = self._calls, {}
        return calls
