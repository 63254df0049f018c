"""Labels that come long after their requests, past the pending window of the earlier design,
are still joined, through a controller restart, and nothing is dropped silently.

The earlier design kept at most a fixed number of pending requests (100,000) in one snapshot
record per partition, and dropped the oldest beyond it without a word in the evidence. Here
the controller keeps its pending requests in chunks of 64 rows (``ROLLOUT_PENDING_CHUNK_ROWS``,
made small so that a few thousand requests span dozens of chunks and snapshot records): a
shadow rollout compares 3,000 requests with no label, the controller is restarted (the new
one restores the evidence and every pending chunk from ``deployments.analysis``), and only
then do the labels come, the first of them after 2,999 other comparisons. Every one is
joined; none expired or dropped; no analysis record is larger than a chunk's."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from app.adapters.topic_reader import read_to_end
from app.controller.partition_snapshot import PartitionSnapshot, latest_values
from app.core.analysis import RolloutAnalysis
from app.core.events import Action, Mode
from app.core.topics import Topic
from app.harness.processes import CONTROLLER_READY, RolloutProcess
from app.harness.traffic import make_requests, send, send_feedback
from app.settings import Settings
from tests.builders import controller_process, running_workers
from tests.integration.deployment_copies import copy_fraud, create, order

pytestmark = pytest.mark.kafka

REQUESTS = 3000
CHUNK_ROWS = 64
# A shadow rollout that never decides on its own: it only gathers evidence.
WAITING: dict[str, Any] = {
    "min_samples_per_step": 10**9,
    "promote_on_agreement": False,
    "guardrails": {
        "max_disagreement": 1.0,
        "max_score_shift": 1e9,
        "max_latency_ratio": 1000.0,
        "min_latency_regression_ms": 1000.0,
    },
}


@pytest.fixture(scope="module")
def name() -> str:
    return f"late{uuid.uuid4().hex[:6]}"


def _controller(bootstrap: str, store: Path, logs: Path, tag: str) -> RolloutProcess:
    proc = controller_process(
        bootstrap,
        logs,
        tag,
        ROLLOUT_MODEL_STORE=str(store),
        ROLLOUT_PENDING_CHUNK_ROWS=str(CHUNK_ROWS),
    )
    proc.start()
    proc.wait_for(CONTROLLER_READY)
    return proc


@pytest.fixture(scope="module")
def workers(
    kafka_bootstrap: str, model_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[RolloutProcess]]:
    logs = tmp_path_factory.mktemp("late-join-workers")
    with running_workers(
        kafka_bootstrap, ["late-join-1"], logs, ROLLOUT_MODEL_STORE=str(model_store)
    ) as procs:
        yield procs


async def evidence(settings: Settings, name: str) -> tuple[RolloutAnalysis | None, int]:
    """The rollout's analysis in the controller's latest snapshot, and the largest record
    of its snapshot (bytes)."""
    records = await read_to_end(settings, settings.topics.name(Topic.ANALYSIS))
    values = latest_values((r.key, r.value) for r in records)
    mine = [len(v) for k, v in values.items() if f"/{name}/".encode() in k + b"/"]
    for partition in {r.partition for r in records}:
        snap = PartitionSnapshot.from_records(partition, values)
        if name in snap.rollouts:
            return snap.rollouts[name].analysis, max(mine, default=0)
    return None, max(mine, default=0)


async def wait_for(
    settings: Settings, name: str, what: str, done: Any, timeout_s: float = 120.0
) -> RolloutAnalysis:
    deadline = time.monotonic() + timeout_s
    seen = None
    while time.monotonic() < deadline:
        seen, _ = await evidence(settings, name)
        if seen is not None and done(seen):
            return seen
        await asyncio.sleep(1.0)
    raise AssertionError(f"{what}: {seen and seen.samples()}")


async def test_labels_after_thousands_of_comparisons_and_a_restart_are_all_joined(
    kafka_bootstrap: str,
    model_store: Path,
    workers: list[RolloutProcess],
    name: str,
    settings_: Settings,
    producer: AIOKafkaProducer,
    tmp_path: Path,
) -> None:
    first = _controller(kafka_bootstrap, model_store, tmp_path, "late-a")
    try:
        copy_fraud(model_store, name)
        await create(settings_, name)
        deployed = await order(
            settings_,
            name,
            Action.DEPLOY,
            version="2",
            mode=Mode.SHADOW,
            sample_rate=1.0,
            policy=WAITING,
        )
        # Every request must be compared: send none before the worker routes to the candidate.
        await asyncio.to_thread(
            workers[0].wait_for, f"deployment {name}: epoch {deployed.epoch},", 30.0
        )
        sent = make_requests(REQUESTS, seed=5, run_id=f"{name}-r", deployment=name)
        await send(producer, sent, rate=1500.0, topic=settings_.topics.name(Topic.REQUESTS))
        before = await wait_for(settings_, name, "all compared", lambda a: a.compared >= REQUESTS)
    finally:
        first.terminate()
    assert before.labelled == 0 and len(before.pending) == REQUESTS
    assert len(before.pending.meta()["chunks"]) >= REQUESTS // CHUNK_ROWS

    second = _controller(kafka_bootstrap, model_store, tmp_path, "late-b")
    try:
        # The new controller restored the evidence and the pending chunks: now the labels.
        labels = await send_feedback(
            producer, sent, audit_rate=1.0, topic=settings_.topics.name(Topic.FEEDBACK)
        )
        assert labels == REQUESTS
        after = await wait_for(
            settings_, name, "all labels joined", lambda a: a.labelled >= REQUESTS
        )
        _, largest = await evidence(settings_, name)
        await order(settings_, name, Action.ABORT)
    finally:
        second.terminate()
    samples = after.samples()
    assert (samples["labelled"], samples["compared"]) == (REQUESTS, REQUESTS)
    assert (samples["pending"], samples["pending_dropped"], samples["pending_expired"]) == (
        0,
        0,
        0,
    )
    # A chunk of 64 rows: 64 x (24 + 4 x 2 tests) bytes and a small header; the evidence ~10 KiB.
    assert 0 < largest < 16 * 1024
