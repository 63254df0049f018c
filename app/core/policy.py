"""Promotion policy: how a candidate is rolled out and what evidence it needs.

Defaults live here and in each deployment's ``deployment.yaml``; a ``deploy``
command may override any field. Pure data, no I/O.
"""

from __future__ import annotations

from itertools import pairwise

from pydantic import BaseModel, ConfigDict, Field, field_validator


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

    @field_validator("canary_steps")
    @classmethod
    def _steps_climb_to_one(cls, steps: list[float]) -> list[float]:
        if not steps or any(not 0.0 < s <= 1.0 for s in steps):
            raise ValueError("canary steps must be within (0, 1]")
        if any(b <= a for a, b in pairwise(steps)):
            raise ValueError("canary steps must increase")
        return steps
