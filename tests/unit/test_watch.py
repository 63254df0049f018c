"""The post-promotion watch: the change detector, the watch's evidence and decisions, and the
state transitions that start, end and act on a watch. Pure; tables."""

from __future__ import annotations

import math
import random

import orjson
import pytest

from app.controller.partition_snapshot import PartitionSnapshot, latest_values
from app.core.command_steps import apply
from app.core.events import (
    Action,
    ArmResult,
    Comparison,
    ControlCommand,
    DecisionAction,
    DeploymentState,
    Evidence,
    Feedback,
    Mode,
    ModelOutput,
    Phase,
    Role,
    SourceOffset,
    Watch,
)
from app.core.policy import Metric, MetricKind, Policy, WatchPolicy
from app.core.rollout_view import watch_view
from app.core.state_machine import controller_step, watch_step
from app.core.topics import Topic
from app.core.verdict import Verdict
from app.core.watch import STAKES, ChangeDetector, WatchAnalysis, WatchVerdict, decide_watch
from tests.builders import V1, V2, V3, state

# -- the detector ---------------------------------------------------------------------------


def brute_force(xs: list[float], m: float, lo: float) -> float:
    """``M_t`` from its definition: the mixture over stakes and start times j of
    ``prod_{i=j..t} (1 + lambda (x_i - m))``, weights 1/(j(j+1)), not-yet-started ones at 1."""
    t = len(xs)
    room = m - lo if m > lo else 1.0 - lo
    total = 0.0
    for c in STAKES:
        lam = c / room
        started = sum(
            (1.0 / (j * (j + 1))) * math.prod(1 + lam * (x - m) for x in xs[j - 1 :])
            for j in range(1, t + 1)
        )
        total += started + 1.0 / (t + 1)
    return total / len(STAKES)


@pytest.mark.parametrize(
    ("xs", "m", "lo"),
    [
        ([0.0, 1.0, 0.0, 0.0, 1.0], 0.2, 0.0),
        ([1.0] * 8, 0.2, 0.0),
        ([0.0] * 6, 0.0, 0.0),
        ([-1.0, 1.0, 0.0, 1.0, 1.0, -1.0, 1.0], 0.02, -1.0),
        ([0.5, -0.25, 1.0], 0.05, -1.0),
    ],
)
def test_the_recursion_is_the_mixture_over_start_times(
    xs: list[float], m: float, lo: float
) -> None:
    d = ChangeDetector(m=m, alpha=1e-12, lo=lo)  # never alarms: every value is computed
    for i, x in enumerate(xs, start=1):
        d.update(x)
        assert math.exp(d.log_value) == pytest.approx(brute_force(xs[:i], m, lo), rel=1e-9)


@pytest.mark.parametrize(
    ("name", "xs", "m", "lo"),
    [
        ("exactly at the null", [0.2] * 20_000, 0.2, 0.0),
        ("below the null", [0.0] * 20_000, 0.2, 0.0),
        ("alternating around it", [1.0, -1.0] * 10_000, 0.0, -1.0),
        ("equal models (no disagreement)", [0.0] * 20_000, 0.02, -1.0),
    ],
)
def test_no_alarm_when_nothing_changes(name: str, xs: list[float], m: float, lo: float) -> None:
    d = ChangeDetector(m=m, alpha=0.01, lo=lo)
    for x in xs:
        d.update(x)
    assert not d.alarmed, name
    assert d.max_log_value <= math.log(2.0)


def degraded(n_before: int, n_after: int, rate_after: float, seed: int) -> list[float]:
    """Paired degradations in {-1, 0, 1}: equal models (5% of pairs each way) for
    ``n_before``, then the new model wrong on ``rate_after`` of pairs more than the old."""
    rng = random.Random(seed)
    xs = [rng.choice([1.0, -1.0]) if rng.random() < 0.1 else 0.0 for _ in range(n_before)]
    for _ in range(n_after):
        u = rng.random()
        xs.append(1.0 if u < 0.05 + rate_after else (-1.0 if u < 0.1 + rate_after else 0.0))
    return xs


@pytest.mark.parametrize(
    ("n_before", "rate_after", "within"),
    [
        (0, 0.30, 150),  # bad from the start
        (500, 0.30, 250),  # a change after 500 healthy pairs: a little more to overcome
        (2000, 0.15, 1200),
    ],
)
def test_a_degradation_after_a_change_is_detected(
    n_before: int, rate_after: float, within: int
) -> None:
    xs = degraded(n_before, within, rate_after, seed=n_before)
    d = ChangeDetector(m=0.02, alpha=0.01, lo=-1.0)
    alarm_at = None
    for i, x in enumerate(xs):
        d.update(x)
        if d.alarmed and alarm_at is None:
            alarm_at = i
    assert alarm_at is not None and alarm_at >= n_before


def test_false_alarms_stay_below_alpha_at_the_null_boundary() -> None:
    """300 runs of 2,000 pairs whose mean degradation is exactly the margin: the alarm
    rate is at most alpha (Ville), here with room to spare (a 3-sigma allowance)."""
    alpha, runs, n, m = 0.05, 300, 2000, 0.02
    rng = random.Random(11)
    alarms = 0
    for _ in range(runs):
        d = ChangeDetector(m=m, alpha=alpha, lo=-1.0)
        for _ in range(n):
            u = rng.random()
            d.update(1.0 if u < 0.06 else (-1.0 if u < 0.10 else 0.0))  # mean 0.06-0.04
            if d.alarmed:
                alarms += 1
                break
    assert alarms / runs <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / runs)


@pytest.mark.parametrize(
    ("m", "alpha", "x"),
    [(1.0, 0.05, None), (-0.5, 0.05, None), (0.2, 0.0, None), (0.2, 0.05, 1.5)],
)
def test_bad_parameters_and_observations_are_refused(
    m: float, alpha: float, x: float | None
) -> None:
    with pytest.raises(ValueError):
        d = ChangeDetector(m=m, alpha=alpha)
        if x is not None:
            d.update(x)


# -- the watch's evidence and decisions -----------------------------------------------------

T0 = 1_000_000
WINDOW = 60_000


def watched(epoch: int = 9, **policy: object) -> DeploymentState:
    """Version 2 promoted over version 1 at ``epoch``, watched for a minute from T0."""
    return state(
        candidate=None,
        production=V2,
        epoch=epoch,
        phase=Phase.STABLE,
        policy=Policy(**policy),  # type: ignore[arg-type]
    ).model_copy(
        update={
            "history": [V1],
            "watch": Watch(previous=V1, epoch=epoch, started_at=T0, until=T0 + WINDOW),
        }
    )


def comparison(
    i: int, new: str, old: str, *, epoch: int = 9, watch: bool = True, prev: str = "1"
) -> Comparison:
    def arm(version: str, label: str) -> ArmResult:
        return ArmResult(
            version=version,
            sha256=version * 64,
            output=ModelOutput(label=label, scores=[0.5, 0.5]),
            latency_ms=0.01,
        )

    return Comparison(
        request_id=f"r{i}",
        deployment="fraud",
        mode=Mode.CANARY,
        epoch=epoch,
        source=SourceOffset(topic=Topic.REQUESTS, partition=0, offset=i),
        served_by=Role.PRODUCTION,
        production=arm("2", new),
        candidate=arm(prev, old),
        agree=new == old,
        score_delta=0.0,
        audit=True,
        watch=watch,
    )


def feed(
    w: WatchAnalysis, n: int, *, disagree_every: int, new_wrong: bool, label: bool = True
) -> None:
    """``n`` pairs; every ``disagree_every``-th disagrees, and its label says the new
    production is wrong (``new_wrong``) or right."""
    for i in range(n):
        differ = i % disagree_every == 0
        new, old = ("fraud", "legit") if differ else ("legit", "legit")
        w.add_comparison(comparison(i, new, old), at=T0 + i)
        if label:
            truth = (old if new_wrong else new) if differ else "legit"
            w.add_feedback(
                Feedback(request_id=f"r{i}", deployment="fraud", label=truth, observed_at=0),
                at=T0 + i,
            )


@pytest.mark.parametrize(
    ("name", "n", "disagree_every", "new_wrong", "label", "clock", "verdict", "says"),
    [
        ("degrades on labels", 400, 5, True, True, T0 + 1000, WatchVerdict.ROLLBACK, "worse"),
        ("disagrees above the ceiling", 300, 2, False, False, T0, WatchVerdict.ROLLBACK, "ceiling"),
        ("healthy, window not over", 400, 10, False, True, T0 + 1000, WatchVerdict.HOLD, ""),
        ("healthy, window over", 400, 10, False, True, T0 + WINDOW, WatchVerdict.END, "ended"),
        ("no labels, window over", 400, 10, False, False, T0 + WINDOW, WatchVerdict.END, "0 lab"),
    ],
)
def test_the_watch_decides_by_its_detectors_and_window(
    name: str,
    n: int,
    disagree_every: int,
    new_wrong: bool,
    label: bool,
    clock: int,
    verdict: WatchVerdict,
    says: str,
) -> None:
    st = watched(metric=Metric(kind=MetricKind.ACCURACY))
    w = WatchAnalysis.for_state(st)
    feed(w, n, disagree_every=disagree_every, new_wrong=new_wrong, label=label)
    w.tick(clock)
    d = decide_watch(st, w)
    assert d.verdict is verdict, (name, d.reason)
    assert says in d.reason
    assert d.evidence.samples["watch_paired"] == n
    assert d.evidence.tests["watch"]["previous"] == "1"


def test_recall_degradation_on_the_fraud_class_is_a_rollback() -> None:
    """The fraud default (per-class recall): a new production that stops flagging frauds
    is rolled back though its accuracy barely moves."""
    st = watched(
        metric=Metric(
            kind=MetricKind.RECALL,
            classes=["legit", "fraud"],
            class_margins={"fraud": 0.05, "legit": 0.02},
        )
    )
    w = WatchAnalysis.for_state(st)
    for i in range(600):
        fraud = i % 10 == 0
        new, old = ("legit", "fraud") if fraud else ("legit", "legit")
        w.add_comparison(comparison(i, new, old), at=T0 + i)
        w.add_feedback(
            Feedback(
                request_id=f"r{i}",
                deployment="fraud",
                label="fraud" if fraud else "legit",
                observed_at=0,
            )
        )
    d = decide_watch(st, w)
    assert d.verdict is WatchVerdict.ROLLBACK and "recall:fraud" in d.reason


@pytest.mark.parametrize(
    ("name", "c"),
    [
        ("not a watch comparison", comparison(1, "legit", "legit", watch=False)),
        ("before the promotion", comparison(1, "legit", "legit", epoch=8)),
        ("another previous version", comparison(1, "legit", "legit", prev="3")),
    ],
)
def test_only_this_watch_s_comparisons_count(name: str, c: Comparison) -> None:
    w = WatchAnalysis.for_state(watched())
    assert not w.add_comparison(c), name
    assert w.paired == 0


def test_a_watch_ends_after_its_requests_when_the_policy_says_so() -> None:
    st = watched(watch=WatchPolicy(window_requests=100))
    w = WatchAnalysis.for_state(st)
    feed(w, 99, disagree_every=50, new_wrong=False)
    assert decide_watch(st, w).verdict is WatchVerdict.HOLD
    feed(w, 101, disagree_every=50, new_wrong=False)
    assert decide_watch(st, w).verdict is WatchVerdict.END


def test_the_watch_survives_a_snapshot() -> None:
    st = watched(metric=Metric(kind=MetricKind.ACCURACY))
    w = WatchAnalysis.for_state(st)
    feed(w, 150, disagree_every=5, new_wrong=True)
    w.add_comparison(comparison(999, "legit", "fraud"), at=T0)  # still waiting for its label
    back = WatchAnalysis.from_json(w.to_json(), w.pending.chunk_records())
    assert back.to_json() == w.to_json()
    for more in (w, back):
        feed(more, 150, disagree_every=5, new_wrong=True)
    assert back.to_json() == w.to_json()


# -- state transitions ----------------------------------------------------------------------

NOW = 5_000_000


def cmd(action: Action, **fields: object) -> ControlCommand:
    return ControlCommand(command_id="c", deployment="fraud", action=action, **fields)  # type: ignore[arg-type]


def promoted_by(how: str, window_s: int = 600) -> DeploymentState:
    st = state(weight=1.0, policy=Policy(watch=WatchPolicy(window_s=window_s)), epoch=4)
    if how == "controller":
        out = controller_step(st, Verdict.PROMOTE, "last step passed", NOW, Evidence())
    elif how == "promote":
        out = apply(st, cmd(Action.PROMOTE), NOW)
    else:
        out = apply(st, cmd(Action.SET_MODE, mode=Mode.AUTOMATIC), NOW)
    assert out.state is not None
    return out.state


@pytest.mark.parametrize("how", ["controller", "promote", "set_mode automatic"])
def test_a_promotion_starts_the_watch_with_the_previous_production(how: str) -> None:
    st = promoted_by(how)
    assert st.production == V2 and st.candidate is None and st.history[-1] == V1
    assert st.watch == Watch(previous=V1, epoch=5, started_at=NOW, until=NOW + 600_000)
    assert st.phase is Phase.STABLE  # the wire form of the existing fields is as before


def test_no_watch_when_the_policy_turns_it_off() -> None:
    assert promoted_by("controller", window_s=0).watch is None


@pytest.mark.parametrize(
    ("name", "command", "production"),
    [
        ("operator rollback", cmd(Action.ROLLBACK), V1),
        ("a new canary", cmd(Action.DEPLOY, version="3", mode=Mode.CANARY), V2),
        ("an automatic deploy", cmd(Action.DEPLOY, version="3", mode=Mode.AUTOMATIC), V3),
        ("set_mode", cmd(Action.SET_MODE, mode=Mode.SHADOW), V2),
    ],
)
def test_commands_during_a_watch(name: str, command: ControlCommand, production: object) -> None:
    st = promoted_by("controller")
    out = apply(st, command, NOW + 1, candidate=V3)
    assert out.state is not None, out.decision.reason
    assert out.state.production == production
    changed = out.state.production != st.production or out.state.candidate is not None
    assert (out.state.watch is None) == changed, name


@pytest.mark.parametrize(
    ("rollback", "action", "production", "history"),
    [(True, DecisionAction.ROLLBACK, V1, []), (False, DecisionAction.WATCH_ENDED, V2, [V1])],
)
def test_the_watch_rolls_back_or_ends(
    rollback: bool, action: DecisionAction, production: object, history: list[object]
) -> None:
    st = promoted_by("controller")
    ev = Evidence(samples={"watch_paired": 10})
    out = watch_step(st, rollback, "why", NOW + 10, ev)
    assert out.state is not None and out.state.watch is None
    assert out.state.production == production and out.state.history == history
    assert out.state.epoch == st.epoch + 1 and out.state.candidate is None
    d = out.decision
    assert d.action is action and d.accepted and d.decided_by == "controller"
    assert d.evidence == ev and d.reason == "why"


def test_watch_step_needs_a_watch() -> None:
    with pytest.raises(ValueError):
        watch_step(state(candidate=None), True, "why", NOW, Evidence())


def test_a_default_watch_policy_is_written_as_before() -> None:
    assert "watch" not in Policy().model_dump(mode="json")
    custom = Policy(watch=WatchPolicy(window_s=30))
    assert custom.model_dump(mode="json")["watch"]["window_s"] == 30
    assert Policy.model_validate(custom.model_dump(mode="json")) == custom
    assert Policy.model_validate(Policy().model_dump(mode="json")) == Policy()


# -- what the dashboard and the snapshots carry ---------------------------------------------


def test_the_view_shows_the_watch_and_its_evidence() -> None:
    st = watched()
    assert watch_view(state(candidate=None), None, T0) is None
    w = WatchAnalysis.for_state(st)
    feed(w, 50, disagree_every=5, new_wrong=False)
    view = watch_view(st, w, T0 + 15_000)
    assert view is not None
    assert (view["production"], view["previous"], view["remaining_s"]) == ("2", "1", 45.0)
    assert view["evidence"]["samples"]["watch_paired"] == 50
    other = WatchAnalysis.for_state(watched(epoch=3))  # an earlier watch's evidence: not shown
    assert watch_view(st, other, T0)["evidence"] is None  # type: ignore[index]


def test_the_partition_snapshot_carries_the_watches() -> None:
    w = WatchAnalysis.for_state(watched())
    feed(w, 40, disagree_every=4, new_wrong=True)
    snap = PartitionSnapshot(1, 10, 20, {}, {"fraud": w})
    records = latest_values(snap.records())
    back = PartitionSnapshot.from_records(1, records)
    assert back.watches["fraud"].to_json() == w.to_json()
    assert (back.comparisons_offset, back.feedback_offset) == (10, 20)
    header = orjson.loads(records[b"p1"])
    header["watches"] = []  # written before the watch existed
    older = {**records, b"p1": orjson.dumps(header)}
    assert PartitionSnapshot.from_records(1, older).watches == {}


@pytest.mark.parametrize(
    ("gap_ms", "labelled", "let_go"),
    [(0, 300, 0), (59_000, 300, 0), (61_000, 0, 300)],
)
def test_a_label_read_before_its_watch_comparison_is_held_and_joined(
    gap_ms: int, labelled: int, let_go: int
) -> None:
    """Each label read one record before its comparison, which comes ``gap_ms`` later:
    held and joined within the window, let go (and counted) past it."""
    w = WatchAnalysis.for_state(watched())
    for i in range(301):
        if i < 300:
            early = Feedback(request_id=f"r{i}", deployment="fraud", label="legit", observed_at=0)
            assert not w.add_feedback(early, at=T0 + i)
        if i >= 1:
            w.add_comparison(comparison(i - 1, "legit", "legit"), at=T0 + i - 1 + gap_ms)
    samples = w.evidence().samples
    assert (w.labelled, samples["watch_labels_early_dropped"]) == (labelled, let_go)
    assert samples["watch_labels_early"] == 0
