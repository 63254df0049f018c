"""``rollout bench``'s results: every line's figures and the goals they are held to (pure: no
I/O). Their Markdown tables are ``app.bench.tables``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from app.bench.breakdown import Breakdown

C_PARSE = "C_parse (decode + encode)"


FAN_OUT = "fan-out-2 (C_parse, 2 outputs)"


PROD_ONLY = "worker: production only"


CANARY = "worker: canary 10% (paired)"


SHADOW = "worker: shadow 100%"


# The other model kinds (``app.bench.kinds``), production only, each on its own backlog.
MULTI_CLASS = "worker: 3-class classifier (production only)"


TENSOR = "worker: 8x8 tensor input (production only)"


def ceiling_of(name: str) -> str | None:
    """The ceiling a line is held to: shadow's is fan-out-2, every other worker line's
    C_parse; a ceiling has none."""
    if not name.startswith("worker"):
        return None
    return FAN_OUT if "shadow" in name else C_PARSE


@dataclass(frozen=True)
class Line:
    name: str
    records: int
    seconds: float
    cpu_s: float  # this process (the worker's loop, the load's producer)
    broker_cpu_s: float = 0.0
    rates: tuple[float, ...] = ()  # every round's records/s (this line is their median)

    @property
    def per_second(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0


def median_line(runs: list[Line]) -> Line:
    ordered = sorted(runs, key=lambda x: x.per_second)
    middle = ordered[len(ordered) // 2]
    return replace(middle, rates=tuple(x.per_second for x in runs))


# The open-loop rates every system is measured at (requests/s), beside the worker's half load.
LOW_RATE, HIGH_RATE = 100.0, 1000.0
# The latency goals at HIGH_RATE, and at half the sustained rate (ms).
P50_GOAL_MS, P99_GOAL_MS, HALF_LOAD_P99_GOAL_MS = 10.0, 40.0, 100.0
# An open-loop run kept up when this share of its requests was answered with a p99 under
# this: a backlog growing through the run shows as a p99 of seconds.
KEPT_UP_ANSWERED, KEPT_UP_P99_MS = 0.99, 500.0


@dataclass(frozen=True)
class Latency:
    name: str
    rate: float
    requests: int
    answered: int
    p50_ms: float
    p99_ms: float
    half_load: bool = False  # at half the line's sustained rate
    # How the line's rate was chosen: "" (a fixed rate), RAMP (a step of the search for the
    # open-loop sustained rate), HALF_OPEN_LOOP or HALF_DRAIN (half of which sustained rate).
    basis: str = ""


# The sustained rate a half-load line halves: the highest open-loop rate the system kept up
# with (load generator, reader, broker and worker sharing the machine), or the rate the
# worker drained a backlog at alone (no generator or reader running beside it).
RAMP, HALF_OPEN_LOOP, HALF_DRAIN = "ramp", "half open-loop", "half drain"


def kept_up(x: Latency) -> bool:
    """The system kept up with the run's open-loop rate."""
    return x.answered >= KEPT_UP_ANSWERED * x.requests and x.p99_ms <= KEPT_UP_P99_MS


@dataclass(frozen=True)
class PeerLine:
    """A peer's drain of a backlog (``app.bench.peers``)."""

    name: str
    guarantee: str
    records: int
    seconds: float
    cpu_s: float

    @property
    def per_second(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class SwapReport:
    swaps: int
    rate: float
    sent: int
    answered: int
    lost: int
    duplicated: int
    promote_ms: list[float]
    rollback_ms: list[float]
    cpu_s: dict[str, float]
    seconds: float


@dataclass(frozen=True)
class PaceReport:
    comparisons: int
    seconds: float
    snapshots: int
    max_lag_records: int
    max_lag_s: float
    caught_up_s: float | None  # from the last comparison written to a snapshot covering it
    cpu_s: dict[str, float] = field(default_factory=dict)
    # Comparisons of earlier phases it still had to cover before the pace's backlog was
    # written, and how long that took (None: not within the wait).
    earlier_backlog: int = 0
    earlier_caught_up_s: float | None = 0.0

    @property
    def per_second(self) -> float:
        return self.comparisons / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class Report:
    lines: list[Line]
    latencies: list[Latency]
    wait_ms: int
    peers: list[PeerLine] = field(default_factory=list)
    swaps: SwapReport | None = None
    pace: PaceReport | None = None
    breakdowns: list[Breakdown] = field(default_factory=list)

    def rate(self, name: str) -> float:
        return next((x.per_second for x in self.lines if x.name == name), 0.0)

    def latency(self, name: str, rate: float) -> Latency | None:
        return next(
            (x for x in self.latencies if x.name == name and x.rate == rate and not x.basis),
            None,
        )

    def best_peer_latency(self, rate: float, p99: bool) -> Latency | None:
        """The peer with the lowest p50 (or p99) at ``rate``."""
        found = [x for p in self.peers if (x := self.latency(p.name, rate)) is not None]
        return min(found, key=lambda x: x.p99_ms if p99 else x.p50_ms, default=None)

    def ratio(self, line: Line) -> tuple[str, float] | None:
        """``line``'s ceiling and its rate as a share of the ceiling's, when both were
        measured in this run."""
        ceiling = ceiling_of(line.name)
        rate = self.rate(ceiling) if ceiling else 0.0
        return (ceiling, line.per_second / rate) if ceiling and rate else None

    def to_json(self) -> dict[str, Any]:
        return {
            "throughput": [
                asdict(x)
                | {"per_second": x.per_second}
                | dict(zip(("ceiling", "ratio"), self.ratio(x) or (None, None), strict=True))
                for x in self.lines
            ],
            "latency": [asdict(x) for x in self.latencies],
            "batch_max_wait_ms": self.wait_ms,
            "peers": [asdict(p) | {"per_second": p.per_second} for p in self.peers],
            "breakdowns": [asdict(b) for b in self.breakdowns],
            "swaps": asdict(self.swaps) if self.swaps else None,
            "controller_pace": asdict(self.pace) | {"per_second": self.pace.per_second}
            if self.pace
            else None,
            "goals": [asdict(g) for g in goals(self)],
        }


@dataclass(frozen=True)
class Goal:
    goal: str
    measured: str
    met: bool


def goals(r: Report) -> list[Goal]:
    """The issue's goals, each against what this run measured."""
    out = _throughput_goals(r) + _latency_goals(r)
    if r.swaps:
        worst = max(r.swaps.promote_ms + r.swaps.rollback_ms, default=float("nan"))
        out.append(Goal("swap <= 1 s", f"max {worst:.0f} ms", worst <= 1000))
        out.append(
            Goal(
                "swaps lose and duplicate nothing",
                f"{r.swaps.lost} lost, {r.swaps.duplicated} duplicated",
                r.swaps.lost == 0 and r.swaps.duplicated == 0,
            )
        )
    if r.pace:
        caught = r.pace.caught_up_s
        out.append(
            Goal(
                "controller keeps pace with full-rate shadow comparisons",
                f"max lag {r.pace.max_lag_s:.1f} s; caught up "
                + (f"{caught:.1f} s after the last" if caught is not None else "never"),
                caught is not None and r.pace.max_lag_s <= 5.0,
            )
        )
    return out


def _throughput_goals(r: Report) -> list[Goal]:
    out: list[Goal] = []
    parse, fan_out, prod = r.rate(C_PARSE), r.rate(FAN_OUT), r.rate(PROD_ONLY)
    if parse:
        out.append(
            Goal("production-only >= 0.8 x C_parse", f"{prod / parse:.2f}", prod >= 0.8 * parse)
        )
    if fan_out:
        shadow = r.rate(SHADOW)
        out.append(
            Goal(
                "shadow 100% >= 0.8 x fan-out-2", f"{shadow / fan_out:.2f}", shadow >= 0.8 * fan_out
            )
        )
    drained = [p for p in r.peers if p.per_second]
    naive = next((p for p in drained if "naive" in p.name), None)
    if naive:
        ratio = prod / naive.per_second
        out.append(Goal("production-only >= 10 x the naive peer", f"{ratio:.1f}x", ratio >= 10))
    if drained:
        best = max(drained, key=lambda p: p.per_second)
        ratio = prod / best.per_second
        out.append(
            Goal(
                "production-only drains faster than the best peer",
                f"{ratio:.1f}x {best.name}",
                ratio >= 1,
            )
        )
    return out


def _latency_goals(r: Report) -> list[Goal]:
    out: list[Goal] = []
    for name in (PROD_ONLY, SHADOW):
        x = r.latency(name, HIGH_RATE)
        if x is None:
            continue
        for p99, goal, value in ((False, P50_GOAL_MS, x.p50_ms), (True, P99_GOAL_MS, x.p99_ms)):
            best = r.best_peer_latency(HIGH_RATE, p99)
            label = "p99" if p99 else "p50"
            vs = ""
            if best is not None:
                theirs = best.p99_ms if p99 else best.p50_ms
                vs = f" ({value / theirs:.2f}x the best peer, {best.name}: {theirs:.0f} ms)"
            out.append(
                Goal(
                    f"{name}: {label} <= {goal:.0f} ms at {HIGH_RATE:,.0f}/s",
                    f"{value:.1f} ms{vs}",
                    value <= goal,
                )
            )
    # The goal is judged at half the open-loop sustained rate where it was measured (the rate
    # the system keeps up with while the generator and reader load the same machine); the
    # line at half the drain rate is shown beside it, and judged only when it is the sole one.
    halves = [x for x in r.latencies if x.half_load]
    judged = [x for x in halves if x.basis == HALF_OPEN_LOOP]
    judged_names = {x.name for x in judged}
    judged += [x for x in halves if x.basis != HALF_OPEN_LOOP and x.name not in judged_names]
    for x in judged:
        basis = f", {x.basis} {x.rate:,.0f}/s" if x.basis else ""
        out.append(
            Goal(
                f"{x.name}: p99 <= {HALF_LOAD_P99_GOAL_MS:.0f} ms at half load{basis}",
                f"{x.p99_ms:.0f} ms",
                x.p99_ms <= HALF_LOAD_P99_GOAL_MS,
            )
        )
    return out
