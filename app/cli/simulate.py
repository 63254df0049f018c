"""``rollout simulate``: the promotion test's false-promotion rate and power, by Monte Carlo."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from app.cli import app
from app.core.simulation import simulate as run_simulation


@app.command()
def simulate(
    margin: Annotated[float, typer.Option(help="Non-inferiority margin (accuracy points).")] = 0.02,
    alpha: Annotated[float, typer.Option(help="Level of the sequential test.")] = 0.05,
    replications: Annotated[int, typer.Option(help="Replications per candidate.")] = 500,
    max_samples: Annotated[int, typer.Option(help="Labelled pairs before giving up.")] = 6000,
) -> None:
    """Replicate paired canaries of worse, equal and better candidates, checked after every
    batch of 50, and report how often each is promoted or rolled back."""
    table = Table(
        "candidate vs production",
        "promoted",
        "rolled back",
        "undecided",
        "median samples to decide",
        title=f"margin {margin:.0%}, alpha {alpha}, {replications} replications",
    )
    for delta in (-2 * margin, -1.5 * margin, -margin, 0.0, margin, 2 * margin):
        r = run_simulation(
            delta,
            margin=margin,
            alpha=alpha,
            replications=replications,
            max_samples=max_samples,
            seed=11,
        )
        truth = (
            "worse than the margin"
            if delta < -margin
            else ("at the margin" if delta == -margin else "within the margin")
        )
        table.add_row(
            f"{delta:+.1%} ({truth})",
            f"{r.promote_rate:.1%}",
            f"{r.rollback_rate:.1%}",
            f"{r.undecided / r.replications:.1%}",
            f"{r.median_samples:.0f}",
        )
    Console().print(table)
