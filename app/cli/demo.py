"""``rollout demo``: the whole service on one machine, walked through four rollouts."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

import typer

from app.cli import app
from app.harness.demo import run_demo
from app.settings import load_settings


@app.command()
def demo(
    rate: Annotated[float, typer.Option(help="Requests per second of generated traffic.")] = 600.0,
) -> None:
    """Run everything locally (broker, topics, controller, two workers) and walk through
    rollouts: v2 promoted by canary, v3 rolled back, v3 rejected in shadow, a manual
    recommendation."""
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("aiokafka").setLevel(logging.ERROR)  # retried produce errors are noise here
    raise typer.Exit(asyncio.run(run_demo(load_settings(), rate)))
