"""Compared requests awaiting their ground truth, and the truth joined to them when it comes.

A rollout keeps each compared request (``app.core.pending``) for at most its feedback horizon
and at most ``pending_limit`` of them (beyond, the oldest is dropped, counted and shown).
``add_feedback`` joins a label (a regressor's values) to its request: the shown figures count
it, and an audit request's worst case in the criterion's tests becomes its value; past the
horizon (``expire``, ``tick``) a request is given up and stays at its worst case. Late labels
cost time, not evidence. A label read before its comparison is held until it comes
(``app.core.early_labels``).

``FeedbackJoin`` is the part of ``RolloutAnalysis`` (``app.core.analysis``) that owns this:
its fields are the analysis's (declared here for the type checker).

Pure: no I/O, no clock (times are passed in).
"""

from __future__ import annotations

from typing import Any

from app.core.arm_stats import ArmStats
from app.core.criterion_tests import CriterionTests
from app.core.early_labels import EarlyLabels
from app.core.events import Feedback
from app.core.metric import Outcome, RegressionRule
from app.core.pending import AUDIT, GIVEN_UP, IN_TEST, OPEN, QUEUED, Row


class FeedbackJoin(CriterionTests):
    """A rollout's compared requests until their ground truth comes (or the horizon)."""

    # The analysis's fields these methods use (``RolloutAnalysis`` declares and sets them).
    clock: int
    horizon_ms: int
    step_epoch: int
    step_open: int
    labelled: int
    audit_labelled: int
    audit_correct_production: int
    audit_correct_candidate: int
    step_audit_labelled: int
    pending_limit: int
    expired_pending: int
    dropped_pending: int
    production: ArmStats
    candidate_arm: ArmStats
    early: EarlyLabels

    def _pend(
        self,
        request_id: str,
        p_label: Outcome,
        c_label: Outcome,
        at: int,
        step: int,
        audit: bool,
        open_: bool,
        plan: dict[str, tuple[float, list[float | None]]] | None,
    ) -> None:
        """Keep the compared request until its label comes (and queue this step's audit
        requests for the in-order test). The same request id compared again replaces the
        earlier one, which is given up. Past ``pending_limit`` the oldest is dropped."""
        earlier = self.pending.find(request_id)
        if earlier is not None:
            self._close(earlier)
        flags = AUDIT * audit | OPEN * open_
        flags |= QUEUED * (plan is not None and step == self.step_epoch)
        bets = [spread for spread, _ in plan.values()] if plan is not None else None
        self.pending.add(request_id, p_label, c_label, at, step, flags, bets)
        while len(self.pending) > self.pending_limit:
            oldest = self.pending.oldest()
            assert oldest is not None
            self.dropped_pending += 1
            self._close(oldest)

    def _close(self, row: int) -> Row:
        """No label will be joined to ``row`` any more (it came, or is given up)."""
        entry = self.pending.get(row)
        self.pending.close(row)
        self._closed(row, entry)
        return entry

    def expire(self, now: int) -> None:
        """Stop waiting for ground truth of requests compared more than a horizon ago (their
        worst case stays in the promote test)."""
        expired = self.pending.expired(now - self.horizon_ms)
        for row in expired:
            self.expired_pending += 1
            self._close(row)
        if expired:
            self._admit()
        self.pending.release()

    def _closed(self, row: int, entry: Row) -> None:
        """What closing ``row`` (``entry`` as it was) changes: this step's open count, a
        queued request is given up, an in-test one leaves the open ones."""
        if not entry.flags & AUDIT or entry.step != self.step_epoch:
            return
        open_ = bool(entry.flags & OPEN)
        self.step_open -= int(open_)
        if entry.flags & QUEUED:
            self.pending.set_flags(row, on=GIVEN_UP)
        elif entry.flags & IN_TEST:
            self.pending.set_flags(row, off=IN_TEST)
            self.open_in_test -= int(open_ and self._costly(entry.prod, entry.cand))

    def tick(self, now: int) -> None:
        """Time passes (the controller's clock) even when no evidence comes."""
        self.clock = max(self.clock, now)
        self.expire(now)

    def add_feedback(self, f: Feedback, at: int = 0) -> bool:
        """Join ground truth to a compared request of this rollout; False if none waits for it,
        or it is not this kind's truth (a label for a classifier; for a regressor as many
        values as it predicts, and only with an error cap: unbounded, its pair stays at its
        worst case and the rollout cannot promote on it)."""
        truth: Outcome = f.values if self.regressor else f.label
        if truth is None or (self.regressor and self.error_cap is None):
            return False
        row = self.early.pending_or_hold(self.pending, f.request_id, truth, at)
        return row is not None and self._join(row, truth, at)

    def _join_early(self, request_id: str, at: int) -> None:
        """The comparison of ``request_id`` (at ``at``) just came: join the label held for
        it (``app.core.early_labels``), if any."""
        joinable = self.early.joinable(self.pending, request_id, at)
        if joinable is not None:
            self._join(*joinable)

    def _join(self, row: int, truth: Outcome, at: int) -> bool:
        """Join ``truth`` to the compared request in ``row``."""
        prod_label, cand_label, _, step, flags, _, bets = self.pending.get(row)
        wrong_width = isinstance(prod_label, list) and (
            not isinstance(truth, list) or len(truth) != len(prod_label)
        )
        if wrong_width:
            return False  # not this deployment's targets: bad feedback, nothing changes
        audit = bool(flags & AUDIT)
        spreads = bets if flags & OPEN else None
        current = audit and step == self.step_epoch
        queued = current and bool(flags & QUEUED)
        in_test = current and bool(flags & IN_TEST)
        self._close(row)
        self.clock = max(self.clock, at)
        self._count_truth(prod_label, cand_label, truth, audit, step)
        if queued:
            self.pending.set_truth(row, truth)
            self.pending.set_flags(row, off=GIVEN_UP)
        self.tested_labelled += int(in_test)
        if audit and spreads is not None:
            self._revise_tests(prod_label, cand_label, truth, spreads, current, in_test)
        if current:
            self._admit()
        return True

    def _count_truth(
        self, prod_label: Any, cand_label: Any, truth: Outcome, audit: bool, step: int
    ) -> None:
        """The shown figures: labelled, correct and absolute error per arm, audit counts."""
        self.labelled += 1
        if prod_label is not None:
            self.production.labelled += 1
            self.production.correct += int(prod_label == truth)
        # A failed candidate counts as wrong: errors are not a way to dodge the test.
        self.candidate_arm.labelled += int(prod_label is not None)
        self.candidate_arm.correct += int(cand_label == truth and prod_label is not None)
        if (
            isinstance(self.rule, RegressionRule)
            and isinstance(truth, list)
            and isinstance(prod_label, list)
        ):
            cap = self.rule.error_cap
            self.production.abs_error += self.rule.loss(prod_label, truth) * cap
            self.candidate_arm.abs_error += (
                self.rule.loss(cand_label if isinstance(cand_label, list) else None, truth) * cap
            )
        if audit:
            self.audit_labelled += 1
            self.step_audit_labelled += int(step == self.step_epoch)
            self.audit_correct_production += int(prod_label == truth)
            self.audit_correct_candidate += int(cand_label == truth)
