"""The controller promotes and rolls back on evidence, end to end on the real broker: the
demo's scenarios with synthetic traffic and simulated late ground truth."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from app.core.events import Action, Mode
from app.harness.processes import RolloutProcess
from app.harness.rollout_scenarios import DEMO, Scenario, reset, run_scenario
from app.harness.traffic import make_requests, send, send_feedback
from app.settings import Settings
from tests.builders import running_workers
from tests.integration.control import command, state

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def workers(
    kafka_bootstrap: str, model_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[RolloutProcess]]:
    logs = tmp_path_factory.mktemp("e2e-workers")
    with running_workers(
        kafka_bootstrap, ["e2e-1", "e2e-2"], logs, ROLLOUT_MODEL_STORE=str(model_store)
    ) as procs:
        yield procs


@pytest.fixture(scope="module")
async def from_v1(controller: RolloutProcess, settings_: Settings) -> AsyncIterator[None]:
    await reset(settings_)
    yield
    await reset(settings_)


SCENARIOS = {s.name: s for s in DEMO}


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_demo_scenario_decides_on_evidence(
    from_v1: None,
    workers: list[RolloutProcess],
    settings_: Settings,
    producer: AIOKafkaProducer,
    name: str,
) -> None:
    scenario: Scenario = SCENARIOS[name]
    result = await run_scenario(settings_, producer, scenario, timeout_s=150)
    assert result.deployed is not None and result.deployed.accepted, result.deployed
    final = result.final
    assert final is not None, f"no decision after {result.requests} requests"
    assert final.action == scenario.expect, final.reason
    assert final.decided_by == "controller" and final.accepted
    ev = final.evidence
    assert ev.samples["compared"] > 0
    assert {
        "disagreement",
        "score_shift_psi",
        "latency_p99_ms",
        "accuracy",
        "feedback_coverage",
    } <= set(ev.metrics)
    assert ev.tests["thresholds"]["max_disagreement"] == 0.2
    assert ev.tests["criterion"] in ("non_inferiority", "agreement")
    st = await state(settings_)
    if scenario.expect == "promote":
        assert st.production.version == scenario.version and st.candidate is None
        advances = [d for d in result.decisions if d.action == "advance"]
        weights = [d.to.weight for d in advances if d.to is not None]
        assert weights == sorted(weights) and len(set(weights)) == len(weights)
        assert weights[-1] == 1.0  # promoted after the last step
    elif scenario.expect in ("rollback", "retire"):
        assert st.candidate is None and st.production.version != scenario.version
        assert "guardrail" in final.reason or "failed" in final.reason
        if scenario.mode is Mode.CANARY:  # early: at the first step, not the end
            assert final.from_ is not None and final.from_.weight <= 0.10
    else:
        assert st.candidate is not None and st.candidate.version == scenario.version
        assert st.production.version != scenario.version  # never promoted by itself
    print(
        f"\n{name}: {final.action} after {ev.samples['compared']} compared "
        f"({result.requests} requests, {result.seconds:.1f}s): {final.reason}"
    )


async def test_automatic_replay_gate_judges_the_deployments_recent_requests_on_their_labels(
    from_v1: None,
    workers: list[RolloutProcess],
    settings_: Settings,
    producer: AIOKafkaProducer,
) -> None:
    """An automatic deploy behind ``replay_gate``: the last requests of ``fraud`` are read
    back from the shared requests topic, scored by both versions, joined with their ground
    truth from the feedback topic, and judged by the policy's per-class recall tests. Version
    3 (legit recall 53% against production's 97%) is refused on the labels even with the
    disagreement ceiling out of the way; version 2 is refused on too few labelled requests,
    with how many it had and would need, then let through on enough."""
    await reset(settings_)  # the manual scenario leaves its candidate waiting
    sent = make_requests(2000, seed=77, run_id=f"replay-{uuid.uuid4().hex[:6]}")
    await send(producer, sent)
    assert await send_feedback(producer, sent, audit_rate=1.0) == len(sent)
    before = await state(settings_)
    no_ceiling = {"replay_gate": 1500, "guardrails": {"max_disagreement": 0.9}}
    bad = await command(
        settings_, Action.DEPLOY, version="3", mode=Mode.AUTOMATIC, policy=no_ceiling
    )
    assert not bad.accepted, bad.reason
    assert "labels show it worse" in bad.reason and "recall:legit" in bad.reason, bad.reason
    gate = bad.evidence.tests["replay"]
    assert gate["replayed"] == 1500 and gate["labelled"] == 1500
    assert (await state(settings_)) == before
    few = await command(
        settings_, Action.DEPLOY, version="2", mode=Mode.AUTOMATIC, policy={"replay_gate": 60}
    )
    assert not few.accepted, few.reason
    assert "60 replayed requests" in few.reason and "would be needed" in few.reason, few.reason
    needed = few.evidence.tests["replay"]["requests_needed"]
    assert needed is not None and needed > 60, few.reason
    assert (await state(settings_)) == before
    good = await command(
        settings_, Action.DEPLOY, version="2", mode=Mode.AUTOMATIC, policy={"replay_gate": 1500}
    )
    assert good.accepted and "replay gate passed" in good.reason, good.reason
    assert "non-inferior within the margin on the labels" in good.reason
    assert good.evidence.tests["replay"]["labelled"] == 1500
    assert (await state(settings_)).production.version == "2"
