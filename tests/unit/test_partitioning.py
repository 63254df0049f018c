"""Kafka's default partitioner, reproduced once: batched publishing and the controller
put each keyed record where it would."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import DefaultPartitioner

from app.adapters.partitioning import keyed_partition, partition_for


@pytest.mark.parametrize("count", [1, 3, 6, 7])
def test_keyed_partition_matches_the_default_partitioner(count: int) -> None:
    default = DefaultPartitioner()
    partitions = list(range(count))
    for i in range(2000):
        key = f"card-{i:06d}".encode()
        assert keyed_partition(key, count) == default(key, partitions, partitions)


def test_the_controller_finds_a_deployments_partition_the_same_way() -> None:
    assert partition_for("fraud", 3) == keyed_partition(b"fraud", 3)
