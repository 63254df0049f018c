"""The C_parse and fan-out-2 ceilings of ``rollout bench``: what they write for each record,
and that a record which is not a request is copied through rather than crashing the bench
(something else may write to the topic a drain reads)."""

from __future__ import annotations

import orjson
import pytest

from app.bench.ceilings import parse_answers
from app.bench.setup import SINK
from app.core.requests import RawRecord


def record(value: bytes | None) -> RawRecord:
    return RawRecord("bench.requests.fraud", 0, 7, b"k", value)


def test_a_request_is_answered_fan_out_times() -> None:
    value = orjson.dumps({"request_id": "r-1", "deployment": "fraud", "features": {"x": 1}})
    out = parse_answers(2)([record(value)])
    assert len(out) == 2
    for o in out:
        assert (o.topic, o.key) == (SINK, b"k")
        assert orjson.loads(o.value)["request_id"] == "r-1"
        assert orjson.loads(o.value)["deployment"] == "fraud"


@pytest.mark.parametrize(
    "value",
    [
        b"not json",
        b'{"deployment": "fraud"}',  # no request id
        b"[1, 2, 3]",  # not an object
        b"",
        None,
    ],
)
def test_a_record_that_is_not_a_request_is_copied_through(value: bytes | None) -> None:
    out = parse_answers(1)([record(value), record(b'{"request_id": "r-2", "deployment": "fraud"}')])
    assert [o.value for o in out[:1]] == [value or b""]
    assert orjson.loads(out[1].value)["request_id"] == "r-2"  # the batch goes on
