"""Metrics read at scrape time from the objects that hold them: deployment states and the
controller's live analyses.

Deployment state (epoch, mode, phase, weight, versions) and each rollout's evidence (samples,
figures, test log-evidence and thresholds) are collected at every scrape from the sources a
process registers (``watch_states``, ``watch_analyses``), so they are never stale and cost
nothing between scrapes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app.core.events import DeploymentState, Mode, Phase


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
