"""The controller promotes and rolls back on evidence, end to end on the real broker: the
demo's scenarios with synthetic traffic and simulated late ground truth."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from app.core.events import Action, Mode
from app.harness.processes import RolloutProcess
from app.harness.rollout_scenarios import DEMO, Scenario, reset, run_scenario
from app.harness.traffic import make_requests, send
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


async def test_automatic_replay_gate_lets_a_good_version_through_and_stops_a_bad_one(
    from_v1: None,
    workers: list[RolloutProcess],
    settings_: Settings,
    producer: AIOKafkaProducer,
) -> None:
    await reset(settings_)  # the manual scenario leaves its candidate waiting
    await send(producer, make_requests(2000, seed=77, run_id="replay-traffic"))
    before = await state(settings_)
    bad = await command(
        settings_, Action.DEPLOY, version="3", mode=Mode.AUTOMATIC, policy={"replay_gate": 1000}
    )
    assert not bad.accepted and "replay gate failed" in bad.reason, bad.reason
    assert bad.evidence.samples["paired"] >= 900
    assert (await state(settings_)) == before
    good = await command(
        settings_, Action.DEPLOY, version="2", mode=Mode.AUTOMATIC, policy={"replay_gate": 1000}
    )
    assert good.accepted and "replay gate passed" in good.reason, good.reason
    assert good.evidence.metrics["disagreement"] < 0.2
    assert (await state(settings_)).production.version == "2"
