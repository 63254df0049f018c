"""The peers of ``rollout bench``, each a process of its own doing the worker's job on the same
broker and model: the naive faust agent (``app.bench.naive_peer``, at least once) and a Quix
Streams application (``app.bench.quix_peer``) at least once and exactly once. Each drains a
backlog (its rate between its first and last output; start-up is not counted) and serves
the open-loop latency lines (``app.bench.open_loop``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from app.adapters.kafka_clients import assign_at_end, plain_producer, reader
from app.adapters.process_stats import cpu_seconds
from app.bench.open_loop import Observed, OpenLoop
from app.bench.report import Latency, PeerLine
from app.bench.setup import fresh_group
from app.core.topics import Topic
from app.harness.processes import RolloutProcess
from app.harness.traffic import make_requests, send
from app.settings import Settings

NAIVE = "faust agent, per record (naive)"
QUIX_ALO = "Quix Streams 3, at least once"
QUIX_EOS = "Quix Streams 3, exactly once"


@dataclass(frozen=True)
class Peer:
    name: str
    guarantee: str
    module: str
    extra_args: tuple[str, ...] = ()

    def process(self, settings: Settings, group: str, sink: str) -> RolloutProcess:
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
            "ROLLOUT_MODEL_STORE": str(settings.model_store),
            "ROLLOUT_TOPIC_PREFIX": settings.topic_prefix,
            "ROLLOUT_HOME": str(settings.home),
        }
        return RolloutProcess([group, sink, *self.extra_args], None, env, module=self.module)


PEERS = (
    Peer(NAIVE, "at least once", "app.bench.naive_peer"),
    Peer(QUIX_ALO, "at least once", "app.bench.quix_peer", ("at-least-once",)),
    Peer(QUIX_EOS, "exactly once", "app.bench.quix_peer", ("exactly-once",)),
)


async def drain(settings: Settings, peer: Peer, requests: int, sink: str) -> PeerLine:
    """Drain a backlog of ``requests`` through ``peer``; the rate is between its first and
    last output."""
    group = await fresh_group(settings)
    run = f"peer-{uuid.uuid4().hex[:6]}"
    producer = plain_producer(settings)
    await producer.start()
    try:
        await send(
            producer,
            make_requests(requests, seed=3, run_id=run),
            topic=settings.topics.name(Topic.REQUESTS),
        )
    finally:
        await producer.stop()
    tail = reader(settings)
    await tail.start()
    await assign_at_end(tail, sink)
    proc = peer.process(settings, group.group_id, sink).start()
    needle = run.encode()
    stamps: list[int] = []
    try:
        deadline = time.monotonic() + 300
        while len(stamps) < requests and time.monotonic() < deadline and proc.alive():
            batch = await tail.getmany(timeout_ms=200)
            for records in batch.values():
                stamps.extend(r.timestamp for r in records if needle in r.value)
        cpu = cpu_seconds(proc.pid) or 0.0
    finally:
        proc.terminate()
        await tail.stop()
    if len(stamps) < 2:
        return PeerLine(peer.name, peer.guarantee, len(stamps), 0.0, cpu)
    stamps.sort()
    return PeerLine(
        peer.name, peer.guarantee, len(stamps) - 1, (stamps[-1] - stamps[0]) / 1000, cpu
    )


def open_loop_runs(
    settings: Settings,
    proc: RolloutProcess,
    outputs_topic: str,
    runs: Sequence[tuple[str, float]],
    seconds: float,
    then: Callable[[OpenLoop, str], list[Observed]] | None = None,
) -> list[Observed]:
    """Start ``proc``, wait until it answers, then each (name, rate) of ``runs`` for
    ``seconds``, then the runs ``then`` makes on the same load (blocking: run it in a
    thread)."""
    load = OpenLoop(settings, settings.topics.name(Topic.REQUESTS), outputs_topic)
    load.start()
    proc.start()
    try:
        run = f"lat-{uuid.uuid4().hex[:6]}"
        load.wait_ready(run, alive=proc.alive)
        found = [load.run(name, rate, seconds, f"{run}-{i}") for i, (name, rate) in enumerate(runs)]
        return found if then is None else found + then(load, run)
    finally:
        proc.terminate()
        load.close()


async def latency(
    settings: Settings, peer: Peer, rates: Sequence[float], seconds: float, sink: str
) -> list[Latency]:
    group = await fresh_group(settings)
    proc = peer.process(settings, group.group_id, sink)
    runs = [(peer.name, rate) for rate in rates]
    found = await asyncio.to_thread(open_loop_runs, settings, proc, sink, runs, seconds)
    return [o.latency() for o in found]
