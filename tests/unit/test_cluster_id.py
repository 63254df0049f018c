"""The KRaft cluster id handed to ``kafka-storage format``."""

import base64

from app.adapters.kafka_broker_files import cluster_id


def test_cluster_ids_never_start_with_a_dash_and_hold_16_bytes() -> None:
    ids = [cluster_id() for _ in range(2000)]  # ~1 in 64 raw ids starts with "-"
    assert not [i for i in ids if i.startswith("-")]
    assert all(len(base64.urlsafe_b64decode(i + "==")) == 16 for i in ids)
    assert len(set(ids)) == len(ids)
