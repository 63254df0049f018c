"""Anytime-valid sequential tests by betting: the controller may look after every batch.

A test of ``H0: mean <= m`` (or ``>= m``) for observations bounded in ``[lo, hi]`` keeps a
wealth process ``K_t = prod_i (1 + lambda_i (x_i - m))`` over the observations rescaled to
[0, 1], with each bet ``lambda_i`` chosen from the past only (predictable). Under H0, ``K`` is
a nonnegative supermartingale with ``K_0 = 1``, so by Ville's inequality the chance that it
*ever* reaches ``1/alpha`` is at most ``alpha``: rejecting H0 the first time it does is valid
however often one looks, and however the stream is stopped. That is what makes a canary
checked after every batch sound, where a z-test re-run after every batch is not.

Reference: I. Waudby-Smith and A. Ramdas, "Estimating means of bounded random variables by
betting", JRSS-B 2024 (the betting martingale, and the aGRAPA bet used here, section 5); the
one-sided form is the test of Shafer & Vovk's game-theoretic probability. Pure: no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum


class Side(StrEnum):
    ABOVE = "above"  # evidence that the mean is above m (H0: mean <= m)
    BELOW = "below"  # evidence that the mean is below m (H0: mean >= m)


# Never stake more than this share of the allowed range: keeps wealth away from zero.
_MAX_STAKE = 0.5


@dataclass
class BettingTest:
    """One-sided, anytime-valid test that the mean of ``[lo, hi]``-bounded observations lies
    ``side`` of ``m``. Feed observations with ``update``; ``rejected`` turns true (and stays
    true) once the evidence ``wealth`` reaches ``1 / alpha``."""

    m: float
    side: Side
    alpha: float
    lo: float = 0.0
    hi: float = 1.0
    n: int = 0
    log_wealth: float = 0.0
    max_log_wealth: float = 0.0
    _sum: float = 0.0
    _sum_sq: float = 0.0

    def __post_init__(self) -> None:
        if not self.lo < self.m < self.hi:
            raise ValueError(f"m={self.m} must lie strictly inside [{self.lo}, {self.hi}]")

    @property
    def _m01(self) -> float:
        return (self.m - self.lo) / (self.hi - self.lo)

    @property
    def threshold(self) -> float:
        """``log(1/alpha)``: the log-wealth at which H0 is rejected."""
        return math.log(1.0 / self.alpha)

    @property
    def rejected(self) -> bool:
        return self.max_log_wealth >= self.threshold

    @property
    def mean(self) -> float:
        return self.lo + (self.hi - self.lo) * (self._sum / self.n) if self.n else float("nan")

    def _bet(self) -> float:
        """aGRAPA: stake in proportion to the estimated edge over its second moment, using
        only past observations, clipped to the side under test and to a safe size."""
        m = self._m01
        mean = (self._sum + 0.5) / (self.n + 1)  # shrunk towards 1/2 before data arrives
        var = (self._sum_sq + 0.25) / (self.n + 1) - mean**2
        edge = mean - m
        lam = edge / (max(var, 1e-6) + edge**2)
        if self.side is Side.ABOVE:
            return min(max(lam, 0.0), _MAX_STAKE / m)
        return max(min(lam, 0.0), -_MAX_STAKE / (1.0 - m))

    def update(self, x: float) -> None:
        if not self.lo <= x <= self.hi:
            raise ValueError(f"observation {x} outside [{self.lo}, {self.hi}]")
        x01 = (x - self.lo) / (self.hi - self.lo)
        lam = self._bet()
        self.log_wealth += math.log1p(lam * (x01 - self._m01))
        self.max_log_wealth = max(self.max_log_wealth, self.log_wealth)
        self.n += 1
        self._sum += x01
        self._sum_sq += x01 * x01

    def update_many(self, xs: list[float]) -> None:
        for x in xs:
            self.update(x)

    def summary(self) -> dict[str, float | int | bool | str]:
        return summary(self)


def summary(test: BettingTest | StakedTest) -> dict[str, float | int | bool | str]:
    """What a test says, for evidence and the dashboard (the same for both kinds of test)."""
    return {
        "null": f"mean {'<=' if test.side is Side.ABOVE else '>='} {test.m:g}",
        "n": test.n,
        "mean": test.mean if test.n else 0.0,
        "log_evidence": test.log_wealth,
        "max_log_evidence": test.max_log_wealth,
        "threshold": test.threshold,
        "rejected": test.rejected,
    }


# Policies may put a ceiling or margin on the edge of its range (a disagreement ceiling of 1,
# a margin of 1: "never"); a betting test needs its null mean strictly inside the range.
EDGE = 1e-6


def _inside(m: float, lo: float, hi: float) -> float:
    return min(max(m, lo + EDGE), hi - EDGE)


def non_inferiority(margin: float, alpha: float) -> tuple[BettingTest, BettingTest]:
    """The pair of tests on paired correctness differences ``d = candidate - production``
    (each in {-1, 0, 1}): ``better`` rejects "the candidate is worse by more than ``margin``"
    (promote), ``worse`` rejects "the candidate is at most ``margin`` worse" (roll back)."""
    m = _inside(-margin, -1.0, 1.0)
    better = BettingTest(m=m, side=Side.ABOVE, alpha=alpha, lo=-1.0, hi=1.0)
    worse = BettingTest(m=m, side=Side.BELOW, alpha=alpha, lo=-1.0, hi=1.0)
    return better, worse


def rate_tests(ceiling: float, alpha: float) -> tuple[BettingTest, BettingTest]:
    """Tests on a Bernoulli rate against ``ceiling``: ``under`` rejects "rate >= ceiling"
    (the rate is acceptably low), ``over`` rejects "rate <= ceiling" (a guardrail is crossed)."""
    m = _inside(ceiling, 0.0, 1.0)
    under = BettingTest(m=m, side=Side.BELOW, alpha=alpha)
    over = BettingTest(m=m, side=Side.ABOVE, alpha=alpha)
    return under, over


@dataclass
class StakedTest:
    """One-sided, anytime-valid test for observations in [-1, 1] whose values may still be
    revised: each observation's bets are fixed when it enters (from what was known then, so
    they are predictable), and the wealth is a product of per-observation factors, an
    order-free sum of logs. An observation whose label is missing enters at its worst case
    (``app.core.metric.bound``) and is revised when the label comes: the wealth is then never
    above that of the test fed the true values in the order compared, which is a nonnegative
    supermartingale under H0, so Ville's inequality still bounds the chance of ever
    rejecting by ``alpha``, whatever the order or the bias of label arrival.

    The bets are sized for alternatives ``alts`` (distances from ``m`` on the tested side)
    as ``lambda = delta / (s + delta**2)`` with ``s`` an estimate of the observations'
    second moment (the Kelly bet for a mean ``m + delta``), one product per alternative, and
    the wealth is their average (a mixture: a test martingale too)."""

    m: float
    side: Side
    alpha: float
    alts: tuple[float, ...]
    n: int = 0
    total: float = 0.0
    log_sums: list[float] = field(default_factory=list)
    max_log_wealth: float = 0.0

    def __post_init__(self) -> None:
        if not -1.0 < self.m < 1.0:
            raise ValueError(f"m={self.m} must lie strictly inside [-1, 1]")
        if not self.log_sums:
            self.log_sums = [0.0] * len(self.alts)

    @property
    def threshold(self) -> float:
        return math.log(1.0 / self.alpha)

    @property
    def log_wealth(self) -> float:
        top = max(self.log_sums)
        return top + math.log(sum(math.exp(s - top) for s in self.log_sums) / len(self.log_sums))

    @property
    def rejected(self) -> bool:
        return self.max_log_wealth >= self.threshold

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else float("nan")

    def stakes(self, second_moment: float) -> list[float]:
        """The bets for an observation entering now, given the estimated second moment."""
        s = max(second_moment, 1e-4)
        if self.side is Side.ABOVE:
            cap = _MAX_STAKE / (1.0 + self.m)  # keeps 1 + lambda (x - m) >= 1/2 for x >= -1
            return [min(d / (s + d * d), cap) for d in self.alts]
        cap = _MAX_STAKE / (1.0 - self.m)
        return [-min(d / (s + d * d), cap) for d in self.alts]

    def _apply(self, x: float | None, stakes: list[float], sign: int) -> None:
        if x is None:
            return
        if not -1.0 <= x <= 1.0:
            raise ValueError(f"observation {x} outside [-1, 1]")
        for i, lam in enumerate(stakes):
            self.log_sums[i] += sign * math.log1p(lam * (x - self.m))
        self.n += sign
        self.total += sign * x

    def add(self, x: float | None, stakes: list[float]) -> None:
        """Take an observation (None: not part of this test) with its bets."""
        self._apply(x, stakes, 1)
        self._touch()

    def revise(self, old: float | None, new: float | None, stakes: list[float]) -> None:
        """An observation taken as ``old`` (its worst case) is now known to be ``new``."""
        if old == new:
            return
        self._apply(old, stakes, -1)
        self._apply(new, stakes, 1)
        self._touch()

    def _touch(self) -> None:
        self.max_log_wealth = max(self.max_log_wealth, self.log_wealth)

    def summary(self) -> dict[str, float | int | bool | str]:
        return summary(self)

    def state(self) -> dict[str, object]:
        return {
            "n": self.n,
            "total": self.total,
            "log_sums": list(self.log_sums),
            "max_log_wealth": self.max_log_wealth,
        }


# Alternatives the tests bet on: promote bets on an equal candidate (a difference of 0, i.e.
# one margin above the null); roll back on candidates a little to much worse than the margin.
ROLLBACK_ALTS = (0.02, 0.05, 0.15)
MIN_PROMOTE_ALT = 0.005


def staked_pair(margin: float, alpha: float) -> tuple[StakedTest, StakedTest]:
    """``better`` rejects "the candidate is worse by more than ``margin``" (promote);
    ``worse`` rejects "the candidate is at most ``margin`` worse" (roll back)."""
    m = _inside(-margin, -1.0, 1.0)
    better = StakedTest(m=m, side=Side.ABOVE, alpha=alpha, alts=(max(-m, MIN_PROMOTE_ALT),))
    return better, staked_worse(margin, alpha)


def staked_worse(margin: float, alpha: float) -> StakedTest:
    m = _inside(-margin, -1.0, 1.0)
    return StakedTest(m=m, side=Side.BELOW, alpha=alpha, alts=ROLLBACK_ALTS)
