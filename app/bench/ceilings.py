"""The ceilings' work in ``rollout bench``'s drains: what a ceiling publishes for a batch in
place of the worker's scoring (through the same loop, batching and transaction), and, in
``python -m app.bench.batch_cpu``, its CPU per request without Kafka.

- ``passthrough`` (C_io): every record copied to the sink as it is;
- ``parse_answers(n)`` (C_parse with 1, fan-out-2 with 2): each request decoded and a small
  JSON answer encoded ``n`` times.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import orjson

from app.bench.setup import SINK
from app.core.batch_result import Outgoing
from app.core.requests import RawRecord

# A ceiling: what it publishes for a batch, in place of scoring.
Transform = Callable[[Sequence[RawRecord]], list[Outgoing]]


def passthrough(batch: Sequence[RawRecord]) -> list[Outgoing]:
    return [Outgoing(SINK, r.key, r.value or b"") for r in batch]


def parse_answers(fan_out: int) -> Transform:
    """Decode each request and encode a small answer (``fan_out`` times); a record that is not
    a request is copied through as it is (as C_io would), never a crash of the bench."""

    def transform(batch: Sequence[RawRecord]) -> list[Outgoing]:
        out: list[Outgoing] = []
        for r in batch:
            try:
                body = orjson.loads(r.value or b"{}")
                value = orjson.dumps(
                    {
                        "request_id": body["request_id"],
                        "deployment": body["deployment"],
                        "output": {"label": "legit", "scores": [1.0, 0.0]},
                    }
                )
            except (orjson.JSONDecodeError, KeyError, TypeError):
                value = r.value or b""
            out.extend(Outgoing(SINK, r.key, value) for _ in range(fan_out))
        return out

    return transform
