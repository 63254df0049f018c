"""A worker's per-version metric series follow the models it holds, not every version it
ever served."""

from __future__ import annotations

import pytest

from app.adapters import metrics, worker_metrics


def _series(name: str) -> set[tuple[str, str]]:
    return {
        (s.labels["deployment"], s.labels["version"])
        for family in metrics.REGISTRY.collect()
        if family.name == name
        for s in family.samples
        if s.labels.get("deployment", "").startswith("series-")
    }


@pytest.mark.parametrize(
    ("held", "left"),
    [
        ({("series-a", "50"), ("series-a", "49")}, {("series-a", "50"), ("series-a", "49")}),
        ({("series-b", "1")}, set()),  # another deployment's: none of these held
        (set(), set()),
    ],
)
def test_series_of_versions_no_longer_held_are_dropped(
    held: set[tuple[str, str]], left: set[tuple[str, str]]
) -> None:
    for v in range(1, 51):
        worker_metrics.PREDICTIONS.labels("series-a", str(v), "production").inc()
        worker_metrics.INFERENCE_LATENCY.observe_n(0.001, 3, "series-a", str(v), "production")
    assert len(_series("rollout_predictions")) == 50
    worker_metrics.forget_versions(held)
    assert _series("rollout_predictions") == left
    assert _series("rollout_inference_latency_seconds") == left
