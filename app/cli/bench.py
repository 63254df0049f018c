"""``rollout bench``: a first throughput figure, one worker draining a backlog."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from app.bench import drain
from app.cli import app
from app.settings import load_settings


@app.command()
def bench(
    requests: Annotated[int, typer.Option(help="Backlog size.")] = 20_000,
) -> None:
    """Time one `rollout worker` draining a backlog of requests (production only, exactly
    once), on the cluster of KAFKA_BOOTSTRAP_SERVERS (start one with `rollout kafka start`)."""
    result = asyncio.run(drain(load_settings(), requests))
    typer.echo(
        f"one worker, production only, exactly once: {result.predictions:,} of "
        f"{result.requests:,} predictions committed in {result.seconds:.2f}s = "
        f"{result.per_second:,.0f} requests/s (worker CPU {result.worker_cpu_s:.1f}s)"
    )
    if result.predictions < result.requests:
        raise typer.Exit(1)
