"""Where Kafka's default partitioner puts a key: the one place that knows it (the worker's
batched sends, the controller's ownership of deployments, the bench, chaos and tests)."""

from __future__ import annotations

import functools

from aiokafka.partitioner import murmur2


@functools.lru_cache(maxsize=1 << 16)
def keyed_partition(key: bytes, count: int) -> int:
    """Where Kafka's default partitioner (Java's and aiokafka's) puts ``key``. aiokafka's
    murmur2 is pure Python (8 % of a worker's CPU); keys are entities, which repeat: cached."""
    return int(murmur2(key) & 0x7FFFFFFF) % count


def partition_for(deployment: str, partitions: int) -> int:
    """Where Kafka's default partitioner puts records keyed by ``deployment`` (the
    control-plane topics are keyed by deployment)."""
    return keyed_partition(deployment.encode("utf-8"), partitions)
