"""The worker end to end on the real broker: predictions, dead letters, crash recovery."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pytest

from app.adapters.control_client import current_states
from app.adapters.kafka_clients import plain_producer
from app.adapters.topic_reader import read_topic
from app.core.events import DeadLetter, Prediction, decode, encode
from app.core.topics import Topic
from app.harness.traffic import make_requests, send, send_raw
from app.settings import Settings
from tests.builders import running_workers
from tests.integration.outputs import SESSION_START_MS, direct, feature_rows, predictions

pytestmark = pytest.mark.kafka


async def _predictions(
    settings: Settings, run_id: str, expect: int, settle_s: float = 3.0
) -> list[Prediction]:
    return [p for _, p in await predictions(settings, f"{run_id}-", expect, settle_s)]


async def _serving(settings: Settings) -> tuple[str, int]:
    """The production version and epoch the worker will serve under (no controller runs here:
    the latest published state, or ``deployment.yaml``'s version at epoch 0)."""
    state = (await current_states(settings)).get("fraud")
    if state is None:
        return "1", 0
    assert state.candidate is None, "an earlier test left a rollout in flight"
    return state.production.version, state.epoch


async def test_every_valid_request_gets_exactly_one_prediction_equal_to_onnxruntime(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    settings = Settings(bootstrap_servers=kafka_bootstrap)
    version, epoch = await _serving(settings)
    run_id = f"valid-{uuid.uuid4().hex[:8]}"
    sent = make_requests(2000, seed=7, run_id=run_id)
    # Half by name, half as lists in the model's order: both forms are served.
    sent = sent[:1000] + make_requests(1000, seed=8, run_id=f"{run_id}-l", as_list=True)
    producer = plain_producer(settings)
    await producer.start()
    with running_workers(kafka_bootstrap, ["w1"], tmp_path):
        try:
            await send(producer, sent)
        finally:
            await producer.stop()
        predictions = await _predictions(settings, run_id, len(sent))

    counts = Counter(p.request_id for p in predictions)
    assert len(counts) == len(sent)
    assert set(counts.values()) == {1}
    by_id = {p.request_id: p for p in predictions}
    labels, scores = direct(version, feature_rows(sent))
    for i, s in enumerate(sent):
        p = by_id[s.request.request_id]
        assert (p.model.version, p.role, p.epoch) == (version, "production", epoch)
        assert p.entity_key == s.key.decode()
        assert p.output.label == labels[i]
        np.testing.assert_allclose(p.output.scores, scores[i], rtol=0, atol=1e-6)
    # Several input partitions were involved (keys are card ids spread over 6 partitions).
    assert len({p.entity_key for p in predictions}) > 100


async def test_malformed_records_get_dead_letters_and_valid_ones_are_served(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    settings = Settings(bootstrap_servers=kafka_bootstrap)
    run_id = f"mixed-{uuid.uuid4().hex[:8]}"
    valid = make_requests(50, seed=11, run_id=run_id)
    good = dict(valid[0].request.features)  # type: ignore[arg-type]

    def req(rid: str, **over: object) -> bytes:
        body = {"request_id": f"{run_id}-{rid}", "deployment": "fraud", "features": good}
        body.update(over)
        return orjson.dumps(body)

    missing = dict(good)
    del missing["amount"]
    bad_cases: dict[str, bytes] = {
        "invalid_json": b'{"request_id": "x", ',
        "invalid_utf8": b'{"request_id": "\xff\xfe", "deployment": "fraud"}',
        "missing_request_id": orjson.dumps({"deployment": "fraud", "features": good}),
        "unknown_deployment": req("unknown", deployment="nope"),
        "missing_feature": req("missing", features=missing),
        "wrong_type": req("wrongtype", features={**good, "amount": "12.5"}),
        # What Python's json.dumps writes for float("nan"): not strict JSON, but not garbage.
        "non_finite": req("nan", features={**good, "amount": 0.125}).replace(b"0.125", b"NaN"),
        "extra_feature": req("extra", features={**good, "shoe_size": 42.0}),
        "payload_too_large": req("big", padding="x" * 70_000),
    }
    # Interleave: valid, bad, valid, bad ... so bad records share batches with good ones.
    mixed: list[tuple[bytes | None, bytes]] = []
    bad_items = list(bad_cases.items())
    for i, s in enumerate(valid):
        mixed.append((s.key, encode(s.request)))
        if i < len(bad_items):
            mixed.append((f"bad-{run_id}-{i}".encode(), bad_items[i][1]))
    producer = plain_producer(settings)
    await producer.start()
    with running_workers(kafka_bootstrap, ["w1"], tmp_path):
        try:
            await send_raw(producer, mixed)
        finally:
            await producer.stop()
        predictions = await _predictions(settings, run_id, len(valid))
        letters_raw = await read_topic(
            settings,
            settings.topics.name(Topic.DLQ),
            lambda rs: (
                sum(1 for r in rs if r.key and r.key.startswith(f"bad-{run_id}".encode()))
                >= len(bad_cases)
            ),
            timeout_s=60,
            settle_s=2,
            since_ms=SESSION_START_MS,
        )
    assert Counter(p.request_id for p in predictions) == Counter(
        s.request.request_id for s in valid
    )
    letters = {
        r.key.decode(): decode(DeadLetter, r.value)
        for r in letters_raw
        if r.key and r.key.startswith(f"bad-{run_id}".encode())
    }
    assert len(letters) == len(bad_cases)
    for i, (expected_code, payload) in enumerate(bad_items):
        letter = letters[f"bad-{run_id}-{i}"]
        assert letter.error.code == expected_code, (expected_code, letter.error.message)
        assert letter.error.message
        assert letter.source.topic == settings.topics.name(Topic.REQUESTS)
        if letter.payload_encoding == "utf-8":
            assert letter.payload.encode() == payload
        else:
            assert base64.b64decode(letter.payload) == payload


async def test_kill_9_mid_stream_then_restart_loses_and_duplicates_nothing(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    settings = Settings(bootstrap_servers=kafka_bootstrap)
    run_id = f"kill-{uuid.uuid4().hex[:8]}"
    sent = make_requests(5000, seed=21, run_id=run_id)
    producer = plain_producer(settings)
    await producer.start()
    try:
        with running_workers(kafka_bootstrap, ["crashy"], tmp_path) as (worker,):
            sender = asyncio.create_task(send(producer, sent, rate=1500))
            # Kill once some, but not all, predictions are committed.
            deadline = time.monotonic() + 60
            seen = 0
            while time.monotonic() < deadline:
                seen = len(await _predictions(settings, run_id, 1, settle_s=0))
                if seen >= 500:
                    break
                await asyncio.sleep(0.3)
            assert 0 < seen < len(sent), "the worker should be mid-stream when killed"
            worker.kill()
            await sender
        with running_workers(kafka_bootstrap, ["crashy"], tmp_path):
            predictions = await _predictions(settings, run_id, len(sent), settle_s=3)
    finally:
        await producer.stop()
    counts = Counter(p.request_id for p in predictions)
    assert len(counts) == len(sent), f"lost {len(sent) - len(counts)}"
    assert max(counts.values()) == 1, f"duplicated {sum(c - 1 for c in counts.values())}"
