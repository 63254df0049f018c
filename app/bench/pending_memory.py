"""What the controller's evidence costs at fleet scale: memory per pending request, memory of
100 rollouts, and the largest analysis snapshot record with 100 rollouts on one partition.

``python -m app.bench.pending_memory`` (pure: no broker). Memory is what Python allocates
(``tracemalloc``: numpy's arrays included), measured around building the structures.
"""

from __future__ import annotations

import argparse
import random
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from app.controller.partition_snapshot import PartitionSnapshot, TrackedRollout
from app.core.analysis import RolloutAnalysis
from app.core.events import ArmResult, Comparison, Mode, ModelOutput, Role, SourceOffset
from app.core.pending import AUDIT, OPEN, QUEUED, PendingStore
from app.core.policy import Policy

LABELS = ("legit", "fraud")


def _measured(build: Callable[[], Any]) -> tuple[Any, int]:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        built = build()
        return built, tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def store_of(rows: int, tests: int = 2) -> PendingStore:
    """A store of ``rows`` audit requests (fraud's recall: a test per class), a tenth of them
    open (disagreeing pairs), all waiting for labels."""
    store = PendingStore(tests=tests, limit=rows + 1)
    rng = random.Random(1)
    for i in range(rows):
        prod = LABELS[rng.random() < 0.2]
        disagree = rng.random() < 0.1
        cand = LABELS[prod == "legit"] if disagree else prod
        flags = AUDIT | QUEUED | (OPEN if disagree else 0)
        store.add(f"req-{i:012d}", prod, cand, 1_700_000_000_000 + i * 10, 7, flags, [0.1] * tests)
    return store


def _comparison(deployment: str, i: int, rng: random.Random) -> Comparison:
    prod = LABELS[rng.random() < 0.2]
    cand = LABELS[prod == "legit"] if rng.random() < 0.1 else prod
    arm = {"sha256": "0" * 64, "latency_ms": 0.05}
    return Comparison(
        request_id=f"{deployment}-{i:012d}",
        deployment=deployment,
        mode=Mode.CANARY,
        epoch=1,
        source=SourceOffset(topic="synthetic", partition=0, offset=i),
        served_by=Role.CANDIDATE,
        production=ArmResult(version="1", output=ModelOutput(label=prod, scores=[0.8, 0.2]), **arm),
        candidate=ArmResult(version="2", output=ModelOutput(label=cand, scores=[0.7, 0.3]), **arm),
        agree=prod == cand,
        score_delta=0.1,
    )


def rollouts(count: int, compared: int) -> dict[str, TrackedRollout]:
    """``count`` canary rollouts of fraud's policy, each fed ``compared`` comparisons whose
    labels have not come."""
    out: dict[str, TrackedRollout] = {}
    for k in range(count):
        name = f"fleet-{k:03d}"
        a = RolloutAnalysis.for_policy(name, "2", 1, Policy(), started_at=1_700_000_000_000)
        rng = random.Random(k)
        for i in range(compared):
            a.add_comparison(_comparison(name, i, rng), at=1_700_000_000_000 + i * 10)
        out[name] = TrackedRollout(a, weight=0.05)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the one store")
    parser.add_argument("--deployments", type=int, default=100)
    parser.add_argument("--compared", type=int, default=5000, help="per deployment")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    store, used = _measured(lambda: store_of(args.rows))
    per_row = used / args.rows
    print(
        f"one store, {args.rows:,} pending requests: {used / 2**20:.1f} MiB, {per_row:.1f} B each"
    )
    print(f"  at 100/s for 24 h (8,640,000): {per_row * 8_640_000 / 2**20:.0f} MiB a deployment")
    del store

    fleet, used = _measured(lambda: rollouts(args.deployments, args.compared))
    pending = sum(len(t.analysis.pending) for t in fleet.values())
    print(
        f"{args.deployments} rollouts, {pending:,} pending requests in all: "
        f"{used / 2**20:.1f} MiB ({used / args.deployments / 2**10:.0f} KiB a rollout)"
    )
    snap = PartitionSnapshot(0, 10**9, 10**9, fleet)
    records = snap.records()
    sizes = sorted(len(v) for _, v in records if v is not None)
    largest = max(records, key=lambda r: len(r[1] or b""))
    print(
        f"snapshot of one partition holding all {args.deployments}: {len(records)} records, "
        f"{sum(sizes) / 2**20:.1f} MiB in all; largest {sizes[-1]:,} bytes "
        f"({largest[0].decode()}); largest evidence record "
        f"{max(len(v or b'') for k, v in records if b'/rollout/' in k):,} bytes"
    )
    snap.written(records)
    again = snap.records()
    print(f"  the next snapshot with nothing changed: {len(again)} record(s)")
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
