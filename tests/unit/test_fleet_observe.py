"""What the fleet reads back: its own request ids by sequence number, and the offsets an
analysis snapshot covers (from its head, or the whole record)."""

from __future__ import annotations

import orjson
import pytest

from app.harness.fleet_observe import Observer, sequence
from app.settings import Settings


@pytest.mark.parametrize(
    ("request_id", "expected"),
    [
        ("fab12-0", 0),
        ("fab12-12345", 12345),
        ("fab1-7", None),  # another run
        ("fab12-x7", None),
        ("fab12-", None),
        ("req-1", None),
    ],
)
def test_sequence(request_id: str, expected: int | None) -> None:
    assert sequence(request_id, "fab12-") == expected


@pytest.mark.parametrize("pad", [0, 500])
def test_snapshot_offsets(pad: int) -> None:
    observer = Observer(Settings(), "fab12", {"fab12-000"})
    head = {"x": "y" * pad} if pad else {}
    body = {**head, "partition": 2, "comparisons_offset": 41, "feedback_offset": 7, "rollouts": {}}
    value = orjson.dumps(body)
    observer._snapshot(b"p2", value)
    assert observer.seen.covered == {2: (41, 7)}
    assert observer.seen.snapshot_max_bytes == len(value)
