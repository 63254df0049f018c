"""``rollout bench``: the worker's throughput against ceilings measured in the same run."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from app.bench import markdown, run_bench
from app.cli import app
from app.settings import load_settings


@app.command()
def bench(
    requests: Annotated[int, typer.Option(help="Backlog size for each line.")] = 50_000,
    out: Annotated[Path, typer.Option(help="Where bench.md and bench.json go.")] = Path(
        "bench-results"
    ),
) -> None:
    """Drain the same backlog through ceilings (C_io, C_parse, fan-out-2) and the worker in
    three modes, exactly once, on KAFKA_BOOTSTRAP_SERVERS (`rollout kafka start` for a local
    one); print a Markdown table and write it with a JSON copy to OUT."""
    settings = load_settings()
    lines, latencies = asyncio.run(run_bench(settings, requests, out, progress=typer.echo))
    typer.echo(markdown(lines, latencies, settings.batch_max_wait_ms))
