"""``rollout bench``: the worker's throughput against ceilings measured in the same run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from app.bench.run import Sizes, run_bench
from app.bench.tables import markdown
from app.cli import app
from app.settings import load_settings
from app.worker.service import run_event_loop


@app.command()
def bench(
    requests: Annotated[int, typer.Option(help="Backlog size for each line.")] = 50_000,
    peer_requests: Annotated[
        int | None, typer.Option(help="Backlog for each peer (default: --requests, the same).")
    ] = None,
    swaps: Annotated[int, typer.Option(help="Promote/rollback pairs under load.")] = 20,
    swap_rate: Annotated[float, typer.Option(help="Requests/s during the swaps.")] = 1_000.0,
    rounds: Annotated[int, typer.Option(help="Interleaved rounds of the drain lines.")] = 3,
    latency_s: Annotated[float, typer.Option(help="Seconds of each latency line.")] = 10.0,
    quick: Annotated[
        bool, typer.Option(help="A short pass of every phase (small backlogs, one round).")
    ] = False,
    out: Annotated[Path, typer.Option(help="Where bench.md and bench.json go.")] = Path(
        "bench-results"
    ),
) -> None:
    """Drain the same backlog through ceilings (C_io, C_parse, fan-out-2, C_compute), the
    worker in three modes (exactly once) and its peers (a naive faust agent, Quix Streams at
    least once and exactly once); end-to-end latency at 100 and 1,000 requests/s and at half
    load, with where a batch's time goes; model swaps under load and the controller's pace
    with real controller and worker processes. On KAFKA_BOOTSTRAP_SERVERS (`rollout kafka
    start` for a local one); prints Markdown tables and writes them with a JSON copy to OUT."""
    settings = load_settings()
    sizes = (
        Sizes.quick()
        if quick
        else Sizes(requests, peer_requests or requests, swaps, swap_rate, rounds, latency_s)
    )
    # On the worker's own event loop: the drain lines run its loop in this process.
    report = run_event_loop(run_bench(settings, out, progress=typer.echo, sizes=sizes))
    typer.echo(markdown(report))
