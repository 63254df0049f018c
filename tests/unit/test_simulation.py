"""The decision path replayed (``app.simulation``) at reduced replications, fixed seeds: no
situation promotes a candidate worse than the margin more than alpha of the time, and equal or
better candidates promote at the rates docs/decisions.md claims (with Monte Carlo slack).

The full table (``rollout simulate``, 80 to 400 runs a situation) is in docs/decisions.md;
here each situation runs 8 times (4 when it decides after every record), which keeps the
file under a minute but makes every bound loose: a worse candidate beyond the margin must
never be promoted in 8 runs; at the margin itself (where the level is alpha exactly) the
Wilson interval's lower bound must stay at or below alpha, i.e. at most 1 of 8 promoted."""

from __future__ import annotations

import math

import pytest

from app.core.policy import Policy
from app.simulation.report import wilson
from app.simulation.runner import pure_test_samples, run
from app.simulation.situations import FRAUD, SITUATIONS, Situation

ALPHA = 0.05
REPS = 8


def _reps(s: Situation) -> int:
    return 4 if s.look_every == 1 else REPS


@pytest.mark.parametrize(
    "situation", [s for s in SITUATIONS if s.truth == "worse"], ids=lambda s: s.name
)
def test_a_worse_candidate_is_promoted_at_most_alpha_of_the_time(situation: Situation) -> None:
    n = _reps(situation)
    result = run(situation, replications=n, seed=3)
    promoted = result.count("promote")
    if "at the margin" in situation.name:
        assert wilson(promoted, n)[0] <= ALPHA, result
    else:
        assert promoted == 0, result


# Situation -> the least share of 8 runs promoted (the full run's rate, less Monte Carlo
# slack: about two standard errors at 8 runs).
POWER = {
    "equal, labels at once": 7 / 8,
    "+2 pts, labels 3,000 late": 7 / 8,
    "equal, every label 3,000 requests late": 6 / 8,
    "equal, fraud default (per-class recall)": 2 / 8,
}


@pytest.mark.parametrize(("name", "least"), POWER.items(), ids=list(POWER))
def test_an_equal_or_better_candidate_is_promoted(name: str, least: float) -> None:
    s = next(s for s in SITUATIONS if s.name == name)
    result = run(s, replications=REPS, seed=4)
    assert result.rate("promote") >= least, result
    assert result.count("rollback") == 0, result


def test_without_labels_an_equal_candidate_is_never_promoted_on_agreement_above_the_margin() -> (
    None
):
    s = next(s for s in SITUATIONS if s.labels == "none")
    result = run(s, replications=4, seed=5)
    assert result.count("promote") == 0
    assert result.rate("horizon") == 1.0  # at the horizon: production is kept


def test_the_staked_test_needs_fewer_pairs_than_the_previous_one() -> None:
    from app.simulation.bare_test import simulate

    before = simulate(0.0, margin=0.02, alpha=ALPHA, replications=60, seed=8)
    rate, after = pure_test_samples(0.0, 0.02, ALPHA, 60, seed=8)
    assert rate >= 0.9 and not math.isnan(after)
    assert after <= 0.8 * before.median_samples, (after, before.median_samples)


def test_the_simulated_fraud_default_is_the_deployments() -> None:
    from app.training.train import fraud_policy

    assert Policy.model_validate(FRAUD) == fraud_policy()


def test_the_replay_gate_passes_a_worse_candidate_at_most_alpha_of_the_time() -> None:
    """The replay gate's false-pass rate (``app.simulation.replay_gate``, fixed seeds): at
    the margin (where the level is alpha exactly) the Wilson lower bound stays at or below
    alpha; a point beyond it, never in 8 replays; an equal candidate passes on enough labels."""
    from app.simulation.replay_gate import gate_rate

    at_margin = gate_rate(-0.02, 3000, runs=16, seed=5)
    assert wilson(at_margin.passed, at_margin.runs)[0] <= ALPHA, at_margin
    beyond = gate_rate(-0.03, 3000, runs=8, seed=6)
    assert beyond.passed == 0, beyond
    equal = gate_rate(0.0, 1000, runs=8, seed=7)
    assert equal.passed >= 7, equal
