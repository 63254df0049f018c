"""What became of each version of a ``rollout fleet`` run, judged against its hidden truth.

Pure: no I/O. The driver (``app.harness.fleet``) registers each published version with its
measured quality, and feeds every ``DeploymentState`` (each epoch, in order per deployment)
and every ``DecisionEvent`` it reads; :func:`outcomes` replays them into one
:class:`VersionFate` per version, and :func:`summarize` turns those into the report's
figures and goals. :func:`request_tally` counts lost and duplicated requests by request
sequence number, as ``app.chaos.tally`` does by request id.

A version's outcome comes from the states, which name versions: it is *promoted* when it
becomes production (and *rolled back* if production later returns to the version it
replaced), *rolled back* when it leaves the candidate slot without becoming production
(*superseded* when the decision that removed it was a ``supersede``), and from the decisions
for what never reaches a state: *rejected* (a refused ``publish``, ``validate``, a full
``queue``, a start that could not be). A decision names its version by its ``command_id``
(the publication's ``publish_id``) or, failing that, by the ``version`` in its evidence.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from app.core.events import DecisionAction, DecisionEvent, DeploymentState


class Outcome(StrEnum):
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    REJECTED = "rejected"  # at validation (or the publication refused, or a full queue)
    SUPERSEDED = "superseded"
    IN_FLIGHT = "in_flight"


QUALITY = ("better", "equal", "worse_within", "worse_beyond", "much_worse")
INVALID = ("broken", "tampered", "incompatible")
GOOD = ("better", "equal")
BAD = ("worse_beyond", "much_worse")


@dataclass(frozen=True)
class Bands:
    """The measured-difference classes (candidate - production quality, on the policy's
    scale: accuracy, or 1 - capped absolute error)."""

    margin: float  # the policy's non-inferiority margin
    equal: float = 0.01  # |difference| at most this: equal
    much: float = 0.15  # worse by at least this: much worse

    def classify(self, delta: float) -> str:
        if delta > self.equal:
            return "better"
        if delta >= -self.equal:
            return "equal"
        if delta >= -self.margin:
            return "worse_within"
        return "worse_beyond" if delta > -self.much else "much_worse"


@dataclass(frozen=True)
class Published:
    """A version the simulator published: ``kind`` is what it made (a quality draw,
    ``broken``, ``tampered``, ``incompatible`` or ``slow``); ``quality`` the measured quality
    (None when it is not a loadable model of the deployment's signature)."""

    deployment: str
    version: str
    publish_id: str
    mode: str
    kind: str
    quality: float | None
    published_ms: int


@dataclass(frozen=True)
class VersionFate:
    published: Published
    outcome: Outcome
    decided_ms: int | None
    truth: str  # the measured class against the production it faced (or ``kind``)
    delta: float | None  # its quality minus that production's
    served: bool  # it was a candidate or production at some epoch
    promoted_ever: bool
    reason: str = ""  # the reason of the decision that settled its outcome (empty in flight)

    @property
    def seconds_to_decision(self) -> float | None:
        if self.decided_ms is None:
            return None
        return max(0.0, (self.decided_ms - self.published.published_ms) / 1000.0)


@dataclass
class _Life:
    outcome: Outcome = Outcome.IN_FLIGHT
    decided_ms: int | None = None
    baseline: str | None = None  # the production it was judged against
    served: bool = False
    promoted_ever: bool = False
    replaced: str | None = None  # the production it replaced when promoted
    reason: str = ""

    def decide(self, outcome: Outcome, at: int, reason: str = "") -> None:
        self.outcome, self.decided_ms, self.reason = outcome, at, reason


# A publication's answers that leave the state as it was (they share its epoch).
_ANSWERS = (DecisionAction.PUBLISH, DecisionAction.VALIDATE)


def _version_named(event: DecisionEvent, by_publish_id: Mapping[str, str]) -> str | None:
    if event.command_id is not None and event.command_id in by_publish_id:
        return by_publish_id[event.command_id]
    named = event.evidence.metrics.get("version")
    return str(named) if named is not None else None


def outcomes(
    published: Sequence[Published],
    states: Iterable[DeploymentState],
    decisions: Iterable[DecisionEvent],
    bands: Bands,
    initial: Mapping[str, tuple[str, float]],
) -> list[VersionFate]:
    """Each published version's fate. ``states``: in epoch order per deployment;
    ``initial``: each deployment's first production (version, measured quality)."""
    ours = {(p.deployment, p.version): p for p in published}
    by_publish_id = {p.publish_id: p.version for p in published}
    lives = {key: _Life() for key in ours}
    actions: dict[tuple[str, int], set[DecisionAction]] = {}
    reasons: dict[tuple[str, int], str] = {}  # the accepted decision that made each epoch
    for event in decisions:
        actions.setdefault((event.deployment, event.epoch), set()).add(event.action)
        if event.accepted and event.action not in _ANSWERS:
            reasons[(event.deployment, event.epoch)] = f"{event.action}: {event.reason}"
        _apply_decision(event, _version_named(event, by_publish_id), lives)
    previous: dict[str, DeploymentState] = {}
    for state in states:
        before = previous.get(state.deployment)
        if before is not None and state.epoch <= before.epoch:
            continue
        previous[state.deployment] = state
        key = (state.deployment, state.epoch)
        _apply_state(before, state, lives, actions.get(key, set()), reasons.get(key, ""))
    quality = {key: p.quality for key, p in ours.items()}
    for name, (version, q) in initial.items():
        quality.setdefault((name, version), q)
    return [_fate(p, lives[key], quality, bands) for key, p in ours.items()]


def _apply_decision(
    event: DecisionEvent, version: str | None, lives: dict[tuple[str, str], _Life]
) -> None:
    """A refused step of a publication (the publication itself, its validation, a full
    queue, a start that could not be): the version is rejected, unless it serves later."""
    life = lives.get((event.deployment, version)) if version is not None else None
    if life is not None and life.outcome is Outcome.IN_FLIGHT and not event.accepted:
        life.decide(Outcome.REJECTED, event.at, f"{event.action}: {event.reason}")


def _apply_state(
    before: DeploymentState | None,
    state: DeploymentState,
    lives: dict[tuple[str, str], _Life],
    actions: set[DecisionAction],
    reason: str = "",
) -> None:
    name, at = state.deployment, state.updated_at
    production = state.production.version
    for version in {production, state.candidate.version if state.candidate else None}:
        life = lives.get((name, version)) if version is not None else None
        if life is not None and not life.served:
            life.served = True
            life.baseline = before.production.version if before is not None else None
            if life.outcome is Outcome.REJECTED:  # a refusal named it, yet it serves
                life.outcome, life.decided_ms, life.reason = Outcome.IN_FLIGHT, None, ""
    if before is None:
        return
    was = before.production.version
    if production != was:
        gone = lives.get((name, was))
        if gone is not None and gone.promoted_ever and gone.replaced == production:
            gone.decide(Outcome.ROLLED_BACK, at, reason)  # production restored: a rollback
        new = lives.get((name, production))
        if new is not None and new.outcome in (Outcome.IN_FLIGHT, Outcome.ROLLED_BACK):
            new.promoted_ever, new.replaced = True, was
            new.decide(Outcome.PROMOTED, at, reason)
    old = before.candidate.version if before.candidate else None
    now = state.candidate.version if state.candidate else None
    left = lives.get((name, old)) if old is not None else None
    if left is not None and old != now and old != production:
        superseded = DecisionAction.SUPERSEDE in actions
        left.decide(Outcome.SUPERSEDED if superseded else Outcome.ROLLED_BACK, at, reason)


def _fate(
    p: Published,
    life: _Life,
    quality: Mapping[tuple[str, str], float | None],
    bands: Bands,
) -> VersionFate:
    truth, delta = p.kind, None
    base = quality.get((p.deployment, life.baseline)) if life.baseline is not None else None
    if p.kind not in INVALID and p.quality is not None and base is not None:
        delta = p.quality - base
        if p.kind != "slow":
            truth = bands.classify(delta)
    elif p.kind in QUALITY:
        truth = p.kind  # never judged against a production: what it was made as
    return VersionFate(
        p,
        life.outcome,
        life.decided_ms,
        truth,
        delta,
        life.served,
        life.promoted_ever,
        life.reason,
    )


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1, nearest rank), None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass(frozen=True)
class RequestTally:
    sent: int
    answered: int  # requests with at least one committed prediction
    lost: int
    duplicated: int  # committed outputs beyond the first, summed
    dead_lettered: int  # valid requests dead-lettered (each also counts as answered)


def request_tally(
    sent: int, predicted: Iterable[int], dead_lettered: Iterable[int]
) -> RequestTally:
    """Requests ``0 .. sent-1`` (sequence numbers of acknowledged sends); ``predicted`` and
    ``dead_lettered``: the sequence number of each committed output read. Others ignored."""
    counts = np.zeros(sent, dtype=np.int64)
    dead = np.zeros(sent, dtype=np.int64)
    for seq in predicted:
        if 0 <= seq < sent:
            counts[seq] += 1
    for seq in dead_lettered:
        if 0 <= seq < sent:
            dead[seq] += 1
    outputs = counts + dead
    return RequestTally(
        sent=sent,
        answered=int((outputs > 0).sum()),
        lost=int((outputs == 0).sum()),
        duplicated=int(np.maximum(outputs - 1, 0).sum()),
        dead_lettered=int((dead > 0).sum()),
    )


@dataclass(frozen=True)
class Goal:
    name: str
    target: str
    value: str
    met: bool


@dataclass(frozen=True)
class Summary:
    versions: int
    outcomes: dict[str, int]  # outcome -> versions
    by_truth: dict[str, dict[str, int]]  # truth -> outcome -> versions
    by_mode: dict[str, dict[str, int]]  # mode -> outcome -> versions
    bad: int  # versions worse than the margin (judged against a production)
    false_promotions: int  # ... that ended promoted
    false_promotion_rate: float | None
    false_by_mode: dict[str, tuple[int, int]]  # mode -> (false promotions, versions worse)
    promoted_then_restored: int  # bad versions promoted, then rolled back by the watch
    good: int  # better or equal
    good_rolled_back: int
    good_rolled_back_rate: float | None
    # better or equal versions rejected: by a full queue, by the replay gate (automatic
    # mode), or at validation; they never reached production, as if rolled back
    good_rejected: int
    invalid: int  # broken, tampered, incompatible
    invalid_rejected_unserved: int  # ... rejected without ever being a candidate
    slow: int
    slow_promoted: int
    decision_median_s: float | None
    decision_p95_s: float | None
    fields: dict[str, float | int | None] = field(default_factory=dict)


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def summarize(fates: Sequence[VersionFate]) -> Summary:
    outcome_counts = {o.value: sum(1 for f in fates if f.outcome is o) for o in Outcome}
    by_truth: dict[str, dict[str, int]] = {}
    by_mode: dict[str, dict[str, int]] = {}
    for f in fates:
        row = by_truth.setdefault(f.truth, {o.value: 0 for o in Outcome})
        row[f.outcome.value] += 1
        mode = by_mode.setdefault(f.published.mode, {o.value: 0 for o in Outcome})
        mode[f.outcome.value] += 1
    bad = [f for f in fates if f.truth in BAD]
    good = [f for f in fates if f.truth in GOOD]
    invalid = [f for f in fates if f.truth in INVALID]
    slow = [f for f in fates if f.truth == "slow"]
    false = sum(1 for f in bad if f.outcome is Outcome.PROMOTED)
    good_back = sum(1 for f in good if f.outcome is Outcome.ROLLED_BACK)
    times = [t for f in fates if (t := f.seconds_to_decision) is not None]
    return Summary(
        versions=len(fates),
        outcomes=outcome_counts,
        by_truth=by_truth,
        by_mode=by_mode,
        bad=len(bad),
        false_promotions=false,
        false_promotion_rate=_rate(false, len(bad)),
        false_by_mode={
            mode: (
                sum(1 for f in bad if f.published.mode == mode and f.outcome is Outcome.PROMOTED),
                sum(1 for f in bad if f.published.mode == mode),
            )
            for mode in sorted(by_mode)
        },
        promoted_then_restored=sum(
            1 for f in bad if f.promoted_ever and f.outcome is not Outcome.PROMOTED
        ),
        good=len(good),
        good_rolled_back=good_back,
        good_rolled_back_rate=_rate(good_back, len(good)),
        good_rejected=sum(1 for f in good if f.outcome is Outcome.REJECTED),
        invalid=len(invalid),
        invalid_rejected_unserved=sum(
            1 for f in invalid if f.outcome is Outcome.REJECTED and not f.served
        ),
        slow=len(slow),
        slow_promoted=sum(1 for f in slow if f.outcome is Outcome.PROMOTED),
        decision_median_s=percentile(times, 0.5),
        decision_p95_s=percentile(times, 0.95),
    )


def goals(summary: Summary, requests: RequestTally, alpha: float) -> list[Goal]:
    """The issue's goals for a run, each with its figure."""
    in_flight = summary.outcomes[Outcome.IN_FLIGHT.value]
    false_rate = summary.false_promotion_rate
    # A good version refused (a full queue, the replay gate) is lost like one rolled back:
    # the goal counts both.
    good_lost = summary.good_rolled_back + summary.good_rejected
    back_rate = _rate(good_lost, summary.good)
    return [
        Goal(
            "every version decided within the run",
            "0 in flight",
            f"{in_flight} in flight of {summary.versions}",
            in_flight == 0,
        ),
        Goal(
            "requests lost / duplicated",
            "0 / 0",
            f"{requests.lost:,} / {requests.duplicated:,}",
            requests.lost == 0 and requests.duplicated == 0,
        ),
        Goal(
            "broken and incompatible versions rejected before serving",
            "100%",
            f"{summary.invalid_rejected_unserved} of {summary.invalid}",
            summary.invalid_rejected_unserved == summary.invalid,
        ),
        Goal(
            "false promotions among versions worse than the margin",
            f"<= alpha ({alpha:.0%})",
            _share(summary.false_promotions, summary.bad, false_rate),
            false_rate is None or false_rate <= alpha,
        ),
        Goal(
            "better or equal versions rolled back or refused",
            "< 5%",
            _share(good_lost, summary.good, back_rate),
            back_rate is None or back_rate < 0.05,
        ),
    ]


def _share(part: int, whole: int, rate: float | None) -> str:
    return f"{part} of {whole}" + (f" ({rate:.1%})" if rate is not None else "")
