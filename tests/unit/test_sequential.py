"""Anytime-valid tests: validity under continuous monitoring, power, and the simulation."""

from __future__ import annotations

import numpy as np
import pytest

from app.core.sequential import BettingTest, Side, non_inferiority, rate_tests
from app.simulation.bare_test import paired_outcomes, simulate

ALPHA = 0.05


def test_wealth_starts_at_one_and_the_threshold_is_log_one_over_alpha() -> None:
    t = BettingTest(m=0.5, side=Side.ABOVE, alpha=ALPHA)
    assert t.log_wealth == 0.0 and not t.rejected
    assert t.threshold == pytest.approx(np.log(20))


@pytest.mark.parametrize("side", [Side.ABOVE, Side.BELOW])
def test_under_the_null_the_test_rarely_ever_rejects(side: Side) -> None:
    """Checked after every single observation, for 3,000 of them: at most alpha of the
    replications ever reject when the mean sits exactly at m (the hardest null)."""
    rng = np.random.default_rng(1)
    rejected = 0
    reps = 300
    for _ in range(reps):
        t = BettingTest(m=0.3, side=side, alpha=ALPHA)
        t.update_many((rng.random(3000) < 0.3).astype(float).tolist())
        rejected += t.rejected
    assert rejected / reps <= ALPHA + 0.02  # Monte Carlo slack (sd ~ 0.013)


@pytest.mark.parametrize(
    ("rate", "side", "expect"),
    [
        (0.45, Side.ABOVE, True),
        (0.15, Side.BELOW, True),
        (0.15, Side.ABOVE, False),
        (0.45, Side.BELOW, False),
    ],
)
def test_a_clear_departure_is_found_quickly_and_only_on_its_side(
    rate: float, side: Side, expect: bool
) -> None:
    rng = np.random.default_rng(2)
    t = BettingTest(m=0.3, side=side, alpha=ALPHA)
    t.update_many((rng.random(1000) < rate).astype(float).tolist())
    assert t.rejected is expect


def test_observations_outside_the_bounds_are_refused() -> None:
    t = BettingTest(m=0.0, side=Side.ABOVE, alpha=ALPHA, lo=-1.0, hi=1.0)
    with pytest.raises(ValueError):
        t.update(2.0)
    with pytest.raises(ValueError):
        BettingTest(m=1.0, side=Side.ABOVE, alpha=ALPHA)


def test_rate_tests_bracket_a_ceiling() -> None:
    under, over = rate_tests(0.2, ALPHA)
    rng = np.random.default_rng(3)
    low = (rng.random(2000) < 0.05).astype(float).tolist()
    under.update_many(low)
    over.update_many(low)
    assert under.rejected and not over.rejected


def test_paired_outcomes_have_the_intended_accuracies() -> None:
    rng = np.random.default_rng(4)
    d = paired_outcomes(rng, 200_000, 0.85, -0.05)
    assert set(np.unique(d)) <= {-1, 0, 1}
    assert d.mean() == pytest.approx(-0.05, abs=0.005)


@pytest.mark.parametrize("delta", [-0.03, -0.02])
def test_simulation_false_promotion_of_a_truly_worse_candidate_is_at_most_alpha(
    delta: float,
) -> None:
    result = simulate(delta, margin=0.02, alpha=ALPHA, replications=200, seed=5)
    assert result.promote_rate <= ALPHA + 0.02, result


def test_simulation_a_truly_better_candidate_is_promoted() -> None:
    result = simulate(0.03, margin=0.02, alpha=ALPHA, replications=200, seed=6)
    assert result.promote_rate >= 0.95, result


def test_simulation_an_equal_candidate_is_promoted_under_a_margin() -> None:
    result = simulate(0.0, margin=0.02, alpha=ALPHA, replications=200, seed=7)
    assert result.promote_rate >= 0.8, result
    assert result.rollback_rate <= ALPHA + 0.02


def test_non_inferiority_pair_tests_both_sides_of_the_margin() -> None:
    better, worse = non_inferiority(0.02, ALPHA)
    assert better.m == worse.m == -0.02
    assert (better.side, worse.side) == (Side.ABOVE, Side.BELOW)
