"""Where one micro-batch's time went in the worker's loop (``app.worker.loop``): a few clock
reads per batch, handed to whoever asked for them (``rollout bench``; nothing by default).

Stages, in seconds: ``fetch`` (taking the batch, waiting for its first record included),
``score`` (decode, models, encode of the outputs), ``wait`` (the scored batch waiting for the
previous transaction to commit), ``lock`` (waiting for a rebalance callback), ``encode``
(outputs appended to producer batches), ``offsets`` (``send_offsets_to_transaction``:
AddOffsetsToTxn and TxnOffsetCommit, behind AddPartitionsToTxn), ``commit`` (the produce
requests flushed and EndTxn), ``transaction`` (begin to EndTxn answered); ``round_trips``:
the producer's requests by API during the transaction (``app.adapters.round_trips``).
``fetched_at`` and ``committed_at`` are wall-clock seconds, ``inputs`` the input offsets
(partition → first, last), so that a reader can tell each request's batch and time what
happened before the batch was taken and after its transaction ended.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from app.adapters.round_trips import Calls

STAGES = ("fetch", "score", "wait", "lock", "encode", "offsets", "commit", "transaction")


@dataclass
class BatchTrace:
    records: int = 0
    topic: str = ""
    stages: dict[str, float] = field(default_factory=dict)
    round_trips: dict[str, Calls] = field(default_factory=dict)
    fetched_at: float = 0.0
    committed_at: float = 0.0
    inputs: dict[int, tuple[int, int]] = field(default_factory=dict)
    _clock: float = field(default_factory=time.perf_counter, repr=False)

    def lap(self, stage: str) -> float:
        """Add the time since the previous lap (or the trace's start) to ``stage``."""
        now = time.perf_counter()
        self.stages[stage] = self.stages.get(stage, 0.0) + now - self._clock
        self._clock = now
        return now

    def fetched(self, records: int) -> None:
        """The batch of ``records`` was taken (now, by the wall clock)."""
        self.lap("fetch")
        self.fetched_at = time.time()
        self.records = records

    def to_json(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "topic": self.topic,
            "stages_ms": {k: v * 1000 for k, v in self.stages.items()},
            "round_trips": {k: v.to_json() for k, v in self.round_trips.items()},
            "fetched_at": self.fetched_at,
            "committed_at": self.committed_at,
            "inputs": {str(p): list(span) for p, span in self.inputs.items()},
        }
