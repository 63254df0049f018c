"""The hostile-input property through a real ``rollout worker`` on the broker (a few bounded
examples): the worker never stops, every malformed record gets a dead letter with its
specific code, and every valid record of the same batches gets exactly one prediction."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.adapters.kafka_clients import plain_producer
from app.adapters.topic_reader import read_topic
from app.core.events import DeadLetter, Prediction, decode
from app.core.topics import Topic
from app.harness.processes import RolloutProcess
from app.harness.traffic import send_raw
from app.settings import Settings
from tests.builders import running_workers
from tests.hostile import MAX_BYTES, Case, batches
from tests.integration.outputs import SESSION_START_MS

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def worker(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RolloutProcess]:
    logs = tmp_path_factory.mktemp("hostile")
    with running_workers(
        kafka_bootstrap, [f"hostile-{uuid.uuid4().hex[:6]}"], logs,
        ROLLOUT_MAX_REQUEST_BYTES=str(MAX_BYTES),
    ) as (proc,):  # fmt: skip
        yield proc


async def _roundtrip(
    bootstrap: str, cases: list[Case], run: str
) -> tuple[list[Prediction], dict[str, DeadLetter]]:
    settings_ = Settings().model_copy(update={"bootstrap_servers": bootstrap})
    producer = plain_producer(settings_)
    await producer.start()
    try:
        await send_raw(producer, [(f"{run}-{i}".encode(), c.value) for i, c in enumerate(cases)])
    finally:
        await producer.stop()
    valid = sum(1 for c in cases if c.code is None)
    invalid = len(cases) - valid
    needle = run.encode()
    letters_raw, preds_raw = await asyncio.gather(
        read_topic(
            settings_, settings_.topics.name(Topic.DLQ),
            lambda rs: sum(1 for r in rs if r.key and r.key.startswith(needle)) >= invalid,
            timeout_s=60, settle_s=1.0, since_ms=SESSION_START_MS,
        ),
        read_topic(
            settings_, settings_.topics.name(Topic.PREDICTIONS),
            lambda rs: sum(1 for r in rs if r.key and r.key.startswith(needle)) >= valid,
            timeout_s=60, settle_s=1.0, since_ms=SESSION_START_MS,
        ),
    )  # fmt: skip
    letters = {
        r.key.decode(): decode(DeadLetter, r.value)
        for r in letters_raw
        if r.key and r.key.startswith(needle)
    }
    preds = [decode(Prediction, r.value) for r in preds_raw if r.key and r.key.startswith(needle)]
    return preds, letters


@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck))
@given(cases=batches(prefix="hw", max_size=25), n=st.integers(0, 10**9))
def test_a_real_worker_serves_valid_records_beside_hostile_ones(
    cases: list[Case], n: int, worker: RolloutProcess, kafka_bootstrap: str
) -> None:
    run = f"hw{n}-{uuid.uuid4().hex[:8]}"
    preds, letters = asyncio.run(_roundtrip(kafka_bootstrap, cases, run))
    assert worker.alive(), worker.log()[-3000:]
    assert Counter(p.request_id for p in preds) == Counter(
        c.request_id for c in cases if c.code is None
    )
    expected = {f"{run}-{i}": c.code for i, c in enumerate(cases) if c.code is not None}
    assert {k: d.error.code for k, d in letters.items()} == expected
