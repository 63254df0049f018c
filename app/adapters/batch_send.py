"""Publishing many records at once: grouped by partition into producer batches.

One ``send`` per record costs a coroutine, a partitioner call and an accumulator lookup each;
a micro-batch of hundreds of outputs spends more time there than in the model. Here records
are partitioned as Kafka's default partitioner would (murmur2 of the key; keyless records
round-robin), appended to one ``BatchBuilder`` per partition, and handed over with
``send_batch`` (which also adds the partition to the open transaction).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer

from app.adapters.partitioning import keyed_partition

Headers = Sequence[tuple[str, bytes]]
Record = tuple[str, bytes | None, bytes, Headers]  # topic, key, value, headers


class BatchSender:
    def __init__(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer
        self._partitions: dict[str, int] = {}
        self._round_robin = itertools.count()

    async def _count(self, topic: str) -> int:
        count = self._partitions.get(topic)
        if count is None:
            count = len(await self._producer.partitions_for(topic))
            self._partitions[topic] = count
        return count

    async def send(self, records: Sequence[Record]) -> list[asyncio.Future[object]]:
        """Hand ``records`` to the producer; the futures resolve on delivery."""
        counts: dict[str, int] = {}  # partitions per topic (one await per topic, not record)
        grouped: dict[tuple[str, int], list[Record]] = defaultdict(list)
        for record in records:
            topic, key = record[0], record[1]
            count = counts.get(topic)
            if count is None:
                count = counts[topic] = await self._count(topic)
            partition = (
                keyed_partition(key, count) if key is not None else next(self._round_robin) % count
            )
            grouped[(topic, partition)].append(record)
        futures: list[asyncio.Future[object]] = []
        for (topic, partition), group in grouped.items():
            batch = self._producer.create_batch()
            for _, key, value, headers in group:
                # aiokafka wants a list of headers; most records have none (it never keeps it)
                listed = list(headers) if headers else _NO_HEADERS
                if batch.append(key=key, value=value, timestamp=None, headers=listed) is None:
                    futures.append(
                        await self._producer.send_batch(batch, topic, partition=partition)
                    )
                    batch = self._producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None, headers=listed)
            futures.append(await self._producer.send_batch(batch, topic, partition=partition))
        return futures


_NO_HEADERS: list[tuple[str, bytes]] = []
