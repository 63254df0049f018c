"""The controller's verdicts on a rollout: one typed, ordered vocabulary.

``app.core.promotion`` decides a ``Verdict`` from the evidence; ``app.core.state_machine``
dispatches it through one table (``controller_step``); the ``DecisionEvent`` records its
``action`` (a ``DecisionAction``, whose wire form is the string it always was). Verdicts are
ordered by severity, so that where several rules speak the worst wins (as argo-rollouts
reads its analysis phases): ``max(verdicts)``.
"""

from __future__ import annotations

from enum import Enum, StrEnum

from app.core.events import DecisionAction


class Verdict(Enum):
    """(value, severity, the action recorded, whether the state changes)."""

    HOLD = ("hold", 0, None, False)
    RECOMMEND_PROMOTE = ("recommend_promote", 1, DecisionAction.RECOMMEND, False)
    ADVANCE = ("advance", 2, DecisionAction.ADVANCE, True)
    AWAIT_APPROVAL = ("await_approval", 3, DecisionAction.AWAIT_APPROVAL, True)
    PROMOTE = ("promote", 4, DecisionAction.PROMOTE, True)
    RECOMMEND_REJECT = ("recommend_reject", 5, DecisionAction.RECOMMEND, False)
    RETIRE = ("retire", 6, DecisionAction.RETIRE, True)
    ROLLBACK = ("rollback", 7, DecisionAction.ROLLBACK, True)

    def __init__(
        self, name: str, severity: int, action: DecisionAction | None, changes_state: bool
    ) -> None:
        self.label = name
        self.severity = severity
        self.recorded = action
        self.changes_state = changes_state

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Verdict):
            return NotImplemented
        return self.severity < other.severity

    def __str__(self) -> str:
        return self.label

    @property
    def action(self) -> DecisionAction:
        """The ``DecisionEvent.action`` this verdict is published as (not for ``HOLD``)."""
        if self.recorded is None:
            raise ValueError("hold is not published")
        return self.recorded


class Criterion(StrEnum):
    """Where the success criterion stands."""

    PASSED = "passed"
    FAILED = "failed"
    PENDING = "pending"


class WaitingFor(StrEnum):
    """What a rollout that holds is waiting for (shown in the analysis view and evidence)."""

    NOTHING = "nothing"
    SAMPLES = "samples"  # the step's minimum compared requests
    LABELS = "labels"  # ground truth for the audit sample (coverage, or disagreeing pairs)
    EVIDENCE = "evidence"  # more labelled (or agreeing) pairs for a test to decide
    GUARDRAILS = "guardrails"  # error rate / latency not yet shown within their limits
