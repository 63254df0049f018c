"""``rollout fleet`` small, on the real broker, as CI runs it: 10 deployments of mixed kinds
and modes, 40 versions published through Kafka alone over a minute (with broken, tampered,
incompatible and slow ones among them) after 15 s of traffic (the automatic deployments'
replay gate judges on it), traffic with ground truth, a real controller and worker deciding
with nobody at the keyboard. Asserts the invariants, never
the timings: nothing lost or duplicated, every invalid version rejected without serving a
request, every version decided."""

from __future__ import annotations

from pathlib import Path

from app.harness.fleet import FleetConfig, run_fleet
from app.harness.fleet_report import markdown, write
from app.harness.fleet_tally import Outcome
from app.settings import Settings


async def test_a_small_fleet_decides_every_version_and_loses_no_request(
    settings_: Settings, tmp_path: Path
) -> None:
    config = FleetConfig(
        deployments=10,
        versions=40,
        minutes=1.0,
        rate=400.0,
        workers=1,
        horizon_s=20,
        warmup_s=15.0,
        replay_gate=300,
        drain_s=90.0,
        out=tmp_path,
        name="fleet-ci",
    )
    report = await run_fleet(settings_.model_copy(update={"home": tmp_path}), config, print)
    write(report, tmp_path, config.name)
    print(markdown(report))
    s, r = report.summary, report.requests
    assert s.versions == 40
    assert r.sent > 10_000 and report.send_failures == 0
    assert (r.lost, r.duplicated) == (0, 0)
    assert s.invalid > 0, "the seeded mix publishes broken, tampered and incompatible versions"
    assert s.invalid_rejected_unserved == s.invalid
    assert report.invalid_served == []
    assert s.outcomes["in_flight"] == 0
    assert s.outcomes["promoted"] > 0 and s.outcomes["rolled_back"] > 0
    # automatic mode promotes only through its replay gate (judged on ground truth)
    automatic = [f for f in report.fates if f.published.mode == "automatic"]
    assert any(f.outcome is Outcome.PROMOTED or "replay gate" in f.reason for f in automatic)
    for f in automatic:
        if f.outcome is Outcome.PROMOTED:
            assert "replay gate passed" in f.reason, f.reason
