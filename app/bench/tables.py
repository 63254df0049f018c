"""``rollout bench``'s Markdown tables: the drain lines with their ratios, the latency
lines, where a batch's time goes, the swaps, the controller's pace, CPU per process and the
goals (``app.bench.report`` holds the figures; pure: no I/O).
"""

from __future__ import annotations

from typing import Any

from app.bench.breakdown import REQUEST_SPANS, Breakdown
from app.bench.report import KEPT_UP_P99_MS, PROD_ONLY, PaceReport, Report, SwapReport, goals


def markdown(r: Report) -> str:
    """The tables; worker lines carry their ratio to their ceiling (shadow: fan-out-2)."""
    rows = _throughput_rows(r)
    if r.latencies:
        rows += _latency_rows(r)
    if r.breakdowns:
        rows += breakdown_rows(r.breakdowns)
    if r.swaps:
        rows += _swap_rows(r.swaps)
    if r.pace:
        rows += _pace_rows(r.pace)
    rows += _cpu_rows(r)
    found = goals(r)
    if found:
        rows += ["", "| goal | measured | met |", "|---|---|---|"]
        rows += [f"| {g.goal} | {g.measured} | {'yes' if g.met else 'no'} |" for g in found]
    return "\n".join(rows) + "\n"


def _throughput_rows(r: Report) -> list[str]:
    by_name = {line.name: line.per_second for line in r.lines}
    rows = [
        "| line | records/s (median of rounds; range) | ratio to ceiling | CPU s (this process)"
        " | CPU s (broker) |",
        "|---|---:|---:|---:|---:|",
    ]
    for line in r.lines:
        found = r.ratio(line)
        ratio = f"{found[1]:.2f} of {found[0].split(' ')[0]}" if found else ""
        broker = f"{line.broker_cpu_s:.1f}" if line.broker_cpu_s else ""
        spread = (
            f" ({min(line.rates):,.0f} to {max(line.rates):,.0f})" if len(line.rates) > 1 else ""
        )
        rows.append(
            f"| {line.name} | {line.per_second:,.0f}{spread} | {ratio} | {line.cpu_s:.1f} | "
            f"{broker} |"
        )
    prod = by_name.get(PROD_ONLY, 0.0)
    for p in r.peers:
        ratio = f"worker is {prod / p.per_second:.1f}x" if p.per_second else ""
        rows.append(
            f"| peer: {p.name} | {p.per_second:,.0f} | {ratio} | {p.cpu_s:.1f} (its process) | |"
        )
    return rows


def _latency_rows(r: Report) -> list[str]:
    return [
        "",
        "End-to-end latency under open-loop load, from handing a request to a librdkafka "
        "producer to a read_committed librdkafka consumer reading its output; the worker also "
        "at half its sustained rate: the highest open-loop rate it kept up with (found by "
        "the ramp lines: nearly every request answered, p99 under "
        f"{KEPT_UP_P99_MS:.0f} ms) and the rate it drained a backlog at alone; batch wait "
        f"{r.wait_ms} ms:",
        "",
        "| line | rate/s | answered | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|",
    ] + [
        f"| {x.name}{f' ({x.basis})' if x.basis else ''} | {x.rate:,.0f} | "
        f"{x.answered:,}/{x.requests:,} | {x.p50_ms:.1f} | {x.p99_ms:.1f} |"
        for x in r.latencies
    ]


def breakdown_rows(found: list[Breakdown]) -> list[str]:
    """One column per breakdown, cells "p50 / p99" in ms (round trips: and requests per
    batch; retriable errors: answers per batch)."""

    def cell(q: Any) -> str:
        return f"{q.p50:.1f} / {q.p99:.1f}" if q is not None else "-"

    rows = [
        "",
        "Where a batch's time goes (worker, per batch; ms, p50 / p99):",
        "",
        "| stage | " + " | ".join(b.name for b in found) + " |",
        "|---|" + "---:|" * len(found),
        "| batches | " + " | ".join(f"{b.batches:,}" for b in found) + " |",
        "| records per batch | " + " | ".join(cell(b.records) for b in found) + " |",
    ]
    stages = list(dict.fromkeys(s for b in found for s in b.stages))
    rows += [f"| {s} | " + " | ".join(cell(b.stages.get(s)) for b in found) + " |" for s in stages]
    apis = list(dict.fromkeys(a for b in found for a in b.round_trips))
    for api in apis:
        cells = []
        for b in found:
            calls = b.round_trips.get(api)
            cells.append(f"{cell(calls[1])} ({calls[0]:.2f}x)" if calls else "-")
        rows.append(f"| round trip: {api} | " + " | ".join(cells) + " |")
    errors = list(dict.fromkeys(e for b in found for e in b.errors))
    rows += [
        f"| retried: {e} (per batch) | "
        + " | ".join(f"{b.errors.get(e, 0.0):.2f}" for b in found)
        + " |"
        for e in errors
    ]
    rows += [
        f"| request: {span} | " + " | ".join(cell(b.requests.get(span)) for b in found) + " |"
        for span in REQUEST_SPANS
        if any(span in b.requests for b in found)
    ]
    return rows


def _swap_rows(w: SwapReport) -> list[str]:
    def ms(values: list[float]) -> str:
        if not values:
            return "-"
        return f"median {values[len(values) // 2]:.0f}, max {values[-1]:.0f}"

    return [
        "",
        f"Model swaps: {w.swaps} promotes and {w.swaps} rollbacks under {w.rate:,.0f} "
        f"requests/s (controller + 1 worker), {w.seconds:.0f} s:",
        "",
        "| command → first prediction by the new version | ms |",
        "|---|---|",
        f"| promote | {ms(w.promote_ms)} |",
        f"| rollback | {ms(w.rollback_ms)} |",
        "",
        f"Requests sent {w.sent:,}; answered {w.answered:,}; lost {w.lost}; "
        f"duplicated {w.duplicated}.",
    ]


def _pace_rows(p: PaceReport) -> list[str]:
    caught = f"{p.caught_up_s:.1f} s" if p.caught_up_s is not None else "not within 15 s"
    return [
        "",
        f"Controller pace: shadow 100% over a backlog, {p.comparisons:,} comparison offsets "
        f"in {p.seconds:.1f} s ({p.per_second:,.0f}/s) on the deployment's partition; "
        f"{p.snapshots} analysis snapshots; max lag {p.max_lag_records:,} records / "
        f"{p.max_lag_s:.1f} s; covered the last comparison {caught} after it was written "
        f"(snapshots every 2 s).",
        *([_earlier(p)] if p.earlier_backlog else []),
    ]


def _earlier(p: PaceReport) -> str:
    """What the controller had to cover of earlier phases' comparisons before the pace."""
    left = f"{p.earlier_backlog:,} comparisons earlier phases had left on that partition"
    if p.earlier_caught_up_s is None:
        return f"It had {left} still to cover and did not within the wait: the pace includes them."
    return (
        f"Before the backlog was written, it covered the {left} in {p.earlier_caught_up_s:.1f} s."
    )


def _cpu_rows(r: Report) -> list[str]:
    cpu = [("swaps", r.swaps.cpu_s if r.swaps else {}), ("pace", r.pace.cpu_s if r.pace else {})]
    if not any(c for _, c in cpu):
        return []
    rows = ["", "| CPU seconds | broker | worker | controller |", "|---|---:|---:|---:|"]
    for phase, c in cpu:
        cells = " | ".join(
            f"{c[k]:.1f}" if k in c else "-" for k in ("broker", "worker", "controller")
        )
        rows.append(f"| {phase} | {cells} |")
    return rows
