"""A ``RolloutAnalysis`` as JSON (the rollout's record of the analyst's snapshot) and back.

``to_json`` writes every field of the analysis (its pending requests as the store's meta;
their chunks are records of their own, ``app.core.pending``) with ``SNAPSHOT_VERSION``;
``from_json`` rebuilds the analysis from it, or raises ``OldSnapshot`` for a snapshot an
earlier controller wrote. ``RolloutAnalysis.to_json`` / ``from_json`` call these.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from app.core.arm_stats import ArmStats
from app.core.pending import PendingStore
from app.core.policy import Metric
from app.core.sequential import BettingTest, StakedTest

if TYPE_CHECKING:
    from app.core.analysis import RolloutAnalysis

SNAPSHOT_VERSION = 5  # 5: pending requests in a compact store, persisted per chunk


class OldSnapshot(ValueError):
    """A snapshot written by an earlier controller, without the evidence this one keeps."""


# The fields written as they are.
SIMPLE_FIELDS = (
    "deployment",
    "candidate",
    "start_epoch",
    "alpha",
    "margin",
    "disagreement_ceiling",
    "error_ceiling",
    "kind",
    "error_cap",
    "audit_rate",
    "latency_ratio_limit",
    "latency_slack_ms",
    "step_epoch",
    "step_samples",
    "step_started_at",
    "clock",
    "paired",
    "disagreements",
    "compared",
    "labelled",
    "audit_compared",
    "audit_labelled",
    "audit_correct_production",
    "audit_correct_candidate",
    "step_audit_compared",
    "step_audit_labelled",
    "step_paired",
    "step_disagreements",
    "step_open",
    "shed",
    "shed_sampled",
    "invalid_scores",
    "horizon_ms",
    "promote_on_agreement",
    "tested",
    "tested_labelled",
    "open_in_test",
    "expired_pending",
    "dropped_pending",
    "pending_limit",
)
BETTING_TESTS = ("agree_margin", "disagree_over", "errors_over", "errors_under", "latency_under")


def to_json(analysis: RolloutAnalysis) -> dict[str, Any]:
    """The analysis as JSON (its pending requests' chunks are written apart)."""
    return {
        "version": SNAPSHOT_VERSION,
        **{k: getattr(analysis, k) for k in SIMPLE_FIELDS},
        "metric": analysis.metric.model_dump(mode="json"),
        "moments": analysis.moments,
        "worse_seen": analysis.worse_seen,
        "value_edges": analysis.value_edges,
        "value_warmup": analysis.value_warmup,
        "production": vars(analysis.production),
        "candidate_arm": vars(analysis.candidate_arm),
        "pending": analysis.pending.meta(),
        "tests": {name: _test_state(getattr(analysis, name)) for name in BETTING_TESTS},
        "staked": {
            group: {t: test.state() for t, test in getattr(analysis, group).items()}
            for group in ("step_better", "step_frontier", "rollout_worse")
        },
    }


def from_json(
    cls: type[RolloutAnalysis], data: dict[str, Any], pending: Mapping[str, bytes] | None = None
) -> RolloutAnalysis:
    """The analysis ``to_json`` wrote, with its pending requests from the chunk records
    ``pending`` (suffix -> value, as ``pending.records`` gave them). Raises
    ``OldSnapshot`` for a snapshot of an earlier version (start afresh), ValueError
    when a chunk record is missing."""
    if data.get("version") != SNAPSHOT_VERSION:
        raise OldSnapshot(f"analysis snapshot version {data.get('version')!r}")
    analysis = cls(
        **{k: data[k] for k in SIMPLE_FIELDS}, metric=Metric.model_validate(data["metric"])
    )
    analysis.moments = {k: list(v) for k, v in data["moments"].items()}
    analysis.worse_seen = list(data["worse_seen"])
    analysis.value_edges = data["value_edges"]
    analysis.value_warmup = data["value_warmup"]
    analysis.production = ArmStats(**data["production"])
    analysis.candidate_arm = ArmStats(**data["candidate_arm"])
    analysis.pending = PendingStore.restore(data["pending"], pending or {})
    for name, state in data["tests"].items():
        test: BettingTest = getattr(analysis, name)
        for attr, value in state.items():
            setattr(test, attr, value)
    for group, tests in data["staked"].items():
        for t, state in tests.items():
            staked: StakedTest = getattr(analysis, group)[t]
            for attr, value in state.items():
                setattr(staked, attr, value)
    return analysis


def _test_state(test: BettingTest) -> dict[str, Any]:
    return {
        "n": test.n,
        "log_wealth": test.log_wealth,
        "max_log_wealth": test.max_log_wealth,
        "_sum": test._sum,
        "_sum_sq": test._sum_sq,
    }
