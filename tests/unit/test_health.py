"""What the health probes answer, by table (``app.core.health``)."""

from __future__ import annotations

import pytest

from app.core import health


@pytest.mark.parametrize(
    ("beat_at", "ok", "reason"),
    [
        (None, True, None),  # loading models: the loop has not started
        (95.0, True, None),
        (30.0, False, "has not gone round for 70s"),
    ],
)
def test_worker_liveness(beat_at: float | None, ok: bool, reason: str | None) -> None:
    probe = health.worker_liveness(now=100.0, beat_at=beat_at, stale_after_s=60.0)
    assert probe.ok is ok
    assert (reason is None and probe.reasons == []) or (reason and reason in probe.reasons[0])


@pytest.mark.parametrize(
    ("joined", "loaded", "lag", "reasons"),
    [
        (True, True, 0, []),
        (True, True, 1000, []),
        (False, True, 0, ["not in the consumer group"]),
        (True, False, 0, ["models not loaded"]),
        (True, True, 1001, ["lag 1001 records is above 1000"]),
        (False, False, 5000, ["models not loaded", "not in the consumer group", "lag 5000"]),
    ],
)
def test_worker_readiness(joined: bool, loaded: bool, lag: int, reasons: list[str]) -> None:
    probe = health.worker_readiness(joined=joined, models_loaded=loaded, lag=lag, max_lag=1000)
    assert probe.ok is (not reasons)
    assert len(probe.reasons) == len(reasons)
    for expected, got in zip(reasons, probe.reasons, strict=True):
        assert expected in got
    assert probe.to_json()["lag"] == lag


@pytest.mark.parametrize(
    ("loaded", "assigned", "restored", "reasons"),
    [
        (True, {0, 1}, {0, 1}, []),
        (True, set(), set(), []),  # a standby controller: the group gave it nothing
        (False, {0}, {0}, ["states not caught up"]),
        (True, None, set(), ["no partitions assigned"]),
        (True, {0, 2}, {0}, ["partitions [2] not restored"]),
    ],
)
def test_controller_readiness(
    loaded: bool, assigned: set[int] | None, restored: set[int], reasons: list[str]
) -> None:
    probe = health.controller_readiness(states_loaded=loaded, assigned=assigned, restored=restored)
    assert probe.ok is (not reasons)
    for expected, got in zip(reasons, probe.reasons, strict=True):
        assert expected in got
