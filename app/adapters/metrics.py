"""Every Prometheus metric of Rollout, defined in one place, and the few calls that record them.

Workers record once per committed batch (``observe_batch``, using counts the batch result
already holds) and their lag (``observe_lag``); the controller records each decision it
commits (``observe_decision``). Deployment state (epoch, mode, phase, weight) and the
controller's live analysis are read at scrape time from the objects that hold them
(``watch_states``, ``watch_analyses``), so they are never stale and cost nothing between
scrapes. Latency histograms take a whole batch at once (``BulkHistogram``): per-row
observations would cost the hot path a Python call per record.

Names follow Prometheus conventions: ``_total`` counters, base units (seconds, ratios 0..1).
``rendered()`` is what ``/metrics`` serves (see ``app.adapters.http_server``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from app.core.events import DecisionEvent, DeploymentState, Mode, Phase
from app.core.topics import Topic

CONTENT_TYPE = CONTENT_TYPE_LATEST
# No ``_created`` series: they would double the exposition for nothing.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Seconds: 10 µs .. 10 s, for inference per row (tens of µs) and end-to-end latency.
LATENCY_BUCKETS = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)


class BulkHistogram(Collector):
    """A Prometheus histogram fed many observations per call (numpy), by label values."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._edges = np.asarray(buckets, dtype=np.float64)
        self._series: dict[tuple[str, ...], tuple[np.ndarray, list[float]]] = {}
        self._lock = threading.Lock()  # a scrape may run on another thread
        if registry is not None:
            registry.register(self)

    def _slot(self, labels: tuple[str, ...]) -> tuple[np.ndarray, list[float]]:
        slot = self._series.get(labels)
        if slot is None:
            slot = (np.zeros(len(self._edges) + 1, dtype=np.int64), [0.0])
            self._series[labels] = slot
        return slot

    def observe_many(self, values: np.ndarray, *labels: str) -> None:
        if not len(values):
            return
        # Bucket i counts values <= edges[i]; the last slot is +Inf.
        index = np.searchsorted(self._edges, values, side="left")
        counts = np.bincount(index, minlength=len(self._edges) + 1)
        with self._lock:
            slot = self._slot(labels)
            slot[0][:] += counts
            slot[1][0] += float(values.sum())

    def observe_n(self, value: float, n: int, *labels: str) -> None:
        """``n`` observations of ``value`` (rows of one model call share its per-row time)."""
        if n <= 0:
            return
        index = int(np.searchsorted(self._edges, value, side="left"))
        with self._lock:
            slot = self._slot(labels)
            slot[0][index] += n
            slot[1][0] += value * n

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self._lock:
            series = [(k, c.copy(), s[0]) for k, (c, s) in self._series.items()]
        les = [f"{edge:g}" for edge in self._edges] + ["+Inf"]
        for labels, counts, total in series:
            cumulative = np.cumsum(counts).tolist()
            family.add_metric(list(labels), list(zip(les, cumulative, strict=True)), total)
        yield family

    def describe(self) -> Iterable[Metric]:
        return []


# -- the worker's data plane ------------------------------------------------------------------

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

# -- artifacts (workers and the controller: app.adapters.artifact_cache) ------------------------

ARTIFACTS_FETCHED = Counter(
    "rollout_artifacts_fetched_total",
    f"Model versions fetched from {Topic.ARTIFACTS}, verified and installed in the local store.",
    ["deployment"],
)
ARTIFACTS_REJECTED = Counter(
    "rollout_artifacts_rejected_total",
    "Artifacts refused (tampered, incomplete, missing, or not the version the state names):"
    " never installed nor served (logged each).",
    ["deployment"],
)
MODELS_LOADED = Gauge(
    "rollout_models_loaded", "Model sessions a worker holds (production, candidate, rollback)."
)

# -- the control plane ------------------------------------------------------------------------

DECISIONS = Counter(
    "rollout_decisions_total",
    "Decisions committed by the controller, by action, outcome and who decided.",
    ["deployment", "action", "accepted", "decided_by"],
)

ANALYST_SKIPPED = Counter(
    "rollout_analyst_skipped_records_total",
    "Evidence records the controller's analyst could not use and skipped (logged each).",
    ["topic", "reason"],
)


FEEDBACK_MISROUTED = Counter(
    "rollout_feedback_misrouted_total",
    "Feedback records read on a partition that is not their deployment's (keyed by something"
    " else): the analyst re-keys each to its deployment's partition.",
)


def observe_misrouted_feedback() -> None:
    FEEDBACK_MISROUTED.inc()


def observe_skipped(topic: str, reason: str) -> None:
    ANALYST_SKIPPED.labels(topic, reason).inc()


class _BatchCounts(Protocol):
    """What ``observe_batch`` reads of ``app.core.scoring.BatchResult``."""

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


def observe_abort() -> None:
    TRANSACTIONS_ABORTED.inc()


def observe_lag(records: int) -> None:
    CONSUMER_LAG.set(records)


def observe_decision(decision: DecisionEvent) -> None:
    DECISIONS.labels(
        decision.deployment,
        decision.action,
        "true" if decision.accepted else "false",
        decision.decided_by,
    ).inc()


# -- read at scrape time --------------------------------------------------------------------


class AnalysisSource(Protocol):
    """Live per-deployment evidence: ``deployment -> {"samples": {...}, "metrics": {...},
    "tests": {name: {"log_evidence", "threshold", ...}}}`` (see ``app.core.rollout_view``)."""

    def __call__(self) -> Mapping[str, Mapping[str, Any]]: ...


class _LiveCollector(Collector):
    def __init__(self) -> None:
        self.states: list[Callable[[], Mapping[str, DeploymentState]]] = []
        self.analyses: list[AnalysisSource] = []

    def collect(self) -> Iterator[Metric]:
        states: dict[str, DeploymentState] = {}
        for source in self.states:
            states.update(source())
        yield from state_families(states)
        analyses: dict[str, Mapping[str, Any]] = {}
        for analysis_source in self.analyses:
            analyses.update(analysis_source())
        yield from analysis_families(analyses)

    def describe(self) -> Iterable[Metric]:
        return []


def state_families(states: Mapping[str, DeploymentState]) -> Iterator[Metric]:
    epoch = GaugeMetricFamily(
        "rollout_deployment_epoch", "Epoch of the deployment's latest state.", labels=["deployment"]
    )
    weight = GaugeMetricFamily(
        "rollout_deployment_canary_weight_ratio",
        "Share of entities the candidate serves (canary).",
        labels=["deployment"],
    )
    sample = GaugeMetricFamily(
        "rollout_deployment_shadow_sample_ratio",
        "Share of requests the candidate scores in shadow.",
        labels=["deployment"],
    )
    mode = GaugeMetricFamily(
        "rollout_deployment_mode", "1 for the deployment's mode.", labels=["deployment", "mode"]
    )
    phase = GaugeMetricFamily(
        "rollout_deployment_phase", "1 for the deployment's phase.", labels=["deployment", "phase"]
    )
    info = GaugeMetricFamily(
        "rollout_deployment_info",
        "The deployment's production and candidate versions.",
        labels=["deployment", "production", "candidate"],
    )
    for name, st in sorted(states.items()):
        epoch.add_metric([name], st.epoch)
        weight.add_metric([name], st.canary_weight)
        sample.add_metric([name], st.shadow_sample_rate)
        for m in Mode:
            mode.add_metric([name, m.value], 1.0 if st.mode is m else 0.0)
        for p in Phase:
            phase.add_metric([name, p.value], 1.0 if st.phase is p else 0.0)
        candidate = st.candidate.version if st.candidate else ""
        info.add_metric([name, st.production.version, candidate], 1.0)
    yield from (epoch, weight, sample, mode, phase, info)


def analysis_families(analyses: Mapping[str, Mapping[str, Any]]) -> Iterator[Metric]:
    samples = GaugeMetricFamily(
        "rollout_analysis_samples",
        "Evidence counts of the rollout in progress (compared, paired, labelled ...).",
        labels=["deployment", "kind"],
    )
    values = GaugeMetricFamily(
        "rollout_analysis_value",
        "Candidate-vs-production figures of the rollout in progress (disagreement, "
        "score_shift_psi, feedback_coverage, shed_fraction, accuracy_production ...).",
        labels=["deployment", "figure"],
    )
    evidence = GaugeMetricFamily(
        "rollout_analysis_test_log_evidence",
        "Log-wealth of each sequential test (rejects its null at the threshold).",
        labels=["deployment", "test"],
    )
    threshold = GaugeMetricFamily(
        "rollout_analysis_test_threshold",
        "Log-wealth threshold, log(1/alpha), of each sequential test.",
        labels=["deployment", "test"],
    )
    for name, a in sorted(analyses.items()):
        for kind, n in a.get("samples", {}).items():
            samples.add_metric([name, kind], float(n))
        for figure, value in _flat(a.get("metrics", {})):
            values.add_metric([name, figure], value)
        for test, summary in a.get("tests", {}).items():
            evidence.add_metric([name, test], float(summary["log_evidence"]))
            threshold.add_metric([name, test], float(summary["threshold"]))
    yield from (samples, values, evidence, threshold)


def _flat(metrics: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            yield from _flat(value, f"{prefix}{key}_")
        elif isinstance(value, int | float) and value == value:  # skip None and NaN
            yield f"{prefix}{key}", float(value)


_LIVE = _LiveCollector()
REGISTRY.register(_LIVE)


def watch_states(source: Callable[[], Mapping[str, DeploymentState]]) -> None:
    """Expose the states ``source`` returns (e.g. a ``StateView``'s) at every scrape."""
    _LIVE.states.append(source)


def watch_analyses(source: AnalysisSource) -> None:
    _LIVE.analyses.append(source)


def rendered() -> bytes:
    """The text exposition of every metric of this process."""
    return generate_latest(REGISTRY)


__all__ = [
    "CONTENT_TYPE",
    "BulkHistogram",
    "observe_batch",
    "observe_decision",
    "observe_lag",
    "rendered",
    "watch_analyses",
    "watch_states",
]
