"""Routing by mode under the controller's state, on the real broker, through the control topic
and the CLI, with one and with two workers."""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer

from app.adapters.kafka_clients import plain_producer
from app.core.events import Action, Mode, Prediction, Role
from app.core.routing import bucket
from app.settings import Settings
from app.traffic import SentRequest, make_requests, send
from tests.integration.control import ControllerProcess, cli, command, reset_fraud, state, status
from tests.integration.outputs import comparisons, direct, feature_rows, predictions
from tests.integration.workers import WorkerProcess, running_workers

pytestmark = pytest.mark.kafka


@pytest.fixture
def settings_(kafka_bootstrap: str, model_store: Path) -> Settings:
    return Settings(bootstrap_servers=kafka_bootstrap, model_store=model_store)


@pytest.fixture
async def producer(settings_: Settings) -> AsyncIterator[AIOKafkaProducer]:
    p = plain_producer(settings_)
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


@pytest.fixture
async def clean(controller: ControllerProcess, settings_: Settings) -> AsyncIterator[None]:
    """Each test starts, and leaves the deployment, with production v1 and no candidate."""
    await reset_fraud(settings_)
    yield
    await reset_fraud(settings_)


@pytest.fixture(params=[1, 2], ids=["one-worker", "two-workers"])
def workers(
    request: pytest.FixtureRequest, kafka_bootstrap: str, model_store: Path, tmp_path: Path
) -> Iterator[list[WorkerProcess]]:
    ids = [f"modes-{i}" for i in range(request.param)]
    with running_workers(
        kafka_bootstrap, ids, tmp_path, ROLLOUT_MODEL_STORE=str(model_store)
    ) as procs:
        yield procs


def entity_requests(run: str, tag: str, n: int, seed: int = 5) -> list[SentRequest]:
    """One request per entity ``{run}-ent-{i}`` (the Kafka key is the entity key)."""
    base = make_requests(n, seed=seed, run_id=f"{run}-{tag}")
    return [SentRequest(s.request, f"{run}-ent-{i}".encode()) for i, s in enumerate(base)]


async def serve_at(
    settings: Settings, producer: AIOKafkaProducer, run: str, tag: str, n: int, epoch: int
) -> dict[str, Prediction]:
    """Send one request per entity and return each entity's prediction made under ``epoch``.
    Requests that a worker routed before it took ``epoch`` are sent again (new ids)."""
    sent = entity_requests(run, tag, n)
    await send(producer, sent)
    got = await predictions(settings, f"{run}-{tag}-", n, settle_s=1)
    at_epoch = {p.entity_key: p for _, p in got if p.epoch == epoch}
    assert all(p.epoch <= epoch for _, p in got)
    for attempt in range(5):
        missing = [s for s in sent if s.key.decode() not in at_epoch]
        if not missing:
            break
        retry = [
            SentRequest(
                s.request.model_copy(update={"request_id": f"{s.request.request_id}-r{attempt}"}),
                s.key,
            )
            for s in missing
        ]
        await send(producer, retry)
        again = await predictions(settings, f"{run}-{tag}-", n + len(retry), settle_s=1)
        at_epoch = {p.entity_key: p for _, p in again if p.epoch == epoch}
    assert len(at_epoch) == n
    return at_epoch


def assert_matches_onnxruntime(sent: list[SentRequest], served: dict[str, Prediction]) -> None:
    by_version: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(sent):
        by_version[served[s.key.decode()].model.version].append(i)
    rows = feature_rows(sent)
    for version, idx in by_version.items():
        labels, scores = direct(version, rows[idx])
        for j, i in enumerate(idx):
            p = served[sent[i].key.decode()]
            assert p.output.label == labels[j]
            np.testing.assert_allclose(p.output.scores, scores[j], atol=1e-6)


async def test_canary_share_is_sticky_monotonic_and_correct(
    clean: None,
    workers: list[WorkerProcess],
    settings_: Settings,
    producer: AIOKafkaProducer,
    kafka_bootstrap: str,
) -> None:
    run = f"canary-{uuid.uuid4().hex[:6]}"
    n = 2000
    result = cli(kafka_bootstrap, "deploy", "fraud", "2", "--mode", "canary", "--weight", "0.1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "accepted" in result.stdout
    on_candidate: dict[float, set[str]] = {}
    for weight in (0.10, 0.25, 0.50):
        if weight != 0.10:
            result = cli(kafka_bootstrap, "set-weight", "fraud", str(weight))
            assert result.returncode == 0, result.stdout + result.stderr
        st = status(kafka_bootstrap)["fraud"]
        assert st["canary_weight"] == weight and st["candidate"]["version"] == "2"
        epoch = st["epoch"]
        first = await serve_at(settings_, producer, run, f"w{int(weight * 100)}a", n, epoch)
        second = await serve_at(settings_, producer, run, f"w{int(weight * 100)}b", n, epoch)
        # No entity switches model at a fixed weight.
        assert {e: p.role for e, p in first.items()} == {e: p.role for e, p in second.items()}
        chosen = {e for e, p in first.items() if p.role is Role.CANDIDATE}
        assert abs(len(chosen) / n - weight) <= 0.03, (weight, len(chosen) / n)
        for p in first.values():
            assert p.model.version == ("2" if p.role is Role.CANDIDATE else "1")
            assert p.mode is Mode.CANARY
        assert_matches_onnxruntime(entity_requests(run, f"w{int(weight * 100)}a", n), first)
        on_candidate[weight] = chosen
    # Raising the weight only adds entities.
    assert on_candidate[0.10] <= on_candidate[0.25] <= on_candidate[0.50]
    # Every candidate-served request was also scored by production (paired comparison).
    comps = await comparisons(settings_, f"{run}-w50a-", 1, settle_s=1)
    paired = {c.request_id for c in comps if c.served_by is Role.CANDIDATE}
    served = {
        p.request_id
        for _, p in await predictions(settings_, f"{run}-w50a-", n, settle_s=0)
        if p.role is Role.CANDIDATE
    }
    assert served <= paired
    assert all(c.production.output is not None and c.candidate.output is not None for c in comps)


async def test_shadow_scores_the_candidate_only_into_comparisons(
    clean: None,
    workers: list[WorkerProcess],
    settings_: Settings,
    producer: AIOKafkaProducer,
) -> None:
    run = f"shadow-{uuid.uuid4().hex[:6]}"
    decision = await command(settings_, Action.DEPLOY, version="2", mode=Mode.SHADOW)
    assert decision.accepted, decision.reason
    n = 1000
    served = await serve_at(settings_, producer, run, "full", n, decision.epoch)
    assert {p.model.version for p in served.values()} == {"1"}
    assert {p.role for p in served.values()} == {Role.PRODUCTION}
    sent = entity_requests(run, "full", n)
    comps = {
        c.request_id: c
        for c in await comparisons(settings_, f"{run}-full-", n, settle_s=2)
        if c.epoch == decision.epoch
    }
    served_ids = {p.request_id for p in served.values()}
    assert served_ids <= set(comps)
    all_comps = await comparisons(settings_, f"{run}-full-", n, settle_s=0)
    assert max(Counter(c.request_id for c in all_comps).values()) == 1
    rows = feature_rows(sent)
    labels, scores = direct("2", rows)
    for i, s in enumerate(sent):
        c = comps.get(s.request.request_id)
        if c is None:  # served before this worker took the shadow epoch
            continue
        assert c.served_by is Role.PRODUCTION and c.candidate.version == "2"
        assert c.candidate.output is not None and c.candidate.output.label == labels[i]
        np.testing.assert_allclose(c.candidate.output.scores, scores[i], atol=1e-6)
        assert c.source.topic == "inference.requests" and c.production.latency_ms is not None

    # A sample rate below 1: exactly the requests the deterministic sample picks.
    decision = await command(settings_, Action.ABORT)
    decision = await command(
        settings_, Action.DEPLOY, version="2", mode=Mode.SHADOW, sample_rate=0.3
    )
    assert decision.accepted
    served = await serve_at(settings_, producer, run, "part", n, decision.epoch)
    ids = {p.request_id for p in served.values()}
    picked = {rid for rid in ids if bucket("fraud", rid, "2") < 0.3}
    comps_part = {
        c.request_id
        for c in await comparisons(settings_, f"{run}-part-", len(picked), settle_s=2)
        if c.request_id in ids
    }
    assert comps_part == picked
    assert 0.25 < len(picked) / n < 0.35


async def test_manual_waits_for_promote_and_automatic_promotes_at_once(
    clean: None,
    workers: list[WorkerProcess],
    settings_: Settings,
    producer: AIOKafkaProducer,
    kafka_bootstrap: str,
) -> None:
    run = f"manual-{uuid.uuid4().hex[:6]}"
    n = 500
    result = cli(kafka_bootstrap, "deploy", "fraud", "2", "--mode", "manual")
    assert result.returncode == 0, result.stdout + result.stderr
    st = status(kafka_bootstrap)["fraud"]
    assert st["phase"] == "awaiting_approval" and st["candidate"]["version"] == "2"
    before = await serve_at(settings_, producer, run, "before", n, st["epoch"])
    assert {p.model.version for p in before.values()} == {"1"}
    result = cli(kafka_bootstrap, "promote", "fraud")
    assert result.returncode == 0, result.stdout + result.stderr
    st = status(kafka_bootstrap)["fraud"]
    after = await serve_at(settings_, producer, run, "after", n, st["epoch"])
    assert {p.model.version for p in after.values()} == {"2"}
    assert {p.role for p in after.values()} == {Role.PRODUCTION}

    decision = await command(settings_, Action.DEPLOY, version="3", mode=Mode.AUTOMATIC)
    assert decision.accepted and decision.to is not None and decision.to.mode is Mode.AUTOMATIC
    auto = await serve_at(settings_, producer, run, "auto", n, decision.epoch)
    assert {p.model.version for p in auto.values()} == {"3"}
    assert (await state(settings_)).history[-1].version == "2"
