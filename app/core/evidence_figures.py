"""The figures a rollout's evidence shows: coverage, disagreement, shift, latency, samples.

Feedback coverage (whole rollout, this step, what the promote test took), the paired
disagreement rate, the score shift (the largest PSI over the columns), the p99 latency ratio,
and the two dictionaries every decision's evidence, the dashboard and the metrics carry:
``metrics()`` (accuracy of both arms shown, never tested) and ``samples()`` (the counts).

``EvidenceFigures`` is the part of ``RolloutAnalysis`` (``app.core.analysis``) that owns
them: its fields are the analysis's (declared here for the type checker).

Pure: no I/O.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app.core.arm_stats import ArmStats, psi
from app.core.early_labels import EarlyLabels
from app.core.pending import PendingStore


class EvidenceFigures:
    """What the evidence of a rollout shows (computed from its counts on demand)."""

    # The analysis's fields these figures read (``RolloutAnalysis`` declares and sets them).
    production: ArmStats
    candidate_arm: ArmStats
    compared: int
    paired: int
    disagreements: int
    labelled: int
    step_samples: int
    audit_compared: int
    audit_labelled: int
    audit_correct_production: int
    audit_correct_candidate: int
    step_audit_compared: int
    step_audit_labelled: int
    step_paired: int
    step_disagreements: int
    step_open: int
    tested: int
    tested_labelled: int
    shed: int
    shed_sampled: int
    invalid_scores: int
    pending: PendingStore
    pending_limit: int
    expired_pending: int
    dropped_pending: int
    early: EarlyLabels

    if TYPE_CHECKING:

        @property
        def regressor(self) -> bool: ...

    @property
    def coverage(self) -> float:
        """Labelled share of the audit sample (the whole rollout)."""
        return self.audit_labelled / self.audit_compared if self.audit_compared else 0.0

    @property
    def step_coverage(self) -> float:
        """Labelled share of this step's audit sample."""
        if not self.step_audit_compared:
            return 0.0
        return self.step_audit_labelled / self.step_audit_compared

    @property
    def tested_coverage(self) -> float:
        """Labelled share of the audit requests the promote test has taken (this step's
        audit sample up to where the test has reached, in compared order)."""
        return self.tested_labelled / self.tested if self.tested else 0.0

    @property
    def step_disagreement(self) -> float:
        return self.step_disagreements / self.step_paired if self.step_paired else 0.0

    @property
    def open_labels(self) -> int:
        """Audit requests of this step whose label could still change the criterion."""
        return self.step_open

    @property
    def disagreement(self) -> float:
        return self.disagreements / self.paired if self.paired else 0.0

    @property
    def score_shift(self) -> float:
        """The largest PSI over the columns (classes' scores, or targets' values)."""
        shifts = [
            psi(p, c)
            for p, c in zip(self.production.shift, self.candidate_arm.shift, strict=False)
            if len(p) == len(c)
        ]
        return max(shifts, default=0.0)

    @property
    def latency_ratio(self) -> float:
        p, c = self.production.quantile(0.99), self.candidate_arm.quantile(0.99)
        return c / p if p and p == p and c == c else float("nan")

    def metrics(self) -> dict[str, Any]:
        return {
            "candidate_error_rate": self.candidate_arm.error_rate,
            "disagreement": self.disagreement,
            "step_disagreement": self.step_disagreement,
            "score_shift_psi": self.score_shift,
            "latency_p50_ms": {
                "production": self.production.quantile(0.5),
                "candidate": self.candidate_arm.quantile(0.5),
            },
            "latency_p99_ms": {
                "production": self.production.quantile(0.99),
                "candidate": self.candidate_arm.quantile(0.99),
            },
            "latency_ratio_p99": self.latency_ratio,
            # Shown, never tested: every labelled request of the rollout (audit or not, so
            # biased if labels come for a chosen subset) ...
            "accuracy": {
                "production": self.production.accuracy,
                "candidate": self.candidate_arm.accuracy,
            },
            # ... and the labelled audit sample only (a random sample; the tests use it).
            "accuracy_audit_sample": {
                "production": self._audit_accuracy(self.audit_correct_production),
                "candidate": self._audit_accuracy(self.audit_correct_candidate),
            },
            # A regressor's mean absolute error (each target's capped at ``error_cap``).
            "mean_capped_absolute_error": {
                "production": self._mae(self.production),
                "candidate": self._mae(self.candidate_arm),
            },
            "feedback_coverage": self.coverage,
            "step_feedback_coverage": self.step_coverage,
            "tested_feedback_coverage": self.tested_coverage,
            "shed_fraction": self.shed / self.shed_sampled if self.shed_sampled else 0.0,
        }

    def _mae(self, arm: ArmStats) -> float:
        return arm.abs_error / arm.labelled if self.regressor and arm.labelled else float("nan")

    def _audit_accuracy(self, correct: int) -> float:
        return correct / self.audit_labelled if self.audit_labelled else float("nan")

    def samples(self) -> dict[str, int]:
        return {
            "compared": self.compared,
            "paired": self.paired,
            "labelled": self.labelled,
            "step": self.step_samples,
            "candidate_served": self.candidate_arm.served,
            "production_served": self.production.served,
            "candidate_errors": self.candidate_arm.errors,
            "audit": self.audit_compared,
            "audit_labelled": self.audit_labelled,
            "step_audit": self.step_audit_compared,
            "step_audit_labelled": self.step_audit_labelled,
            "open_labels": self.open_labels,
            "promote_tested": self.tested,
            "promote_tested_labelled": self.tested_labelled,
            "promote_waiting": self.pending.queued,
            "invalid_scores": self.invalid_scores,
            # Compared requests awaiting ground truth, the most the rollout keeps (horizon x
            # the rate it is sized for), and those given up: past the horizon, or dropped
            # over the limit (each at its worst case, never silently).
            "pending": len(self.pending),
            "pending_limit": self.pending_limit,
            "pending_expired": self.expired_pending,
            "pending_dropped": self.dropped_pending,
            # Labels read before their comparison, held for it; and those let go unjoined
            # (no comparison within a minute, or over the limit: since the process started).
            "labels_early": len(self.early),
            "labels_early_dropped": self.early.dropped,
        }
