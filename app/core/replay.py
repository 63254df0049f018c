"""Automatic mode's replay gate, judged on ground truth. Pure: no I/O.

An automatic deploy makes a version production at once; with the policy's ``replay_gate =
N`` it is first judged on the deployment's own recent past: its last N requests are scored
by the new version beside the current production (``app.controller.replay_gate``), their
ground truth is joined by request id, and the pairs are fed to a ``RolloutAnalysis`` built
from the deployment's policy (:func:`replay_analysis`), so the gate applies the policy's own
metric (``app.core.metric``), audit sample, coverage rule and alpha, with the very tests a
canary's last step uses (``app.core.promotion``). The replayed sample is fixed and looked at
once; the tests are anytime-valid, so they are valid here a fortiori. The labelled route
gets the whole alpha (the agreement route is closed: the gate judges on labels).

It passes only when no guardrail fails (as measured, and as tested) and every test of the
metric shows the candidate non-inferior within the margin on the labelled replayed audit
requests (unlabelled ones at their worst case, or the in-order form up to them, with at
least ``min_feedback_coverage`` labelled). It refuses:

- a guardrail failed, or the labels show the candidate worse than the margin (the reason
  names which, with the labelled pairs);
- non-inferiority not shown: the reason says how many labelled replayed requests it had,
  and about how many it would need (:func:`needs`: from each test's own evidence growth),
  so that an operator can raise ``replay_gate``, wait for ground truth, or roll out by canary;
- no ground truth at all for the replayed requests: refused, unless the policy says labels
  are not required (``min_feedback_coverage: 0``), when it passes on the guardrails alone,
  as the gate did before it read labels, and says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from app.core.analysis import PENDING_MIN, RolloutAnalysis
from app.core.events import DeploymentState, Evidence
from app.core.promotion import Judgement, evidence, guardrail_failures, labels_show_it
from app.core.verdict import Criterion


def replay_analysis(
    before: DeploymentState,
    new: DeploymentState,
    replayed: int,
    kind: str = "classifier",
    error_cap: float | None = None,
) -> RolloutAnalysis:
    """The analysis of a replay of ``replayed`` requests: ``new``'s production (the version
    deployed) as the candidate against ``before``'s, under ``new``'s policy with the
    agreement route closed (the gate judges on labels, at the whole alpha)."""
    policy = new.policy.model_copy(update={"promote_on_agreement": False})
    return RolloutAnalysis.for_policy(
        deployment=before.deployment,
        candidate=new.production.version,
        start_epoch=before.epoch,
        policy=policy,
        started_at=0,
        kind=kind,
        error_cap=error_cap,
        pending_limit=max(replayed + 1, PENDING_MIN),  # every replayed request awaits its label
    )


# The betting test spends evidence learning its bets: it needs more pairs than the ideal
# (Kelly) bettor that knows the mean; this factor covers that in the unit tests' replays.
LEARNING = 1.5
PRIOR_PAIRS = 30


@dataclass(frozen=True)
class Need:
    """One test of the metric on the replayed requests: the pairs whose value it knows (a
    label, or two arms that agree where that settles it), their mean difference, and about
    how many such pairs it would need to show non-inferiority at that mean (None: the mean
    is at or below the null, so no number would show it)."""

    test: str
    pairs: int
    mean: float
    needed_pairs: int | None


def needs(a: RolloutAnalysis) -> list[Need]:
    """Per test: a bettor staking the Kelly fraction on pairs of mean ``mean`` and second
    moment ``s`` about the null ``m`` grows its log-wealth by about ``(mean - m)^2 / (2 s)``
    a pair, so it reaches ``log(1/alpha)`` after ``2 s log(1/alpha) / (mean - m)^2`` pairs;
    times ``LEARNING`` for the test's own learning. The mean and second moment are the
    replay's, shrunk by ``PRIOR_PAIRS`` pseudo-pairs towards an equal candidate (mean 0,
    second moment the disagreement rate), so that a few pairs do not decide the estimate.
    An estimate from what was replayed, never a test."""
    out: list[Need] = []
    for name, worse in a.rollout_worse.items():
        m = a.step_frontier[name].m
        count, squares = a.moments.get(name, [0.0, 0.0])
        if not worse.n:
            out.append(Need(name, 0, 0.0, None))
            continue
        mean = worse.mean * worse.n / (worse.n + PRIOR_PAIRS)
        second = (squares + PRIOR_PAIRS * max(a.disagreement, 0.01)) / (count + PRIOR_PAIRS)
        edge = mean - m
        if edge <= 0:
            out.append(Need(name, worse.n, worse.mean, None))
            continue
        spread = max(second - 2 * m * mean + m * m, 1e-6)
        needed = math.ceil(LEARNING * 2 * spread * math.log(1 / a.alpha_labels) / edge**2)
        out.append(Need(name, worse.n, worse.mean, max(needed, worse.n + 1)))
    return out


def requests_needed(a: RolloutAnalysis, found: list[Need]) -> int | None:
    """Replayed requests needed for every test at this replay's share of known pairs per
    request (a recall test knows only its class's labelled requests)."""
    worst = 0
    for need in found:
        if need.needed_pairs is None or need.pairs == 0:
            return None
        worst = max(worst, math.ceil(need.needed_pairs * a.compared / need.pairs))
    return worst


@dataclass(frozen=True)
class GateResult:
    passed: bool
    reason: str
    evidence: Evidence


def judge(state: DeploymentState, a: RolloutAnalysis, wanted: int) -> GateResult:
    """The gate's verdict for ``state`` (the state the deploy would make) on the replayed
    evidence ``a`` (``wanted``: the policy's ``replay_gate``, the requests asked for)."""
    p = state.policy
    g = p.guardrails
    replayed = a.compared
    problems = guardrail_failures(state, a)
    if replayed and a.disagreement > g.max_disagreement:
        problems.append(f"disagreement {a.disagreement:.1%} above {g.max_disagreement:.1%}")
    if replayed and a.candidate_arm.error_rate > g.max_candidate_error_rate:
        problems.append(
            f"error rate {a.candidate_arm.error_rate:.2%} above {g.max_candidate_error_rate:.2%}"
        )
    worse = [t for t, test in a.rollout_worse.items() if test.rejected]
    if worse:
        problems.append(
            f"the labels show it worse than production by more than the margin on "
            f"{', '.join(worse)} ({_pairs(a)})"
        )
    shown = (
        not problems
        and a.labelled > 0
        and not a.unbounded
        and labels_show_it(a, p.min_feedback_coverage)
    )
    outcome = Criterion.FAILED if problems else (Criterion.PASSED if shown else Criterion.PENDING)
    found = needs(a)
    ev = evidence(state, a, Judgement(outcome, "replay", ""))
    ev.tests["replay"] = {
        "wanted": wanted,
        "replayed": replayed,
        "labelled": a.labelled,
        "audit_labelled": a.audit_labelled,
        "needs": [
            {"test": n.test, "pairs": n.pairs, "mean": n.mean, "needed_pairs": n.needed_pairs}
            for n in found
        ],
        "requests_needed": requests_needed(a, found),
    }
    of = f"{replayed} replayed requests of {state.deployment}"
    if not replayed:
        return GateResult(
            False,
            f"replay gate: no recent requests of {state.deployment} to replay "
            f"(replay_gate {wanted})",
            ev,
        )
    if problems:
        return GateResult(False, f"replay gate failed on {of}: " + "; ".join(problems), ev)
    if not a.labelled:
        if p.min_feedback_coverage == 0:
            return GateResult(
                True,
                f"replay gate passed on the guardrails alone: no ground truth for any of the "
                f"{of}, and the policy requires none (min_feedback_coverage 0); "
                f"disagreement {a.disagreement:.1%}, error rate "
                f"{a.candidate_arm.error_rate:.2%}",
                ev,
            )
        return GateResult(
            False,
            f"replay gate refused: no ground truth for any of the {of}, and the gate judges "
            f"on labels (min_feedback_coverage {p.min_feedback_coverage:g}); send their "
            "feedback, or set min_feedback_coverage 0 to gate on the guardrails alone",
            ev,
        )
    if a.unbounded:
        return GateResult(
            False,
            "replay gate refused: a regressor without regression.error_cap in its "
            "deployment.yaml cannot be judged on its feedback (set the cap)",
            ev,
        )
    if shown:
        return GateResult(
            True,
            f"replay gate passed on {of} ({a.labelled} labelled): "
            f"{_metric(a, state)} non-inferior within the margin on the labels ({_pairs(a)}, "
            f"alpha {a.alpha_labels:g}); disagreement {a.disagreement:.1%}, error rate "
            f"{a.candidate_arm.error_rate:.2%}",
            ev,
        )
    return GateResult(False, _not_shown(state, a, wanted, found), ev)


def _not_shown(state: DeploymentState, a: RolloutAnalysis, wanted: int, found: list[Need]) -> str:
    p = state.policy
    had = (
        f"replay gate refused: {_metric(a, state)} not shown non-inferior within the margin "
        f"{p.non_inferiority_margin:g} on {a.compared} replayed requests of {state.deployment} "
        f"(replay_gate {wanted}), {a.audit_labelled} of them labelled audit requests "
        f"(coverage {max(a.step_coverage, a.tested_coverage):.0%}, "
        f"{p.min_feedback_coverage:.0%} needed; {_pairs(a)})"
    )
    needed = requests_needed(a, found)
    if needed is None:
        flat = [n.test for n in found if n.needed_pairs is None]
        return (
            f"{had}; on {', '.join(flat)} the labels so far point to no better than the "
            f"margin (mean differences {_means(found)}): more of the same would not show "
            "it; roll out by canary, or deploy by hand"
        )
    labelled = math.ceil(needed * a.audit_labelled / max(a.compared, 1))
    return (
        f"{had}; at the differences seen (mean differences {_means(found)}) about "
        f"{needed:,} replayed requests would be needed ({labelled:,} of them labelled audit "
        f"requests, at this replay's share): set replay_gate to about {needed:,} once that "
        "many have their ground truth, or roll out by canary"
    )


def _pairs(a: RolloutAnalysis) -> str:
    return ", ".join(f"{t}: {test.n} labelled pairs" for t, test in a.step_frontier.items())


def _means(found: list[Need]) -> str:
    return ", ".join(f"{n.test} {n.mean:+.3f}" for n in found)


def _metric(a: RolloutAnalysis, state: DeploymentState) -> str:
    return "capped absolute error" if a.regressor else state.policy.metric.kind.value
