"""The worker's metrics: its data plane per committed batch, its lag, the models it holds.

A worker records once per committed batch (``observe_batch``, from the counts the batch
result already holds: requests, predictions, dead letters, comparisons, candidate errors,
per-row inference time, end-to-end latency, shadow sampling and shedding), its lag
(``observe_lag``) and aborted transactions (``observe_abort``); its per-version series
follow the models it holds (``forget_versions``). ``/metrics`` serves them
(``app.adapters.metrics``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
from prometheus_client import Counter, Gauge, Histogram

from app.adapters.prometheus_base import BATCH_BUCKETS, LATENCY_BUCKETS, BulkHistogram
from app.core.topics import Topic

REQUESTS = Counter(
    "rollout_requests_total",
    f"Records consumed from {Topic.REQUESTS}, by the deployment they name (empty: none this"
    " worker serves, or unreadable).",
    ["deployment"],
)
PREDICTIONS = Counter(
    "rollout_predictions_total",
    "Committed predictions, by deployment, model version and role.",
    ["deployment", "version", "role"],
)
DEAD_LETTERS = Counter(
    "rollout_dead_letters_total",
    "Records dead-lettered, by deployment (empty before one is known) and reason code.",
    ["deployment", "code"],
)
COMPARISONS = Counter("rollout_comparisons_total", "Paired comparisons published.")
CANDIDATE_ERRORS = Counter(
    "rollout_candidate_errors_total", "Requests the candidate failed on (production served)."
)
BATCHES = Counter("rollout_batches_total", "Micro-batches committed.")
TRANSACTIONS_ABORTED = Counter(
    "rollout_transactions_aborted_total",
    "Worker transactions aborted (the batch is read again; a broker restart, a timeout).",
)
BATCH_SIZE = Histogram(
    "rollout_batch_size_records", "Records per committed micro-batch.", buckets=BATCH_BUCKETS
)
INFERENCE_LATENCY = BulkHistogram(
    "rollout_inference_latency_seconds",
    "Model run time per row (a call's time over its rows), by deployment, version and role.",
    ["deployment", "version", "role"],
    LATENCY_BUCKETS,
)
END_TO_END_LATENCY = BulkHistogram(
    "rollout_end_to_end_latency_seconds",
    "From a request's Kafka timestamp to the commit of its batch's outputs.",
    [],
    LATENCY_BUCKETS,
)
CONSUMER_LAG = Gauge(
    "rollout_consumer_lag_records", "Records behind the log end over the worker's partitions."
)
SHADOW_SAMPLED = Counter(
    "rollout_shadow_sampled_total",
    "Requests sampled for shadow (or manual) comparison.",
    ["deployment"],
)
SHADOW_SHED = Counter(
    "rollout_shadow_shed_total",
    "Sampled requests whose shadow scoring was shed under backlog.",
    ["deployment"],
)
SHADOW_SHED_RATIO = Gauge(
    "rollout_shadow_shed_ratio",
    "Share of shadow-sampled requests shed in the last batch that sampled any.",
    ["deployment"],
)
MODELS_LOADED = Gauge(
    "rollout_models_loaded", "Model sessions a worker holds (production, candidate, rollback)."
)


class _BatchCounts(Protocol):
    """What ``observe_batch`` reads of ``app.core.batch_result.BatchResult``."""

    predictions: int
    comparisons: int
    dead_letters: int
    candidate_errors: int
    shadow_sampled: dict[str, int]
    shadow_shed: dict[str, int]
    requests: dict[str, int]
    served: dict[tuple[str, str, str], int]
    rejected: dict[tuple[str, str], int]
    model_calls: list[tuple[str, str, str, int, float]]


def observe_batch(result: _BatchCounts, timestamps_ms: Sequence[int], committed_ms: int) -> None:
    """One committed batch: its records' Kafka timestamps, and when its outputs committed."""
    named = 0
    for deployment, n in result.requests.items():
        REQUESTS.labels(deployment).inc(n)
        named += n
    if len(timestamps_ms) > named:
        REQUESTS.labels("").inc(len(timestamps_ms) - named)
    BATCHES.inc()
    BATCH_SIZE.observe(len(timestamps_ms))
    _observe_outputs(result)
    if len(timestamps_ms):
        ts = np.asarray(timestamps_ms, dtype=np.float64)
        END_TO_END_LATENCY.observe_many(np.maximum(committed_ms - ts, 0.0) / 1000.0)
    _observe_shadow(result)


def _observe_outputs(result: _BatchCounts) -> None:
    """Predictions, dead letters, comparisons, candidate errors and model calls of a batch."""
    for (deployment, version, role), n in result.served.items():
        PREDICTIONS.labels(deployment, version, role).inc(n)
    for (deployment, code), n in result.rejected.items():
        DEAD_LETTERS.labels(deployment, code).inc(n)
    if result.comparisons:
        COMPARISONS.inc(result.comparisons)
    if result.candidate_errors:
        CANDIDATE_ERRORS.inc(result.candidate_errors)
    for deployment, version, role, rows, per_row_ms in result.model_calls:
        INFERENCE_LATENCY.observe_n(per_row_ms / 1000.0, rows, deployment, version, role)


def _observe_shadow(result: _BatchCounts) -> None:
    for deployment, sampled in result.shadow_sampled.items():
        shed = result.shadow_shed.get(deployment, 0)
        SHADOW_SAMPLED.labels(deployment).inc(sampled)
        SHADOW_SHED.labels(deployment).inc(shed)
        if sampled:
            SHADOW_SHED_RATIO.labels(deployment).set(shed / sampled)


def forget_versions(held: set[tuple[str, str]]) -> None:
    """Drop the per-version series (predictions, inference latency) of every (deployment,
    version) not in ``held``: a worker's label sets follow the models it holds, not every
    version it ever served (a fleet publishes a thousand versions a day)."""
    for labels in list(PREDICTIONS._metrics):  # (deployment, version, role)
        if (labels[0], labels[1]) not in held:
            PREDICTIONS.remove(*labels)
    INFERENCE_LATENCY.forget(lambda labels: (labels[0], labels[1]) not in held)


def observe_abort() -> None:
    TRANSACTIONS_ABORTED.inc()


def observe_lag(records: int) -> None:
    CONSUMER_LAG.set(records)
