"""``rollout traffic``: send synthetic card transactions as inference requests."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

import typer

from app.adapters.kafka_clients import plain_producer
from app.cli import app
from app.core.topics import Topic
from app.harness.traffic import make_requests, send
from app.settings import Settings, load_settings


async def _send(settings: Settings, rate: float, seconds: float, chunk_s: float = 5.0) -> int:
    producer = plain_producer(settings)
    await producer.start()
    sent, chunk, run_id = 0, 0, f"traffic-{int(time.time())}"
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            batch = make_requests(
                max(1, int(rate * chunk_s)), seed=chunk, run_id=f"{run_id}-{chunk}"
            )
            await send(producer, batch, rate=rate, topic=settings.topics.name(Topic.REQUESTS))
            sent += len(batch)
            chunk += 1
    finally:
        await producer.stop()
    return sent


@app.command()
def traffic(
    rate: Annotated[float, typer.Option(help="Requests per second.")] = 200.0,
    seconds: Annotated[float, typer.Option(help="For how long.")] = 60.0,
) -> None:
    """Send synthetic card transactions to inference.requests at a steady rate."""
    sent = asyncio.run(_send(load_settings(), rate, seconds))
    typer.echo(f"sent {sent:,} requests")
