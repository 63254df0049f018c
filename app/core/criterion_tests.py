"""The success criterion's tests of a rollout: how each audit request enters them, and when.

The criterion's tests (``app.core.metric``) take only the audit sample (``app.core.audit``),
each request with bets fixed when it is compared (``StakedTest``), in two forms bounded by
the same process (the test fed every true value in compared order): ``step_better`` takes
every request as it is compared, at its worst case until its label comes; ``step_frontier``
takes them in compared order but lets no request in at a costly worst case (``OPEN_LIMIT``
of them): it waits for that request's label (or for the horizon, then its worst case) while
the next ones wait behind it, so late labels cost time, not evidence. Either form rejecting
passes the test at ``alpha``: each is at every moment at most the bounding process at some
point of its path, so both together cross ``1/alpha`` no more often than it does (Ville).
Labels late, missing, or arriving first for frauds cannot pass a worse candidate. The
promote tests are kept per canary step (a promotion rests on the last step's own data); they
run at ``alpha`` less the share given to the agreement route (``AGREEMENT_ALPHA_SHARE``)
when that route can promote, so that the two routes together promote a candidate worse than
the margin at most ``alpha`` of the time. The roll-back ("worse") test runs over the whole
rollout on labelled observations, its level split between the metric's tests; once rejected
it stays rejected (``worse_seen`` keeps it across steps).

``CriterionTests`` is the part of ``RolloutAnalysis`` (``app.core.analysis``) that owns
them: its fields are the analysis's (declared here for the type checker).

Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from app.core.metric import Outcome, Rule, bound
from app.core.pending import GIVEN_UP, IN_TEST, QUEUED, PendingStore
from app.core.sequential import BettingTest, StakedTest, rate_tests, staked_pair

# The in-order promote test (``step_frontier``) holds at most this many audit requests at a
# worst case that costs it evidence (label still missing); later ones wait in compared order.
OPEN_LIMIT = 0
# Share of alpha for promotion without labels (disagreement shown below the margin) when that
# route is open; the labelled route gets the rest (Bonferroni over the two routes).
AGREEMENT_ALPHA_SHARE = 0.2


class CriterionTests:
    """The criterion's tests of a rollout, and the audit requests' way into them."""

    # The analysis's fields these methods use (``RolloutAnalysis`` declares and sets them).
    alpha: float
    margin: float
    kind: str
    error_cap: float | None
    promote_on_agreement: bool
    paired: int
    disagreements: int
    tested: int
    tested_labelled: int
    open_in_test: int
    pending: PendingStore
    moments: dict[str, list[float]]
    rule: Rule
    step_better: dict[str, StakedTest]
    step_frontier: dict[str, StakedTest]
    rollout_worse: dict[str, StakedTest]
    agree_margin: BettingTest

    @property
    def regressor(self) -> bool:
        return self.kind == "regressor"

    @property
    def unbounded(self) -> bool:
        """A regressor without an error cap: its feedback cannot be bounded, so it is not
        used, and the criterion cannot pass on labels."""
        return self.regressor and self.error_cap is None

    @property
    def agreement_route(self) -> bool:
        """Whether a disagreement shown below the margin may promote (then alpha is split)."""
        return self.promote_on_agreement and self.rule.agreement_bounds_it

    @property
    def alpha_labels(self) -> float:
        share = AGREEMENT_ALPHA_SHARE if self.agreement_route else 0.0
        return self.alpha * (1.0 - share)

    @property
    def alpha_agreement(self) -> float:
        return self.alpha * AGREEMENT_ALPHA_SHARE

    def _fresh_step_tests(self) -> None:
        self.step_better = {
            t: staked_pair(self.rule.margin_of(t), self.alpha_labels)[0] for t in self.rule.tests
        }
        self.step_frontier = {
            t: staked_pair(self.rule.margin_of(t), self.alpha_labels)[0] for t in self.rule.tests
        }
        self.agree_margin, _ = rate_tests(self.margin, self.alpha_agreement)

    def _spread(self, test: str) -> float:
        """The second moment the next bets assume: the test's known observations, shrunk
        towards the disagreement rate (|x| <= 1 on a disagreeing pair, 0 otherwise)."""
        n, sq = self.moments.get(test, (0.0, 0.0))
        prior = (self.disagreements + 1) / (self.paired + 2)
        return (sq + 10 * prior) / (n + 10)

    def _plan(self, prod: Outcome, cand: Outcome) -> dict[str, tuple[float, list[float | None]]]:
        """Per test: the bet size (rounded to float32: the pending store keeps it so, and a
        label's revision must bet what was bet) and the values the label may give."""
        return {
            t: (float(np.float32(self._spread(t))), self.rule.possible(t, prod, cand))
            for t in self.rule.tests
        }

    def _enter(
        self, plan: dict[str, tuple[float, list[float | None]]], this_step: bool
    ) -> list[float] | None:
        """Enter one audit observation into the roll-back tests (its value when known; else
        they wait for the label) and, when it is of this step, into ``step_better`` (its
        worst case until the label comes); the bet sizes if its value is still open, else
        None."""
        open_ = False
        for t, (spread, values) in plan.items():
            if this_step:
                better = self.step_better[t]
                better.add(bound(values, better.m, True), better.stakes(spread))
            worse = self.rollout_worse[t]
            if len(set(values)) > 1:
                open_ = True
            else:
                worse.add(values[0], worse.stakes(spread))
                self._moment(t, values[0])
        return [spread for spread, _ in plan.values()] if open_ else None

    def _costly(self, prod: Outcome, cand: Outcome) -> bool:
        """Whether an open request's worst case costs the promote test evidence (a factor
        below 1 in some test): the ones ``OPEN_LIMIT`` counts."""
        for t, test in self.step_frontier.items():
            values = self.rule.possible(t, prod, cand)
            x = bound(values, test.m, True)
            if len(set(values)) > 1 and x is not None and x < test.m:
                return True
        return False

    def _admit(self) -> None:
        """Move this step's waiting audit requests into the in-order promote test, in compared
        order, while the head's value is known (or given up) or there is room for one more
        open."""
        while (row := self.pending.next_queued()) is not None:
            prod, cand, _, _, flags, truth, bets = self.pending.get(row)
            given_up = bool(flags & GIVEN_UP)
            costly = truth is None and not given_up and self._costly(prod, cand)
            if costly and self.open_in_test >= OPEN_LIMIT:
                return
            self.pending.set_flags(row, off=QUEUED)
            assert bets is not None
            for (t, test), spread in zip(self.step_frontier.items(), bets, strict=True):
                if truth is not None:
                    x = self.rule.value(t, prod, cand, truth)
                else:
                    x = bound(self.rule.possible(t, prod, cand), test.m, True)
                test.add(x, test.stakes(spread))
            self.tested += 1
            self.tested_labelled += int(truth is not None)
            if truth is None and not given_up:
                self.pending.set_flags(row, on=IN_TEST)
                self.open_in_test += int(costly)

    def _moment(self, test: str, x: float | None) -> None:
        if x is None:
            return
        entry = self.moments.setdefault(test, [0.0, 0.0])
        entry[0] += 1
        entry[1] += x * x

    def _revise_tests(
        self,
        prod_label: Any,
        cand_label: Any,
        truth: Outcome,
        spreads: Any,
        current: bool,
        in_test: bool,
    ) -> None:
        """A labelled audit pair: its worst case in every test it entered becomes its value."""
        for (test, worse), spread in zip(self.rollout_worse.items(), spreads, strict=True):
            values = self.rule.possible(test, prod_label, cand_label)
            x = self.rule.value(test, prod_label, cand_label, truth)
            worse.revise(None, x, worse.stakes(spread))
            promote = [self.step_better[test]] if current else []
            promote += [self.step_frontier[test]] if in_test else []
            for better in promote:
                better.revise(bound(values, better.m, True), x, better.stakes(spread))
            self._moment(test, x)

    def worse_now(self) -> list[str]:
        """Tests that show the candidate worse than the margin over the whole rollout."""
        return [f"{t} (whole rollout)" for t, w in self.rollout_worse.items() if w.rejected]
