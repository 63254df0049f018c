"""The ``rollout fleet`` report: figures, the goals beside them, Markdown and JSON.

``build_report`` turns what a run observed into a :class:`FleetReport` (through the pure
``app.harness.fleet_tally``); ``markdown`` prints it; ``write`` puts ``<name>.md`` and
``<name>.json`` under the output folder.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.harness.fleet_observe import Observed, ProcessMeter
from app.harness.fleet_tally import (
    INVALID,
    Bands,
    Goal,
    Outcome,
    Published,
    RequestTally,
    Summary,
    VersionFate,
    goals,
    outcomes,
    request_tally,
    summarize,
)

if TYPE_CHECKING:
    from app.harness.fleet import FleetConfig

MIB = 1024 * 1024


@dataclass(frozen=True)
class FleetReport:
    run: str
    config: dict[str, Any]
    seconds: float
    summary: Summary
    requests: RequestTally
    send_failures: int
    feedback: int
    goals: list[Goal]
    processes: dict[str, dict[str, float]]  # name -> cpu_s, cpu_share, rss_max_mib, rss_last_mib
    controller_lag_max: int | None
    controller_lag_last: int | None
    invalid_served: list[str]  # broken/incompatible versions that served a request (must be empty)
    snapshot_max_bytes: int  # the largest analysis snapshot the controller wrote
    fates: list[VersionFate]

    @property
    def ok(self) -> bool:
        """The invariants the CI form asserts: nothing lost or duplicated, every invalid
        version rejected unserved, every version decided."""
        return all(g.met for g in self.goals[:3]) and not self.invalid_served


def build_report(
    *,
    config: FleetConfig,
    run: str,
    seconds: float,
    published: Sequence[Published],
    observed: Observed,
    initial: Mapping[str, tuple[str, float]],
    sent: int,
    failed: int,
    feedback: int,
    meter: ProcessMeter,
    lags: Sequence[int],
) -> FleetReport:
    fates = outcomes(published, observed.states, observed.decisions, Bands(config.margin), initial)
    summary = summarize(fates)
    requests = request_tally(sent, observed.predicted, observed.dead_lettered)
    processes = {
        name: {
            "cpu_s": round(meter.cpu.get(name, 0.0), 1),
            "cpu_share": round(meter.cpu.get(name, 0.0) / max(seconds, 1e-3), 3),
            "rss_max_mib": round(meter.rss_max.get(name, 0) / MIB, 1),
            "rss_last_mib": round(meter.rss_last.get(name, 0) / MIB, 1),
        }
        for name in meter.pids
    }
    invalid_served = [
        f"{f.published.deployment}/{f.published.version}"
        for f in fates
        if f.truth in INVALID
        and (f.served or observed.served_by[(f.published.deployment, f.published.version)])
    ]
    settings = {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in dataclasses.asdict(config).items()
        if k != "mix"
    }
    settings["mix"] = {str(k): v for k, v in config.mix.items()}
    return FleetReport(
        run=run,
        config=settings,
        seconds=seconds,
        summary=summary,
        requests=requests,
        send_failures=failed,
        feedback=feedback,
        goals=goals(summary, requests, config.alpha),
        processes=processes,
        controller_lag_max=max(lags) if lags else None,
        controller_lag_last=lags[-1] if lags else None,
        invalid_served=invalid_served,
        snapshot_max_bytes=observed.snapshot_max_bytes,
        fates=fates,
    )


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def markdown(report: FleetReport) -> str:
    s, r, c = report.summary, report.requests, report.config
    o = s.outcomes
    answered_rate = r.answered / max(report.seconds, 1e-3)
    by_mode = ", ".join(f"{m} {n} of {b}" for m, (n, b) in s.false_by_mode.items())
    lines = [
        f"## rollout fleet {report.run}",
        "",
        f"{c['deployments']} deployments, {s.versions} versions published over "
        f"{c['minutes']:g} min ({c['versions']} a day compressed), {c['rate']:g} requests/s, "
        f"{c['workers']} workers; margin {c['margin']:.0%}, alpha {c['alpha']:.0%}, horizon "
        f"{c['horizon_s']} s; run {report.seconds:.0f} s (with the drain).",
        "",
        "| versions | published | promoted | rolled back | rejected (validation, full queue) | "
        "superseded | in flight |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| all | {s.versions} | {o['promoted']} | {o['rolled_back']} | {o['rejected']} | "
        f"{o['superseded']} | {o['in_flight']} |",
    ]
    for truth, row in sorted(s.by_truth.items()):
        lines.append(
            f"| {truth} | {sum(row.values())} | {row['promoted']} | {row['rolled_back']} | "
            f"{row['rejected']} | {row['superseded']} | {row['in_flight']} |"
        )
    for mode, row in sorted(s.by_mode.items()):
        lines.append(
            f"| mode {mode} | {sum(row.values())} | {row['promoted']} | {row['rolled_back']} | "
            f"{row['rejected']} | {row['superseded']} | {row['in_flight']} |"
        )
    lines += [
        "",
        "| figure | value |",
        "|---|---:|",
        f"| versions worse than the margin (measured) | {s.bad} |",
        f"| ... promoted (false promotions) | {s.false_promotions} |",
        f"| ... promoted, by mode | {by_mode} |",
        f"| ... promoted, then rolled back by the watch | {s.promoted_then_restored} |",
        f"| better or equal versions | {s.good} |",
        f"| ... rolled back / rejected | {s.good_rolled_back} / {s.good_rejected} |",
        f"| slow versions promoted | {s.slow_promoted} of {s.slow} |",
        f"| publish to decision, median / p95 | {_s(s.decision_median_s)} / "
        f"{_s(s.decision_p95_s)} |",
        f"| requests sent / answered | {r.sent:,} / {r.answered:,} |",
        f"| lost / duplicated / dead-lettered | {r.lost:,} / {r.duplicated:,} / "
        f"{r.dead_lettered:,} |",
        f"| ground-truth labels sent | {report.feedback:,} |",
        f"| answered per second (all workers) | {answered_rate:,.0f} |",
        "| controller lag (records past its last snapshot), max / at the end | "
        f"{report.controller_lag_max} / {report.controller_lag_last} |",
        f"| largest analysis snapshot | {report.snapshot_max_bytes / 1024:,.0f} KiB |",
    ]
    for name, p in report.processes.items():
        lines.append(
            f"| {name}: CPU s (share of a core) / RSS max, at end | {p['cpu_s']} "
            f"({p['cpu_share']:.0%}) / {p['rss_max_mib']} MiB, {p['rss_last_mib']} MiB |"
        )
    lines += ["", "| goal | target | this run | met |", "|---|---|---|---|"]
    lines += [
        f"| {g.name} | {g.target} | {g.value} | {'yes' if g.met else '**no**'} |"
        for g in report.goals
    ]
    if report.invalid_served:
        lines.append(f"\nInvalid versions that served: {', '.join(report.invalid_served)}")
    return "\n".join(lines) + "\n"


def as_json(report: FleetReport) -> dict[str, Any]:
    data = {
        "run": report.run,
        "config": report.config,
        "seconds": round(report.seconds, 1),
        "summary": dataclasses.asdict(report.summary),
        "requests": dataclasses.asdict(report.requests),
        "send_failures": report.send_failures,
        "feedback": report.feedback,
        "goals": [dataclasses.asdict(g) for g in report.goals],
        "processes": report.processes,
        "controller_lag_max": report.controller_lag_max,
        "controller_lag_last": report.controller_lag_last,
        "invalid_served": report.invalid_served,
        "snapshot_max_bytes": report.snapshot_max_bytes,
        "versions": [_fate(f) for f in report.fates],
    }
    return data


def _fate(f: VersionFate) -> dict[str, Any]:
    p = f.published
    return {
        "deployment": p.deployment,
        "version": p.version,
        "mode": p.mode,
        "made_as": p.kind,
        "truth": f.truth,
        "quality": p.quality,
        "delta": None if f.delta is None else round(f.delta, 4),
        "outcome": f.outcome.value,
        "seconds_to_decision": f.seconds_to_decision,
        "served": f.served,
        "reason": f.reason,
    }


def write(report: FleetReport, out: Path, name: str) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / f"{name}.md", out / f"{name}.json"
    md.write_text(markdown(report), encoding="utf-8")
    js.write_text(json.dumps(as_json(report), indent=2) + "\n", encoding="utf-8")
    return md, js


__all__ = ["Outcome", "as_json", "build_report", "markdown", "write"]
