"""CPU per record of one micro-batch in the worker, without Kafka: ``score`` (the worker's
scorer, ``app.core.scoring.table_scorer``, over a fixed table: parse, route, the model
calls, the predictions and comparisons built and encoded) and ``send`` (what the loop's
``BatchSender`` does with them before the network: partition each record, append it to a
record batch of aiokafka's, build the batch). Production only and shadow 100 %, on fraud's
generated requests, as the drain lines of ``rollout bench`` serve them; and the same for the
ceilings they are held to there, C_parse and fan-out-2 (``app.bench.ceilings``: decode each
request, encode a small answer once or twice), so that the work per request that scoring
adds over a ceiling is measured apart from the loop and the broker both share.

``python -m app.bench.batch_cpu [--batch 500] [--repeats 200] [--profile MODE]`` prints the
median CPU µs per request of each phase (``time.process_time``: the model runs on one thread
of this process), and with ``--profile`` the top of a cProfile of that mode's loop. A
measurement, never a test: nothing asserts these figures.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka.producer.message_accumulator import BatchBuilder

from app.adapters.batch_send import BatchSender, Record
from app.adapters.model_store import ModelStore
from app.bench.ceilings import parse_answers
from app.bench.report import C_PARSE, FAN_OUT
from app.bench.setup import fixed_table, fraud_requests
from app.core.batch_result import DEFAULT_TOPICS, BatchResult
from app.core.events import Mode, encode
from app.core.requests import RawRecord
from app.core.scoring import table_scorer

PARTITIONS = 6  # as topics.yaml gives the data-plane topics


@dataclass(frozen=True)
class BatchCpu:
    """Median CPU µs per request of a line's batch, by phase, and bytes written per request."""

    line: str
    batch: int
    repeats: int
    score_us: float
    send_us: float
    bytes_per_request: float
    faults_per_batch: float  # minor page faults: a heap that glibc trims after each batch

    @property
    def total_us(self) -> float:
        return self.score_us + self.send_us


class _Producer:
    """What ``BatchSender`` asks of aiokafka's producer, minus the network: real record
    batches, built when handed over (aiokafka builds them in its sender task)."""

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(PARTITIONS))

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(256 * 1024, 0, is_transactional=1)  # as the worker's producer

    async def send_batch(self, batch: BatchBuilder, topic: str, *, partition: int) -> Any:
        batch._builder.build()  # the bytes aiokafka would put on the wire
        return None


def batch_records(n: int) -> list[RawRecord]:
    """``n`` fraud requests as the worker's consumer hands them over."""
    return [
        RawRecord(DEFAULT_TOPICS.requests, i % PARTITIONS, i, s.key, encode(s.request))
        for i, s in enumerate(fraud_requests(n, "batch-cpu"))
    ]


Scorer = Callable[[Sequence[RawRecord], int], BatchResult]


def _ceiling(fan_out: int) -> Scorer:
    """C_parse (1) or fan-out-2 (2): its answers are the batch's outputs, as in the drains."""
    transform = parse_answers(fan_out)
    return lambda records, lag: BatchResult(outgoing=transform(records))


def _scorer(store: ModelStore, mode: Mode) -> Scorer:
    table = fixed_table(store, mode)
    return table_scorer(
        lambda: table,
        worker_id="batch-cpu",
        max_request_bytes=65536,
        shed_lag=1 << 62,
        topics=DEFAULT_TOPICS,
    )


def _cpu_us() -> float:
    return time.process_time_ns() / 1000.0


def measure(line: str, score: Scorer, batch: int = 500, repeats: int = 200) -> BatchCpu:
    """Median CPU per request of scoring (or a ceiling's work) and sending one batch of
    ``batch`` requests."""
    records = batch_records(batch)
    sender = BatchSender(_Producer())
    loop = asyncio.new_event_loop()
    try:
        for _ in range(5):  # warm: caches, the model's first calls
            loop.run_until_complete(sender.send(_wire(score(records, 0))))
        scores, sends = [], []
        written = 0
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(repeats):
            began = _cpu_us()
            result = score(records, 0)
            scored = _cpu_us()
            loop.run_until_complete(sender.send(_wire(result)))
            sent = _cpu_us()
            scores.append((scored - began) / batch)
            sends.append((sent - scored) / batch)
            written = sum(len(o.value) for o in result.outgoing)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    finally:
        loop.close()
    return BatchCpu(
        line,
        batch,
        repeats,
        statistics.median(scores),
        statistics.median(sends),
        written / batch,
        faults / repeats,
    )


def _wire(result: BatchResult) -> list[Record]:
    """What the worker's loop hands its ``BatchSender`` (``app.worker.loop``)."""
    return [*result.outgoing, *result.shed_reports]


def profile(
    store: ModelStore, mode: Mode, batch: int = 500, repeats: int = 50, top: int = 30
) -> str:
    """The top ``top`` functions (by own time) of scoring and sending ``repeats`` batches."""
    score = _scorer(store, mode)
    records = batch_records(batch)
    sender = BatchSender(_Producer())
    loop = asyncio.new_event_loop()
    profiler = cProfile.Profile()
    try:
        loop.run_until_complete(sender.send(_wire(score(records, 0))))
        profiler.enable()
        for _ in range(repeats):
            loop.run_until_complete(sender.send(_wire(score(records, 0))))
        profiler.disable()
    finally:
        loop.close()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


# What each fixed table is in ``rollout bench``'s words (manual: no candidate is loaded).
_LINES = {Mode.MANUAL: "production only", Mode.SHADOW: "shadow 100%"}


def lines(store: ModelStore, batch: int, repeats: int) -> list[BatchCpu]:
    """Each ceiling beside the worker's line held to it, interleaved."""
    return [
        measure(C_PARSE, _ceiling(1), batch, repeats),
        measure(_LINES[Mode.MANUAL], _scorer(store, Mode.MANUAL), batch, repeats),
        measure(FAN_OUT, _ceiling(2), batch, repeats),
        measure(_LINES[Mode.SHADOW], _scorer(store, Mode.SHADOW), batch, repeats),
    ]


def table(lines: Sequence[BatchCpu]) -> str:
    rows = [
        "| line | batch | score µs/request | send µs/request | total | bytes/request "
        "| page faults/batch |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    rows += [
        f"| {c.line} | {c.batch} | {c.score_us:.1f} | {c.send_us:.1f} "
        f"| {c.total_us:.1f} "
        f"| {c.bytes_per_request:.0f} | {c.faults_per_batch:.0f} |"
        for c in lines
    ]
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m app.bench.batch_cpu", description=__doc__)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--store", type=Path, default=Path("models"))
    parser.add_argument("--profile", choices=[m.value for m in (Mode.MANUAL, Mode.SHADOW)])
    args = parser.parse_args(argv)
    store = ModelStore(args.store)
    if args.profile:
        print(profile(store, Mode(args.profile), args.batch))
        return
    # Production only is a fixed table in manual mode (no candidate), as in ``rollout bench``.
    print(table(lines(store, args.batch, args.repeats)))


if __name__ == "__main__":
    main()
