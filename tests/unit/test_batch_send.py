"""Batched publishing puts each keyed record where Kafka's default partitioner would."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import DefaultPartitioner

from app.adapters.batch_send import keyed_partition
from app.controller.app import partition_for


@pytest.mark.parametrize("count", [1, 3, 6, 7])
def test_keyed_partition_matches_the_default_partitioner(count: int) -> None:
    default = DefaultPartitioner()
    partitions = list(range(count))
    for i in range(2000):
        key = f"card-{i:06d}".encode()
        assert keyed_partition(key, count) == default(key, partitions, partitions)


def test_the_controller_finds_a_deployments_partition_the_same_way() -> None:
    assert partition_for("fraud", 3) == keyed_partition(b"fraud", 3)
