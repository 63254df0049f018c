"""End-to-end latency of the worker under open-loop load (``app.bench.open_loop``, measured as
for the peers): the worker in a process of its own (``python -m app.bench.latency MODE GROUP
TRACES``, a fixed routing table) writing each committed batch's ``BatchTrace`` to TRACES,
from which each run's per-batch breakdown is drawn (``app.bench.breakdown``).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson

from app.adapters.kafka_clients import configure_aiokafka
from app.adapters.model_store import ModelStore
from app.bench.breakdown import Breakdown, breakdown
from app.bench.open_loop import Observed, OpenLoop
from app.bench.peers import open_loop_runs
from app.bench.report import HALF_OPEN_LOOP, RAMP, Latency, kept_up
from app.bench.setup import fixed_table, fresh_group
from app.core.batch_result import Topics
from app.core.events import Mode
from app.core.scoring import table_scorer
from app.core.topics import Topic
from app.harness.processes import RolloutProcess
from app.settings import Settings
from app.worker.batch_trace import BatchTrace
from app.worker.loop import Worker
from app.worker.service import install_stop_signals, run_event_loop


def rate_label(rate: float) -> str:
    return f"{rate:,.0f}/s"


# The search for the open-loop sustained rate: from RAMP_START, RAMP_FACTOR times more each
# step of RAMP_S seconds, until a step does not keep up (``report.kept_up``) or the ceiling
# (the drain rate, a little over) is passed; then one step between the last two.
RAMP_START, RAMP_FACTOR, RAMP_S = 2_000.0, 2.0, 8.0


def ramp(name: str, ceiling: float, seconds: float) -> Callable[[OpenLoop, str], list[Observed]]:
    """Open-loop steps up to the highest rate the system keeps up with, then ``seconds`` at
    half that rate (the half-load line on the open-loop basis)."""

    def runs(load: OpenLoop, run_id: str) -> list[Observed]:
        found: list[Observed] = []

        def step(rate: float, basis: str, length: float) -> bool:
            found.append(load.run(name, rate, length, f"{run_id}-r{len(found)}"))
            found[-1].basis = basis
            return kept_up(found[-1].latency())

        best, rate, step_s = 0.0, RAMP_START, min(RAMP_S, seconds)
        while rate <= ceiling and step(rate, RAMP, step_s):
            best, rate = rate, rate * RAMP_FACTOR
        between = (best * min(rate, ceiling)) ** 0.5 if best else RAMP_START / RAMP_FACTOR
        if between > best and step(between, RAMP, step_s):
            best = between
        if best:
            step(best / 2, HALF_OPEN_LOOP, seconds)
            found[-1].half_load = True
        return found

    return runs


async def latency(
    settings: Settings,
    name: str,
    mode: Mode,
    rates: Sequence[float],
    seconds: float,
    ramp_to: float | None = None,
) -> tuple[list[Latency], list[Breakdown]]:
    """One worker process in ``mode``, then each of ``rates`` for ``seconds``, then (with
    ``ramp_to``) the search for its open-loop sustained rate up to about ``ramp_to`` and a
    line at half of it: the latency lines and each run's breakdown."""
    group = await fresh_group(settings)
    traces_path = settings.home / "bench" / f"traces-{group.group_id}.jsonl"
    traces_path.parent.mkdir(parents=True, exist_ok=True)
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "ROLLOUT_GROUP_ID": group.group_id,
        "ROLLOUT_MODEL_STORE": str(settings.model_store),
        "ROLLOUT_TOPIC_PREFIX": settings.topic_prefix,
    }
    worker = RolloutProcess(
        [mode.value, group.group_id, str(traces_path)], None, env, module="app.bench.latency"
    )
    predictions = settings.topics.name(Topic.PREDICTIONS)
    runs = [(name, rate) for rate in rates]
    try:
        then = ramp(name, ramp_to * 1.25, seconds) if ramp_to else None
        found = await asyncio.to_thread(
            open_loop_runs, settings, worker, predictions, runs, seconds, then
        )
        traces = [orjson.loads(line) for line in traces_path.read_bytes().splitlines() if line]
    finally:
        traces_path.unlink(missing_ok=True)
    parts = [
        breakdown(
            f"{name} at {rate_label(o.rate)}",
            [t for t in traces if o.started <= t["fetched_at"] <= o.ended],
            o.sightings(),
        )
        for o in found
        if o.basis != RAMP  # the search's steps: their latency lines say enough
    ]
    return [o.latency() for o in found], parts


async def _serve_fixed(mode: Mode, worker_id: str, traces: Path) -> None:
    """The worker's loop with a fixed routing table, until SIGTERM, each committed batch's
    trace a JSON line of ``traces``."""
    configure_aiokafka()
    settings = Settings()
    table = fixed_table(ModelStore(settings.model_store), mode)
    stop = asyncio.Event()
    install_stop_signals(stop)
    score = table_scorer(
        lambda: table,
        worker_id=worker_id,
        max_request_bytes=settings.max_request_bytes,
        shed_lag=settings.shadow_shed_lag,
        topics=Topics.of(settings.topics),
    )
    with traces.open("ab") as out:

        def write(trace: BatchTrace) -> None:
            out.write(orjson.dumps(trace.to_json()) + b"\n")

        await Worker(settings, worker_id, score, trace=write).run(stop)


if __name__ == "__main__":
    run_event_loop(_serve_fixed(Mode(sys.argv[1]), sys.argv[2], Path(sys.argv[3])))
