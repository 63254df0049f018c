"""Two controllers: exactly one acts for a deployment; killing it mid-canary hands the rollout
to the other within seconds, from the same step, with no decision repeated or lost."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from app.adapters.partitioning import partition_for
from app.core.events import Mode
from app.harness.processes import CONTROLLER_READY, RolloutProcess
from app.harness.rollout_scenarios import Scenario, ScenarioResult, reset, run_scenario
from app.settings import Settings
from tests.builders import controller_process, running_workers

pytestmark = pytest.mark.kafka


@pytest.fixture
def controllers(
    kafka_bootstrap: str, model_store: Path, tmp_path: Path
) -> Iterator[list[RolloutProcess]]:
    procs = [
        controller_process(
            kafka_bootstrap,
            tmp_path,
            name,
            ROLLOUT_MODEL_STORE=str(model_store),
            ROLLOUT_HOME=str(tmp_path / name),
        )
        for name in ("a", "b")
    ]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.wait_for(CONTROLLER_READY)
        yield procs
    finally:
        for p in procs:
            p.terminate()


@pytest.fixture
def workers(
    kafka_bootstrap: str, model_store: Path, tmp_path: Path
) -> Iterator[list[RolloutProcess]]:
    with running_workers(
        kafka_bootstrap, ["fo-1", "fo-2"], tmp_path, ROLLOUT_MODEL_STORE=str(model_store)
    ) as procs:
        yield procs


def acting_for(proc: RolloutProcess) -> set[int]:
    """The control partitions a controller said it acts for, last time it said so."""
    said = re.findall(r"acting for control partitions \[([0-9, ]*)\]", proc.log())
    return {int(p) for p in said[-1].split(",") if p.strip()} if said else set()


def wait_for_owner(
    controllers: list[RolloutProcess], partition: int, timeout_s: float
) -> RolloutProcess:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        owners = [c for c in controllers if c.alive() and partition in acting_for(c)]
        if len(owners) == 1:
            return owners[0]
        time.sleep(0.2)
    raise AssertionError(f"no single owner of partition {partition}")


async def test_killing_the_active_controller_mid_canary_hands_over_the_rollout(
    controllers: list[RolloutProcess],
    workers: list[RolloutProcess],
    settings_: Settings,
    producer: AIOKafkaProducer,
) -> None:
    await reset(settings_)
    partition = partition_for("fraud", 3)
    active = wait_for_owner(controllers, partition, 60)
    standby = next(c for c in controllers if c is not active)
    killed_at: list[float] = []

    def kill_after_first_step(result: ScenarioResult) -> None:
        if not killed_at and any(d.action == "advance" for d in result.decisions):
            active.kill()
            killed_at.append(time.monotonic())

    scenario = Scenario("failover", "2", Mode.CANARY, "promote", {"min_samples_per_step": 300})
    result = await run_scenario(
        settings_, producer, scenario, timeout_s=150, progress=kill_after_first_step
    )
    assert killed_at, "the rollout ended before the first step"
    assert result.ok, [d.reason for d in result.decisions]
    assert partition in acting_for(standby)
    taken_over = [d for d in result.decisions if d.at / 1000 > 0]  # all, in order
    epochs = [d.epoch for d in taken_over]
    assert epochs == sorted(set(epochs)), f"a decision was repeated: {epochs}"
    assert epochs == list(range(epochs[0], epochs[0] + len(epochs))), (
        f"a decision was lost: {epochs}"
    )
    weights = [d.to.weight for d in result.decisions if d.action == "advance" and d.to]
    assert weights == sorted(set(weights)), f"a step was repeated: {weights}"
    assert weights == [0.1, 0.25, 0.5, 1.0]
    # The first decision after the kill came from the standby, within seconds.
    kill_wall = time.time() - (time.monotonic() - killed_at[0])
    after = [d for d in result.decisions if d.at / 1000 >= kill_wall]
    assert after, "no decision after the kill"
    handover_s = after[0].at / 1000 - kill_wall
    print(
        f"\nfail-over: next decision {handover_s:.1f}s after kill -9 of the active controller "
        f"({after[0].action} to {after[0].to.weight if after[0].to else '-'})"
    )
    assert handover_s < 30
