"""``rollout fleet``: one day of continuous deployment, time-compressed (``app.harness.fleet``)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from app.cli import app
from app.harness.fleet import (
    DRAIN_S,
    HORIZON_S,
    MARGIN,
    RATE,
    REPLAY_GATE,
    WARMUP_S,
    FleetConfig,
    run_fleet,
)
from app.harness.fleet_report import markdown, write
from app.settings import load_settings


@app.command()
def fleet(
    deployments: Annotated[int, typer.Option(help="Deployments (kinds and modes mixed).")] = 100,
    versions_per_day: Annotated[
        int, typer.Option(help="Versions the training simulator publishes in the day.")
    ] = 1_000,
    minutes: Annotated[float, typer.Option(help="The day, compressed into this run.")] = 15.0,
    rate: Annotated[float, typer.Option(help="Requests per second, all deployments.")] = RATE,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 2,
    margin: Annotated[
        float, typer.Option(help="Non-inferiority margin of the policies (and of the truth).")
    ] = MARGIN,
    alpha: Annotated[float, typer.Option(help="Alpha of the policies.")] = 0.05,
    horizon: Annotated[
        int, typer.Option(help="Feedback horizon of a rollout step, seconds.")
    ] = HORIZON_S,
    warmup: Annotated[
        float, typer.Option(help="Traffic before the first publication (s): the gate's past.")
    ] = WARMUP_S,
    replay_gate: Annotated[
        int, typer.Option(help="Automatic deployments: requests their replay gate judges.")
    ] = REPLAY_GATE,
    drain: Annotated[
        float,
        typer.Option(help="After the day, traffic until no version is in flight, at most (s)."),
    ] = DRAIN_S,
    seed: Annotated[int, typer.Option(help="Seed of truths, models and the simulator.")] = 0,
    out: Annotated[Path, typer.Option(help="Where fleet.md and fleet.json go.")] = Path(
        "bench-results"
    ),
    name: Annotated[str, typer.Option(help="The report's file name, without extension.")] = "fleet",
) -> None:
    """Deployments of mixed kinds and modes; a training simulator publishes a day's versions
    (better, equal, worse, much worse, broken, tampered, incompatible, slow) through Kafka
    only; traffic with ground truth; the controller decides alone. Prints progress, then the
    figures beside the goals; writes them (Markdown and JSON) to OUT. Needs a broker
    (KAFKA_BOOTSTRAP_SERVERS; `rollout kafka start`) with the topics applied. Exit 1 when an
    invariant fails (a request lost or duplicated, an invalid version served, a version
    undecided)."""
    config = FleetConfig(
        deployments=deployments,
        versions=versions_per_day,
        minutes=minutes,
        rate=rate,
        workers=workers,
        margin=margin,
        alpha=alpha,
        horizon_s=horizon,
        warmup_s=warmup,
        replay_gate=replay_gate,
        drain_s=drain,
        seed=seed,
        out=out,
        name=name,
    )
    report = asyncio.run(run_fleet(load_settings(), config, progress=typer.echo))
    md, js = write(report, out, name)
    typer.echo(markdown(report))
    typer.echo(f"written: {md}, {js}")
    if not report.ok:
        raise typer.Exit(1)
