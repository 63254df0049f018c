"""``rollout simulate``: the controller's decision path replayed in every situation of
``app.simulation.situations``, and the promotion test's samples before and after."""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from app.cli import app
from app.simulation.bare_test import simulate as previous_test
from app.simulation.report import COLUMNS, markdown, row
from app.simulation.runner import Result, pure_test_samples, run, run_runs
from app.simulation.situations import SITUATIONS


@app.command()
def simulate(
    replications: Annotated[
        int, typer.Option(help="Replications per situation (0: each situation's own).")
    ] = 0,
    seed: Annotated[int, typer.Option(help="Seed of the first replication.")] = 11,
    markdown_out: Annotated[
        bool, typer.Option("--markdown", help="Print the table as Markdown.")
    ] = False,
    jobs: Annotated[
        int,
        typer.Option(help="Processes (each situation's runs are seeded: the same table)."),
    ] = 1,
) -> None:
    """Replay canaries (5 steps of 500 compared requests, margin 2 points, alpha 0.05)
    through RolloutAnalysis, promotion.decide and controller_step in each situation, and
    report how often the candidate was promoted, rolled back or held."""
    console = Console()
    started = time.monotonic()
    reps = [replications or None] * len(SITUATIONS)
    seeds = [seed] * len(SITUATIONS)
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            runs = pool.map(run_runs, range(len(SITUATIONS)), reps, seeds)
            results = [Result(s, r) for s, r in zip(SITUATIONS, runs, strict=True)]
    else:
        results = []
        for situation in SITUATIONS:
            results.append(run(situation, replications or None, seed=seed))
            console.print(f"  {situation.name}: done", style="dim")
    if markdown_out:
        console.print(markdown(results), soft_wrap=True)
    else:
        table = Table(*COLUMNS, title="rollout simulate (alpha 0.05, margin 2 points)")
        for r in results:
            table.add_row(*row(r))
        console.print(table)
    n = replications or 200
    before = previous_test(0.0, margin=0.02, alpha=0.05, replications=n, seed=seed)
    rate, after = pure_test_samples(0.0, 0.02, 0.05, n, seed=seed)
    console.print(
        f"labelled pairs to promote an equal candidate at a 2-point margin (median, {n} runs): "
        f"previous test {before.median_samples:,.0f} (promoted {before.promote_rate:.0%}), "
        f"this one {after:,.0f} (promoted {rate:.0%})"
    )
    console.print(f"{time.monotonic() - started:.0f} s")
