"""The post-promotion watch on the real broker: a promoted version is watched beside the
previous production (which the worker keeps loaded and scores on the audit sample); labels
showing it degrades roll it back automatically within the window, and a healthy one keeps
production when the window ends."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from app.core.events import (
    Action,
    Comparison,
    DecisionEvent,
    Feedback,
    Mode,
    decode,
    encode,
    now_ms,
)
from app.core.topics import Topic
from app.harness.processes import RolloutProcess
from app.harness.rollout_scenarios import HANDS_OFF
from app.harness.traffic import SentRequest, make_requests, send
from app.settings import Settings
from tests.builders import running_workers
from tests.integration.control import cli, command, state
from tests.integration.outputs import Tail

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def workers(
    kafka_bootstrap: str, model_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[RolloutProcess]]:
    logs = tmp_path_factory.mktemp("watch-workers")
    with running_workers(
        kafka_bootstrap, ["watch-1"], logs, ROLLOUT_MODEL_STORE=str(model_store)
    ) as procs:
        yield procs


async def promote_v2(settings: Settings, window_s: int) -> DecisionEvent:
    """Version 2 by canary at 100%, steered by hand (the rollout itself decides nothing), then
    promoted by the operator: the watch starts."""
    policy = {**HANDS_OFF, "watch": {"window_s": window_s, "alpha": 0.01}}
    d = await command(
        settings, Action.DEPLOY, version="2", mode=Mode.CANARY, weight=1.0, policy=policy
    )
    assert d.accepted, d.reason
    promoted = await command(settings, Action.PROMOTE)
    assert promoted.accepted, promoted.reason
    st = await state(settings)
    assert st.production.version == "2" and st.watch is not None
    assert st.watch.previous.version == "1" and st.watch.epoch == promoted.epoch
    assert st.watch.until - st.watch.started_at == window_s * 1000
    return promoted


async def drive(
    settings: Settings,
    producer: AIOKafkaProducer,
    run: str,
    *,
    label_as_previous: bool,
    timeout_s: float,
) -> tuple[DecisionEvent | None, int, int]:
    """Send traffic; label each watched request, a moment later, either with its true label
    or with the previous production's output (so every disagreement is the new production's
    loss). Returns the controller's watch decision (rollback or watch_ended), the watch
    comparisons seen and the labels sent."""
    compared = Tail(settings, settings.topics.name(Topic.COMPARISONS))
    events = Tail(settings, settings.topics.name(Topic.EVENTS))
    await compared.start()
    await events.start()
    truth: dict[str, str] = {}
    seen = labels = 0
    started = time.monotonic()
    try:
        chunk = 0
        while time.monotonic() - started < timeout_s:
            batch: list[SentRequest] = make_requests(200, seed=chunk, run_id=f"{run}-{chunk}")
            truth |= {s.request.request_id: s.label for s in batch if s.label is not None}
            await send(producer, batch, rate=400)
            chunk += 1
            pending = []
            for record in await compared.poll(timeout_ms=200):
                c = decode(Comparison, record.value)
                if not (c.watch and c.request_id.startswith(run)):
                    continue
                seen += 1
                assert c.production.version == "2" and c.candidate.version == "1" and c.audit
                old = c.candidate.output.label if c.candidate.output is not None else None
                label = old if label_as_previous and old is not None else truth[c.request_id]
                feedback = Feedback(
                    request_id=c.request_id, deployment="fraud", label=label, observed_at=now_ms()
                )
                pending.append(
                    await producer.send(
                        settings.topics.name(Topic.FEEDBACK), value=encode(feedback), key=b"fraud"
                    )
                )
            for p in pending:
                await p
            labels += len(pending)
            for record in await events.poll(timeout_ms=50):
                d = decode(DecisionEvent, record.value)
                if (
                    d.deployment == "fraud"
                    and d.decided_by == "controller"
                    and d.action
                    in (
                        "rollback",
                        "watch_ended",
                    )
                ):
                    return d, seen, labels
        return None, seen, labels
    finally:
        await compared.stop()
        await events.stop()


async def test_a_promotion_that_degrades_is_rolled_back_within_the_watch(
    clean: None,
    workers: list[RolloutProcess],
    settings_: Settings,
    producer: AIOKafkaProducer,
    kafka_bootstrap: str,
) -> None:
    promoted = await promote_v2(settings_, window_s=120)
    shown = cli(kafka_bootstrap, "status")
    assert "watching version 2" in shown.stdout, shown.stdout
    run = f"watch-bad-{uuid.uuid4().hex[:6]}"
    d, seen, labels = await drive(settings_, producer, run, label_as_previous=True, timeout_s=100)
    assert d is not None, f"no watch decision after {seen} watch comparisons, {labels} labels"
    assert d.action == "rollback" and d.accepted, d.reason
    assert "degraded after promotion" in d.reason and "version 1 is production again" in d.reason
    assert d.at - promoted.at < 120_000  # within the window
    watch = d.evidence.tests["watch"]
    assert (watch["production"], watch["previous"]) == ("2", "1")
    assert any(t["alarmed"] for t in watch["degradation"].values())
    assert d.evidence.samples["watch_labelled"] > 0
    st = await state(settings_)
    assert st.production.version == "1" and st.watch is None and st.candidate is None
    assert st.epoch == d.epoch


async def test_a_healthy_promotion_keeps_production_when_the_watch_ends(
    clean: None,
    workers: list[RolloutProcess],
    settings_: Settings,
    producer: AIOKafkaProducer,
) -> None:
    promoted = await promote_v2(settings_, window_s=20)
    run = f"watch-good-{uuid.uuid4().hex[:6]}"
    d, seen, labels = await drive(settings_, producer, run, label_as_previous=False, timeout_s=60)
    assert d is not None, f"no watch decision after {seen} watch comparisons, {labels} labels"
    assert d.action == "watch_ended" and d.accepted, d.reason
    assert d.at - promoted.at >= 20_000  # not before the window passed
    assert seen > 0 and d.evidence.samples["watch_labelled"] > 0
    watch = d.evidence.tests["watch"]
    assert not any(t["alarmed"] for t in watch["degradation"].values())
    st = await state(settings_)
    assert st.production.version == "2" and st.watch is None
