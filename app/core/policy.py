"""Promotion policy: how a candidate is rolled out and what evidence it needs.

Defaults live here and in each deployment's ``deployment.yaml``; a ``deploy``
command may override any field. Pure data, no I/O.
"""

from __future__ import annotations

from enum import StrEnum
from itertools import pairwise
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)


class Guardrails(BaseModel):
    """Limits that roll a canary back at once when crossed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_candidate_error_rate: float = Field(default=0.01, ge=0.0, le=1.0)
    max_latency_ratio: float = Field(default=2.0, gt=0.0)
    # ...and only when the p99 difference is at least this large: on microsecond models a
    # ratio alone measures scheduler noise.
    min_latency_regression_ms: float = Field(default=1.0, ge=0.0)
    max_disagreement: float = Field(default=0.2, ge=0.0, le=1.0)
    max_score_shift: float = Field(default=1.0, ge=0.0)  # PSI of fraud scores


class MetricKind(StrEnum):
    ACCURACY = "accuracy"
    WEIGHTED_ACCURACY = "weighted_accuracy"
    EXPECTED_COST = "expected_cost"
    RECALL = "recall"


class Metric(BaseModel):
    """What "not worse than production" is measured in (``app.core.metric``). Every kind is
    a per-request difference candidate - production scaled into [-1, 1], so the betting test
    stays valid; the margin is on that scale (per class for ``recall``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: MetricKind = MetricKind.ACCURACY
    # weighted_accuracy: a request's weight by its true class (1 when absent), divided by the max.
    class_weights: dict[str, float] = Field(default_factory=dict)
    # expected_cost: costs[truth][predicted] (0 when absent), divided by the largest cost.
    costs: dict[str, dict[str, float]] = Field(default_factory=dict)
    # recall: the classes whose recall must each be non-inferior (one test per class).
    classes: list[str] = Field(default_factory=list)
    # recall: a margin per class (the policy's non_inferiority_margin when absent).
    class_margins: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _complete(self) -> Metric:
        if any(w < 0 for w in self.class_weights.values()):
            raise ValueError("class weights must be >= 0")
        if any(c < 0 for row in self.costs.values() for c in row.values()):
            raise ValueError("costs must be >= 0")
        if any(not 0.0 <= m <= 1.0 for m in self.class_margins.values()):
            raise ValueError("class margins must be within [0, 1]")
        if self.kind is MetricKind.RECALL and not self.classes:
            raise ValueError("recall needs the classes to test")
        if self.kind is MetricKind.EXPECTED_COST and not any(
            c > 0 for row in self.costs.values() for c in row.values()
        ):
            raise ValueError("expected_cost needs a cost matrix with a positive cost")
        return self


class AtHorizon(StrEnum):
    """What a rollout does when its evidence has not come within the feedback horizon."""

    KEEP_PRODUCTION = "keep_production"  # roll back / retire the candidate, saying why
    HOLD = "hold"  # keep waiting for an operator


class WatchPolicy(BaseModel):
    """The post-promotion watch (``app.core.watch``): for how long the new production is
    compared with the previous one, and the detectors' false-alarm level."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # How long the watch lasts after a promotion (0: no watch).
    window_s: int = Field(default=3600, ge=0)
    # End it sooner, once this many audit requests were paired (0: by time only).
    window_requests: int = Field(default=0, ge=0)
    # Chance of a false automatic rollback (a new production no worse than the margin, and
    # within the disagreement ceiling), however long the window.
    alpha: float = Field(default=0.01, gt=0.0, lt=1.0)
    # Share of the audit sample the previous production also scores (its cost in workers).
    sample_rate: float = Field(default=1.0, gt=0.0, le=1.0)


class PublishMode(StrEnum):
    """How a newly published version rolls out (the ``Mode`` values), or ``none``: it is
    validated and installed, and waits for an operator's ``deploy``."""

    NONE = "none"
    MANUAL = "manual"
    AUTOMATIC = "automatic"
    CANARY = "canary"
    SHADOW = "shadow"


class InFlight(StrEnum):
    """What a validated publication does when a rollout of the deployment is in flight."""

    QUEUE = "queue"  # wait in the deployment's FIFO queue; starts when the rollout ends
    SUPERSEDE = "supersede"  # the candidate in flight is retired, the new version starts


class OnPublish(BaseModel):
    """What the controller does with a version published on ``models.published`` once it is
    validated (``app.core.publication``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: PublishMode = PublishMode.NONE
    # canary: the first weight (default: the policy's first canary step).
    weight: float | None = Field(default=None, gt=0.0, le=1.0)
    # shadow: the share of requests the candidate scores.
    sample_rate: float = Field(default=1.0, gt=0.0, le=1.0)
    in_flight: InFlight = InFlight.QUEUE
    # queue: at most this many versions wait; one more is rejected with the reason.
    queue_limit: int = Field(default=10, ge=1, le=1000)


class Policy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    canary_steps: list[float] = Field(default_factory=lambda: [0.05, 0.10, 0.25, 0.50, 1.0])
    min_samples_per_step: int = Field(default=500, ge=1)
    pairing: bool = True
    guardrails: Guardrails = Field(default_factory=Guardrails)
    non_inferiority_margin: float = Field(default=0.02, ge=0.0, le=1.0)
    min_feedback_coverage: float = Field(default=0.5, ge=0.0, le=1.0)
    feedback_horizon_s: int = Field(default=24 * 3600, ge=0)
    alpha: float = Field(default=0.05, gt=0.0, lt=1.0)
    shadow_requires_approval: bool = False
    replay_gate: int = Field(default=0, ge=0)  # automatic mode: replay N requests first
    metric: Metric = Field(default_factory=Metric)
    # Share of requests in the audit sample (``app.core.audit``): the labels that count.
    audit_rate: float = Field(default=1.0, gt=0.0, le=1.0)
    at_horizon: AtHorizon = AtHorizon.KEEP_PRODUCTION
    # Promote without labels when the disagreement is shown below the margin (not recall).
    promote_on_agreement: bool = True
    watch: WatchPolicy = Field(default_factory=WatchPolicy)
    # What a version published on models.published does (default: nothing until a deploy).
    on_publish: OnPublish = Field(default_factory=OnPublish)

    @model_serializer(mode="wrap")
    def _defaults_unwritten(self, handler: SerializerFunctionWrapHandler) -> Any:
        # A policy with the default watch and on_publish is written as before they existed
        # (the deployment.yaml files and the states on the wire stay byte for byte the
        # same); reading it back gives the defaults.
        data = handler(self)
        if isinstance(data, dict):
            if self.watch == _DEFAULT_WATCH:
                data.pop("watch", None)
            if self.on_publish == _DEFAULT_ON_PUBLISH:
                data.pop("on_publish", None)
        return data

    @field_validator("canary_steps")
    @classmethod
    def _steps_climb_to_one(cls, steps: list[float]) -> list[float]:
        if not steps or any(not 0.0 < s <= 1.0 for s in steps):
            raise ValueError("canary steps must be within (0, 1]")
        if any(b <= a for a, b in pairwise(steps)):
            raise ValueError("canary steps must increase")
        return steps


_DEFAULT_WATCH = WatchPolicy()
_DEFAULT_ON_PUBLISH = OnPublish()
