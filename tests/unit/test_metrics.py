"""Prometheus metrics: the bulk histogram counts like prometheus-client's own, a scored batch
(real ONNX models, no Kafka) lands in the labelled counters, and states are exposed at scrape
time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Histogram, generate_latest

from app.adapters import controller_metrics, live_metrics, prometheus_base, worker_metrics
from app.adapters.model_store import LoadedModel, ModelStore
from app.core.events import DecisionEvent, DeploymentState, Mode, Phase, StateSummary, encode
from app.core.requests import RawRecord
from app.core.routes import DeploymentRoute
from app.core.scoring import score_batch
from app.core.topics import Topic
from app.harness.traffic import make_requests

STORE = ModelStore(Path("models"))


def records(n: int) -> list[RawRecord]:
    return [
        RawRecord(Topic.REQUESTS, i % 6, i, s.key, encode(s.request), 1_000)
        for i, s in enumerate(make_requests(n, seed=5, run_id="m"))
    ]


def canary(prod: LoadedModel, cand: LoadedModel, weight: float) -> dict[str, DeploymentRoute]:
    state = DeploymentState(
        deployment="fraud",
        epoch=5,
        mode=Mode.CANARY,
        phase=Phase.PROGRESSING,
        production=prod.ref,
        candidate=cand.ref,
        canary_weight=weight,
    )
    return {"fraud": DeploymentRoute(state, prod, cand)}


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_bulk_histogram_counts_as_prometheus_histogram_does() -> None:
    values = np.array([0.0, 0.00001, 0.00002, 0.001, 0.0011, 0.5, 7.0, 11.0, 0.00005])
    theirs_registry, ours_registry = CollectorRegistry(), CollectorRegistry()
    theirs = Histogram(
        "lat_seconds", "x", buckets=prometheus_base.LATENCY_BUCKETS, registry=theirs_registry
    )
    for v in values:
        theirs.observe(float(v))
    ours = prometheus_base.BulkHistogram(
        "lat_seconds", "x", [], prometheus_base.LATENCY_BUCKETS, ours_registry
    )
    ours.observe_many(values[:4])
    ours.observe_many(values[4:])
    for le in [*(f"{b}" for b in prometheus_base.LATENCY_BUCKETS), "+Inf"]:
        theirs_value = theirs_registry.get_sample_value("lat_seconds_bucket", {"le": le})
        ours_value = ours_registry.get_sample_value(
            "lat_seconds_bucket", {"le": f"{float(le):g}" if le != "+Inf" else le}
        )
        assert ours_value == theirs_value, le
    assert ours_registry.get_sample_value("lat_seconds_count") == len(values)
    assert ours_registry.get_sample_value("lat_seconds_sum") == pytest.approx(values.sum())


def test_observe_n_is_n_observations_of_one_value() -> None:
    registry = CollectorRegistry()
    h = prometheus_base.BulkHistogram("per_row_seconds", "x", ["role"], (0.001, 0.01), registry)
    h.observe_n(0.005, 40, "candidate")
    h.observe_n(0.005, 0, "candidate")  # nothing
    get = registry.get_sample_value
    assert get("per_row_seconds_bucket", {"le": "0.001", "role": "candidate"}) == 0
    assert get("per_row_seconds_bucket", {"le": "0.01", "role": "candidate"}) == 40
    assert get("per_row_seconds_sum", {"role": "candidate"}) == pytest.approx(0.2)


def test_a_scored_canary_batch_is_counted_by_deployment_version_role_and_code() -> None:
    v1 = STORE.load(STORE.ref("fraud", "1"))
    v2: LoadedModel = STORE.load(STORE.ref("fraud", "2"))
    bad = [RawRecord(Topic.REQUESTS, 0, 900, None, b"{nope")]
    batch = records(400) + bad
    result = score_batch(batch, canary(v1, v2, 0.5), max_request_bytes=65536)
    before = {
        "v1": sample(
            "rollout_predictions_total", deployment="fraud", version="1", role="production"
        ),
        "v2": sample(
            "rollout_predictions_total", deployment="fraud", version="2", role="candidate"
        ),
        "dlq": sample("rollout_dead_letters_total", deployment="", code="invalid_json"),
        "req": sample("rollout_requests_total", deployment="fraud"),
        "unnamed": sample("rollout_requests_total", deployment=""),
        "lat": sample(
            "rollout_inference_latency_seconds_count",
            deployment="fraud",
            version="2",
            role="candidate",
        ),
        "e2e": sample("rollout_end_to_end_latency_seconds_count"),
    }
    sent_ms = [1_000] * len(batch)
    worker_metrics.observe_batch(result, sent_ms, committed_ms=1_250)
    served_v2 = result.served[("fraud", "2", "candidate")]
    assert 150 < served_v2 < 250  # about half the entities
    assert (
        sample("rollout_predictions_total", deployment="fraud", version="2", role="candidate")
        - before["v2"]
        == served_v2
    )
    assert (
        sample("rollout_predictions_total", deployment="fraud", version="1", role="production")
        - before["v1"]
        == 400 - served_v2
    )
    assert (
        sample("rollout_dead_letters_total", deployment="", code="invalid_json") - before["dlq"]
        == 1
    )
    assert sample("rollout_requests_total", deployment="fraud") - before["req"] == len(batch) - 1
    assert sample("rollout_requests_total", deployment="") - before["unnamed"] == 1
    assert (
        sample(
            "rollout_inference_latency_seconds_count",
            deployment="fraud",
            version="2",
            role="candidate",
        )
        - before["lat"]
        == served_v2
    )
    # 250 ms from the Kafka timestamp to the commit: in the (0.1, 0.25] bucket, not below.
    assert sample("rollout_end_to_end_latency_seconds_count") - before["e2e"] == len(batch)
    assert sample("rollout_end_to_end_latency_seconds_bucket", le="0.1") < sample(
        "rollout_end_to_end_latency_seconds_bucket", le="0.25"
    )


def test_states_and_decisions_are_exposed() -> None:
    v1 = STORE.load(STORE.ref("fraud", "1"))
    v2 = STORE.load(STORE.ref("fraud", "2"))
    state = DeploymentState(
        deployment="metrics-test",
        epoch=7,
        mode=Mode.CANARY,
        phase=Phase.PAUSED,
        production=v1.ref,
        candidate=v2.ref,
        canary_weight=0.25,
    )
    live_metrics.watch_states(lambda: {"metrics-test": state})
    decision = DecisionEvent(
        deployment="metrics-test",
        epoch=7,
        action="pause",
        command_id="c1",
        accepted=True,
        reason="r",
        decided_by="dashboard",
        to=StateSummary(mode=Mode.CANARY, phase=Phase.PAUSED, weight=0.25),
        at=1,
    )
    controller_metrics.observe_decision(decision)
    text = generate_latest(REGISTRY).decode()
    assert 'rollout_deployment_epoch{deployment="metrics-test"} 7.0' in text
    assert 'rollout_deployment_canary_weight_ratio{deployment="metrics-test"} 0.25' in text
    assert 'rollout_deployment_phase{deployment="metrics-test",phase="paused"} 1.0' in text
    assert 'rollout_deployment_mode{deployment="metrics-test",mode="shadow"} 0.0' in text
    assert (
        sample(
            "rollout_decisions_total",
            deployment="metrics-test",
            action="pause",
            accepted="true",
            decided_by="dashboard",
        )
        == 1
    )
