"""Routing by mode under the controller's state, on the real broker, through the control topic
and the CLI, with two workers (stickiness and epochs across a group; the one-worker case is
what most other integration tests run)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from app.adapters.topic_reader import read_to_end
from app.core.events import Action, DecisionEvent, Mode, Prediction, Role, ShedReport, decode
from app.core.routing import bucket
from app.core.topics import Topic
from app.harness.processes import RolloutProcess
from app.harness.rollout_scenarios import HANDS_OFF
from app.harness.traffic import SentRequest, make_requests, send
from app.settings import Settings
from tests.builders import running_workers
from tests.integration.control import cli, command, state, status
from tests.integration.outputs import (
    SESSION_START_MS,
    Tail,
    comparisons,
    direct,
    feature_rows,
    predictions,
)

pytestmark = pytest.mark.kafka

# These tests steer rollouts by hand (v2 passes every guardrail against v1 anyway).
HANDS_OFF_JSON = orjson.dumps(HANDS_OFF).decode()


@pytest.fixture(params=[2], ids=["two-workers"])
def workers(
    request: pytest.FixtureRequest, kafka_bootstrap: str, model_store: Path, tmp_path: Path
) -> Iterator[list[RolloutProcess]]:
    ids = [f"modes-{i}" for i in range(request.param)]
    with running_workers(
        kafka_bootstrap, ids, tmp_path, ROLLOUT_MODEL_STORE=str(model_store)
    ) as procs:
        yield procs


def entity_requests(run: str, tag: str, n: int, seed: int = 5) -> list[SentRequest]:
    """One request per entity ``ent-{i}`` (the Kafka key is the entity key). The entity names
    are fixed, so the canary's share of them is a fixed property of the hash (10.05%, 25.45%,
    50.6% at 10, 25 and 50%), not a new draw every run."""
    base = make_requests(n, seed=seed, run_id=f"{run}-{tag}")
    return [SentRequest(s.request, f"ent-{i}".encode()) for i, s in enumerate(base)]


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
    workers: list[RolloutProcess],
    settings_: Settings,
    producer: AIOKafkaProducer,
    kafka_bootstrap: str,
) -> None:
    run = f"canary-{uuid.uuid4().hex[:6]}"
    n = 2000
    result = cli(
        kafka_bootstrap,
        "deploy",
        "fraud",
        "2",
        "--mode",
        "canary",
        "--weight",
        "0.1",
        "--policy",
        HANDS_OFF_JSON,
    )
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
    workers: list[RolloutProcess],
    settings_: Settings,
    producer: AIOKafkaProducer,
) -> None:
    run = f"shadow-{uuid.uuid4().hex[:6]}"
    decision = await command(
        settings_, Action.DEPLOY, policy=HANDS_OFF, version="2", mode=Mode.SHADOW
    )
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
        assert (
            c.source.topic == settings_.topics.name(Topic.REQUESTS)
            and c.production.latency_ms is not None
        )

    # A sample rate below 1: exactly the requests the deterministic sample picks.
    decision = await command(settings_, Action.ABORT)
    decision = await command(
        settings_, Action.DEPLOY, policy=HANDS_OFF, version="2", mode=Mode.SHADOW, sample_rate=0.3
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
    workers: list[RolloutProcess],
    settings_: Settings,
    producer: AIOKafkaProducer,
    kafka_bootstrap: str,
) -> None:
    run = f"manual-{uuid.uuid4().hex[:6]}"
    n = 500
    result = cli(
        kafka_bootstrap, "deploy", "fraud", "2", "--mode", "manual", "--policy", HANDS_OFF_JSON
    )
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


async def test_rollback_and_abort_restore_the_previous_production(
    clean: None,
    workers: list[RolloutProcess],
    settings_: Settings,
    producer: AIOKafkaProducer,
    kafka_bootstrap: str,
) -> None:
    run = f"back-{uuid.uuid4().hex[:6]}"
    d = await command(
        settings_, Action.DEPLOY, policy=HANDS_OFF, version="2", mode=Mode.CANARY, weight=1.0
    )
    assert d.accepted
    canary = await serve_at(settings_, producer, run, "canary", 300, d.epoch)
    assert {p.model.version for p in canary.values()} == {"2"}
    result = cli(kafka_bootstrap, "abort", "fraud")
    assert result.returncode == 0 and "accepted" in result.stdout
    st = await state(settings_)
    assert st.candidate is None and st.production.version == "1"
    aborted = await serve_at(settings_, producer, run, "aborted", 300, st.epoch)
    assert {p.model.version for p in aborted.values()} == {"1"}

    history = st.history
    assert (await command(settings_, Action.DEPLOY, version="2", mode=Mode.AUTOMATIC)).accepted
    result = cli(kafka_bootstrap, "rollback", "fraud")
    assert result.returncode == 0, result.stdout
    st = await state(settings_)
    assert st.production.version == "1"
    # The history is what it was (less its oldest entry if the deploy pushed it past the cap).
    assert len(st.history) >= len(history) - 1
    assert st.history == history[len(history) - len(st.history) :]
    rolled = await serve_at(settings_, producer, run, "rolled", 300, st.epoch)
    assert {p.model.version for p in rolled.values()} == {"1"}


@pytest.mark.parametrize(
    ("name", "raw", "reason"),
    [
        (
            "unknown version",
            {"action": "deploy", "version": "99", "mode": "canary"},
            "unknown version",
        ),
        ("tampered model file", {"action": "deploy", "version": "4", "mode": "canary"}, "sha256"),
        ("illegal transition", {"action": "promote"}, "no candidate"),
        ("weight above 1", {"action": "set_weight", "weight": 1.5}, "weight"),
        ("weight below 0", {"action": "set_weight", "weight": -0.5}, "weight"),
        ("unknown action", {"action": "explode"}, "action"),
        (
            "version escaping the store",
            {"action": "deploy", "version": "../../etc", "mode": "canary"},
            "version",
        ),
        (
            "uri outside the model store",
            {"action": "deploy", "version": "2", "mode": "canary", "uri": "/etc/passwd"},
            "uri",
        ),
        ("weight not a number", {"action": "set_weight", "weight": "NaN"}, "weight"),
    ],
)
async def test_rejected_commands_leave_state_and_epoch_unchanged(
    clean: None,
    settings_: Settings,
    producer: AIOKafkaProducer,
    name: str,
    raw: dict[str, object],
    reason: str,
) -> None:
    before = await state(settings_)
    command_id = uuid.uuid4().hex
    body = orjson.dumps({"command_id": command_id, "deployment": "fraud", "issued_by": "t", **raw})
    decision = await _send_raw_command(settings_, producer, body, command_id)
    assert decision is not None and not decision.accepted
    assert reason in decision.reason.lower(), decision.reason
    assert decision.epoch == before.epoch
    after = await state(settings_)
    assert after == before


async def test_malformed_json_on_the_control_topic_is_answered_and_changes_nothing(
    clean: None, settings_: Settings, producer: AIOKafkaProducer
) -> None:
    before = await state(settings_)
    events_before = await _events(settings_)
    await producer.send_and_wait(
        settings_.topics.name(Topic.CONTROL), b'{"action": "promote", ', key=b"fraud"
    )
    # A valid command after it is still served: the controller did not stop on garbage.
    decision = await command(settings_, Action.PAUSE)
    assert not decision.accepted and "no candidate" in decision.reason
    # New events by content, not by position: the list is ordered by partition, and other
    # deployments' events (on other partitions) may sort after fraud's.
    events = [e for e in await _events(settings_) if e not in events_before]
    garbage = [e for e in events if e.command_id is None and not e.accepted]
    assert garbage and "not valid json" in garbage[0].reason.lower()
    assert await state(settings_) == before


async def _send_raw_command(
    settings: Settings, producer: AIOKafkaProducer, body: bytes, command_id: str
) -> DecisionEvent | None:
    await producer.send_and_wait(settings.topics.name(Topic.CONTROL), body, key=b"fraud")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        # By its (unique) command id, not by position: events are listed by partition, and
        # other deployments' events (other partitions) may sort after the answer.
        for e in await _events(settings):
            if e.command_id == command_id:
                return e
        await asyncio.sleep(0.2)
    return None


async def _events(settings: Settings) -> list[DecisionEvent]:
    records = await read_to_end(
        settings, settings.topics.name(Topic.EVENTS), since_ms=SESSION_START_MS
    )
    return [
        decode(DecisionEvent, r.value)
        for r in sorted(records, key=lambda r: (r.partition, r.offset))
    ]


async def test_twenty_swaps_under_load_lose_nothing_and_never_go_back_in_epoch(
    clean: None,
    settings_: Settings,
    producer: AIOKafkaProducer,
    kafka_bootstrap: str,
    model_store: Path,
    tmp_path: Path,
) -> None:
    run = f"swaps-{uuid.uuid4().hex[:6]}"
    sent: list[SentRequest] = []
    stop = asyncio.Event()

    async def continuous_load() -> None:
        chunk = 0
        while not stop.is_set():
            batch = make_requests(200, seed=chunk, run_id=f"{run}-{chunk}")
            await send(producer, batch, rate=400)
            sent.extend(batch)
            chunk += 1

    swap_delays: list[float] = []  # from sending `promote` (client set-up included)
    after_decision: list[float] = []  # from the controller's decision
    tail = await Tail(settings_).start()
    with running_workers(
        kafka_bootstrap, ["swap-a", "swap-b"], tmp_path, ROLLOUT_MODEL_STORE=str(model_store)
    ):
        load = asyncio.create_task(continuous_load())
        for _ in range(20):
            d = await command(
                settings_, Action.DEPLOY, policy=HANDS_OFF, version="2", mode=Mode.MANUAL
            )
            assert d.accepted, d.reason
            promoted_at = time.time() * 1000
            d = await command(settings_, Action.PROMOTE)
            assert d.accepted, d.reason
            first = await _first_served_by(tail, d.epoch, "2")
            swap_delays.append(first - promoted_at)
            after_decision.append(first - d.at)
            d = await command(settings_, Action.ROLLBACK)
            assert d.accepted and (await state(settings_)).production.version == "1"
        stop.set()
        await load
        await tail.stop()
        got = await predictions(settings_, f"{run}-", len(sent), settle_s=3)
    counts = Counter(p.request_id for _, p in got)
    assert len(counts) == len(sent), f"lost {len(sent) - len(counts)}"
    assert max(counts.values()) == 1, "a request was answered twice"
    by_partition: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for record, p in got:
        by_partition[record.partition].append((record.offset, p.epoch))
    for partition, seq in by_partition.items():
        epochs = [e for _, e in sorted(seq)]
        assert epochs == sorted(epochs), f"epochs went backwards in partition {partition}"
    swap_delays.sort()
    after_decision.sort()
    print(
        f"\npromote -> first prediction by the new version (ms): "
        f"median {swap_delays[len(swap_delays) // 2]:.0f}, max {swap_delays[-1]:.0f}; "
        f"from the controller's decision: median {after_decision[len(after_decision) // 2]:.0f},"
        f" max {after_decision[-1]:.0f}"
    )


async def _first_served_by(tail: Tail, epoch: int, version: str) -> float:
    """``served_at`` of the first prediction made under ``epoch`` by ``version``."""
    deadline = time.monotonic() + 30
    seen = tail.records
    while time.monotonic() < deadline:
        served = [
            p.served_at
            for p in (decode(Prediction, r.value) for r in seen)
            if p.epoch == epoch and p.model.version == version
        ]
        if served:
            return float(min(served))
        seen = await tail.poll()
    raise AssertionError(f"no prediction by version {version} at epoch {epoch}")


async def test_a_worker_behind_sheds_shadow_scoring_first_and_reports_it(
    clean: None,
    settings_: Settings,
    producer: AIOKafkaProducer,
    kafka_bootstrap: str,
    model_store: Path,
    tmp_path: Path,
) -> None:
    run = f"shed-{uuid.uuid4().hex[:6]}"
    d = await command(settings_, Action.DEPLOY, policy=HANDS_OFF, version="2", mode=Mode.SHADOW)
    assert d.accepted
    sent = make_requests(4000, seed=41, run_id=run)
    tail = await Tail(settings_, settings_.topics.name(Topic.COMPARISONS)).start()
    await send(producer, sent)  # a backlog before any worker runs
    with running_workers(
        kafka_bootstrap,
        ["shedder"],
        tmp_path,
        ROLLOUT_MODEL_STORE=str(model_store),
        ROLLOUT_SHADOW_SHED_LAG="500",
        ROLLOUT_BATCH_MAX_RECORDS="200",
    ):
        got = await predictions(settings_, f"{run}-", len(sent), settle_s=2)
        comps = [c for c in await comparisons(settings_, f"{run}-", 1, settle_s=2)]
        while await tail.poll(timeout_ms=500):
            pass
    await tail.stop()
    # Production served every request, exactly once.
    assert Counter(p.request_id for _, p in got) == Counter(s.request.request_id for s in sent)
    assert {p.model.version for _, p in got} == {"1"}
    reports = [
        decode(ShedReport, r.value) for r in tail.records if (("kind", b"shed") in r.headers)
    ]
    shed = sum(r.shed for r in reports if r.epoch == d.epoch)
    sampled = sum(r.sampled for r in reports if r.epoch == d.epoch)
    assert shed > 0, "the backlog should have been shed"
    assert shed + len(comps) == len(sent)
    print(
        f"\nshed {shed} of {len(sent)} shadow comparisons ({shed / len(sent):.0%}) "
        f"while behind; {sampled} sampled in shedding batches"
    )
