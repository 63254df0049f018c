"""The controller's metrics: the decisions it commits and the evidence its analysts skip or
re-key.

The controller records each decision it commits (``observe_decision``), each evidence record
an analyst cannot use (``observe_skipped``), and each feedback record read on a partition not
its deployment's (``observe_misrouted_feedback``). Its live state and analyses are read at
scrape time (``app.adapters.live_metrics``).
"""

from __future__ import annotations

from prometheus_client import Counter

from app.core.events import DecisionEvent

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


def observe_decision(decision: DecisionEvent) -> None:
    DECISIONS.labels(
        decision.deployment,
        decision.action,
        "true" if decision.accepted else "false",
        decision.decided_by,
    ).inc()
