"""``rollout chaos``: the fault scenarios of :mod:`app.chaos.fault_scenarios` under load, and a
table of what each lost, duplicated and dead-lettered. Exit 1 when a promise was broken."""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from app.chaos.fault_scenarios import SCENARIOS, ChaosEnv, ChaosResult
from app.cli import app
from app.settings import load_settings


def results_table(results: list[ChaosResult]) -> Table:
    table = Table(title="rollout chaos")
    for column in ("scenario", "requests sent", "faults injected", "lost", "duplicated"):
        table.add_column(column, justify="left" if column == "scenario" else "right")
    table.add_column("dead letters", justify="right")
    table.add_column("time to recover", justify="right")
    table.add_column("verdict")
    for r in results:
        t = r.tally
        table.add_row(
            r.scenario,
            f"{t.sent:,}",
            str(r.faults),
            str(t.lost),
            str(t.duplicated),
            f"{t.dead_letters} of {t.invalid_sent}",
            f"{r.recover_s:.1f}s" if r.recover_s is not None else "-",
            "ok" if r.ok else "BROKEN",
        )
    return table


@app.command()
def chaos(
    scenario: Annotated[
        list[str] | None,
        typer.Option("--scenario", "-s", help=f"One of {', '.join(SCENARIOS)} (repeatable)."),
    ] = None,
    rate: Annotated[float, typer.Option(help="Requests per second of known load.")] = 300.0,
    kills: Annotated[int, typer.Option(help="kill -9 count of worker-kill.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed of the random kill points.")] = 0,
    work_dir: Annotated[
        Path | None, typer.Option(help="Logs and scratch (default: a temporary dir).")
    ] = None,
) -> None:
    """Run fault scenarios under load on the cluster of KAFKA_BOOTSTRAP_SERVERS (with its
    topics applied; the broker restart uses a broker of its own) and print the table."""
    names = scenario or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise typer.BadParameter(f"unknown scenario(s) {unknown}; known: {list(SCENARIOS)}")
    console = Console(width=None if sys.stdout.isatty() else 120)  # a log keeps the whole table
    work = work_dir or Path(tempfile.mkdtemp(prefix="rollout-chaos-"))
    env = ChaosEnv(load_settings(), work.resolve(), rate=rate, seed=seed, kills=kills)
    results: list[ChaosResult] = []
    for name in names:
        console.print(f"[bold]{name}[/bold] ...")
        result = asyncio.run(SCENARIOS[name](env))
        results.append(result)
        for line in result.problems:
            console.print(f"  [red]problem:[/red] {line}")
        for line in result.notes:
            console.print(f"  note: {line}")
        if result.failed_sends:
            console.print(f"  note: {result.failed_sends} sends never acknowledged (not counted)")
    console.print(results_table(results))
    console.print(f"logs: {work}")
    if not all(r.ok for r in results):
        raise typer.Exit(1)
