"""Fault scenarios under continuous load of known request ids (``app.chaos.fault_scenarios``, the
same code as ``rollout chaos``): after each, every valid request has exactly one committed
prediction and every malformed record exactly one dead letter with a specific code.

The controller killed mid-canary is ``test_failover.py`` (the chaos scenario of the same name
runs in ``rollout chaos``). Select these with ``-m chaos``."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.chaos.fault_scenarios import SCENARIOS, ChaosEnv, ChaosResult
from app.settings import Settings

pytestmark = [pytest.mark.kafka, pytest.mark.chaos]


@pytest.fixture
def env(kafka_settings: Settings, tmp_path: Path) -> ChaosEnv:
    return ChaosEnv(kafka_settings, tmp_path, rate=300.0, seed=6, kills=10)


def _assert_kept(result: ChaosResult) -> None:
    t = result.tally
    print(
        f"\n{result.scenario}: {t.sent} sent, {result.faults} faults, lost {t.lost}, "
        f"duplicated {t.duplicated}, dead letters {t.dead_letters}/{t.invalid_sent}, "
        f"recovered in {result.recover_s}s, {result.seconds:.0f}s in all"
    )
    assert t.valid_sent > 500 and t.invalid_sent > 20, "the load did not run"
    assert result.faults > 0
    assert t.lost == 0, f"lost {t.lost}"
    assert t.duplicated == 0, f"duplicated {t.duplicated}"
    assert t.wrong_kind == 0
    assert t.dead_letters == t.invalid_sent
    assert not result.problems, result.problems


@pytest.mark.parametrize("name", ["worker-kill", "rebalance", "broker-restart", "model-file"])
async def test_scenario_keeps_the_promise(name: str, env: ChaosEnv) -> None:
    result = await SCENARIOS[name](env)
    _assert_kept(result)
    if name == "worker-kill":
        assert result.faults == 10
