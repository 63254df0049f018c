"""A canary whose ground truth arrives only after its last step, through the real controller
and a real worker on the broker: it advances to 100% on samples, holds there saying it waits
for labels (however many agreeing pairs it has), and decides only once the labels come:
promote a good candidate (version 2), keep production against a worse one (version 3,
trained on corrupted labels)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from app.adapters.topic_reader import read_to_end
from app.controller.partition_snapshot import PartitionSnapshot, latest_values
from app.core.events import Action, DecisionEvent, Mode, decode
from app.core.promotion import criterion
from app.core.topics import Topic
from app.core.verdict import Criterion, WaitingFor
from app.harness.processes import RolloutProcess
from app.harness.traffic import SentRequest, make_requests, send, send_feedback
from app.settings import Settings
from tests.builders import running_workers
from tests.integration.control import command, state
from tests.integration.outputs import Tail

pytestmark = pytest.mark.kafka

# Two steps, so that the canary reaches 100% within seconds; the fraud deployment's own
# criterion (its policy's metric: expected cost) and guardrails otherwise.
FAST_STEPS: dict[str, Any] = {"canary_steps": [0.25, 1.0], "min_samples_per_step": 200}
HOLD_S = 8.0  # how long the canary is kept at 100% without labels
RATE = 400.0
CHUNK = 200


@pytest.fixture(scope="module")
def workers(
    kafka_bootstrap: str, model_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[RolloutProcess]]:
    logs = tmp_path_factory.mktemp("late-labels-workers")
    with running_workers(
        kafka_bootstrap, ["late-1"], logs, ROLLOUT_MODEL_STORE=str(model_store)
    ) as procs:
        yield procs


@dataclass
class Run:
    decisions: list[DecisionEvent] = field(default_factory=list)
    at_last_step: float | None = None  # monotonic time the canary reached 100%
    held: DecisionEvent | None = None  # a final decision taken while labels were withheld
    waiting: list[WaitingFor] = field(default_factory=list)  # read from the snapshots
    labels_sent_at: float | None = None
    final: DecisionEvent | None = None
    seconds: float = 0.0


async def waiting_for(settings: Settings) -> tuple[WaitingFor, Criterion, int, float]:
    """What the controller's latest analysis of the rollout says it waits for (from its
    snapshot on ``deployments.analysis``, judged by the same pure criterion)."""
    st = await state(settings)
    records = await read_to_end(settings, settings.topics.name(Topic.ANALYSIS))
    values = latest_values((r.key, r.value) for r in records)
    latest = None
    for partition in {r.partition for r in records}:
        snap = PartitionSnapshot.from_records(partition, values)
        if "fraud" in snap.rollouts:
            latest = snap.rollouts["fraud"].analysis
    assert latest is not None, "no analysis snapshot of the rollout"
    j = criterion(st, latest)
    return j.waiting_for, j.outcome, latest.step_audit_compared, latest.step_coverage


async def canary_with_late_labels(
    settings: Settings, producer: AIOKafkaProducer, version: str, policy: dict[str, Any]
) -> Run:
    events = await Tail(settings, settings.topics.name(Topic.EVENTS)).start()
    run = Run()
    started = time.monotonic()
    tag = f"late-{version}-{uuid.uuid4().hex[:6]}"
    try:
        d = await command(settings, Action.DEPLOY, version=version, mode=Mode.CANARY, policy=policy)
        assert d.accepted, d.reason
        withheld: list[SentRequest] = []
        previous: list[SentRequest] = []
        n = 0
        while time.monotonic() - started < 85 and run.final is None:
            batch = make_requests(CHUNK, seed=n, run_id=f"{tag}-{n}")
            n += 1
            await send(producer, batch, rate=RATE)
            if run.labels_sent_at is None:
                withheld += batch
            else:  # labels from now on: every audit request, a chunk late
                await send_feedback(producer, previous, audit_rate=1.0)
                previous = batch
            for record in await events.poll(timeout_ms=50):
                event = decode(DecisionEvent, record.value)
                if event.deployment != "fraud" or event.decided_by != "controller":
                    continue
                run.decisions.append(event)
                if event.action == "advance" and event.to is not None and event.to.weight == 1.0:
                    run.at_last_step = time.monotonic()
                elif event.action in ("promote", "rollback"):
                    if run.labels_sent_at is None:
                        run.held = event
                    run.final = event
            if run.at_last_step is not None and run.labels_sent_at is None:
                run.waiting.append((await waiting_for(settings))[0])
                if time.monotonic() - run.at_last_step >= HOLD_S:
                    # The labels come at last, for everything sent so far.
                    await send_feedback(producer, withheld, audit_rate=1.0)
                    run.labels_sent_at = time.monotonic()
        run.seconds = time.monotonic() - started
        return run
    finally:
        await events.stop()


def assert_held_for_labels(run: Run) -> None:
    assert run.at_last_step is not None, [d.reason for d in run.decisions]
    assert run.held is None, f"decided before any label: {run.held.reason}"  # type: ignore[union-attr]
    assert run.waiting and set(run.waiting) == {WaitingFor.LABELS}, run.waiting
    last_advance = [d for d in run.decisions if d.action == "advance"][-1]
    assert last_advance.evidence.tests["waiting_for"] == "labels"
    assert last_advance.evidence.samples["labelled"] == 0
    assert run.final is not None, f"no decision after the labels came ({run.seconds:.0f} s)"
    assert run.final.from_ is not None and run.final.from_.weight == 1.0
    assert run.final.evidence.samples["labelled"] > 0  # decided on labels


async def test_a_good_candidate_waits_at_100_percent_for_its_labels_then_is_promoted(
    clean: None, workers: list[RolloutProcess], settings_: Settings, producer: AIOKafkaProducer
) -> None:
    run = await canary_with_late_labels(settings_, producer, "2", FAST_STEPS)
    assert_held_for_labels(run)
    final = run.final
    assert final is not None and final.action == "promote", final and final.reason
    assert final.evidence.tests["criterion"] == "non_inferiority"  # on labels, not agreement
    st = await state(settings_)
    assert f"{st.policy.metric.kind.value} non-inferior" in final.reason  # the policy's metric
    assert st.production.version == "2" and st.candidate is None
    print(f"\nv2: promoted {run.seconds:.0f} s in: {final.reason}")


async def test_a_worse_candidate_reaches_100_percent_then_its_labels_keep_production(
    clean: None, workers: list[RolloutProcess], settings_: Settings, producer: AIOKafkaProducer
) -> None:
    # Version 3 disagrees with production on about half the requests, which the guardrails
    # catch at the first step (test_promotion_e2e). Here they are lifted, so that only the
    # labels can judge it: it must not pass on samples or agreement while they are late.
    policy = {**FAST_STEPS, "guardrails": {"max_disagreement": 1.0, "max_score_shift": 1e9}}
    run = await canary_with_late_labels(settings_, producer, "3", policy)
    assert_held_for_labels(run)
    final = run.final
    assert final is not None and final.action == "rollback", final and final.reason
    assert "worse than production" in final.reason
    st = await state(settings_)
    assert st.production.version == "1" and st.candidate is None
    print(f"\nv3: rolled back {run.seconds:.0f} s in: {final.reason}")
