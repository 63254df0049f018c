"""``rollout bench``: the worker's throughput against ceilings measured in the same run."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from app.bench.report import markdown
from app.bench.run import run_bench
from app.cli import app
from app.settings import load_settings


@app.command()
def bench(
    requests: Annotated[int, typer.Option(help="Backlog size for each line.")] = 50_000,
    naive_requests: Annotated[int, typer.Option(help="Backlog for the naive peer.")] = 5_000,
    swaps: Annotated[int, typer.Option(help="Promote/rollback pairs under load.")] = 20,
    swap_rate: Annotated[float, typer.Option(help="Requests/s during the swaps.")] = 1_000.0,
    rounds: Annotated[int, typer.Option(help="Interleaved rounds of the drain lines.")] = 3,
    out: Annotated[Path, typer.Option(help="Where bench.md and bench.json go.")] = Path(
        "bench-results"
    ),
) -> None:
    """Drain the same backlog through ceilings (C_io, C_parse, fan-out-2, C_compute), the
    worker in three modes (exactly once) and a naive faust peer; end-to-end latency at half
    load; model swaps under load and the controller's pace with real controller and worker
    processes. On KAFKA_BOOTSTRAP_SERVERS (`rollout kafka start` for a local one); prints
    Markdown tables and writes them with a JSON copy to OUT."""
    settings = load_settings()
    report = asyncio.run(
        run_bench(
            settings,
            requests,
            out,
            progress=typer.echo,
            naive_requests=naive_requests,
            swaps=swaps,
            swap_rate=swap_rate,
            rounds=rounds,
        )
    )
    typer.echo(markdown(report))
