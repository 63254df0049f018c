"""``rollout worker``: load the deployments, then serve until SIGTERM/SIGINT.

Until the controller publishes ``deployments.state``, each deployment serves the production
version its ``deployment.yaml`` names (epoch 0).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket

from app.adapters.model_store import ModelStore
from app.core.events import now_ms
from app.core.state_machine import initial_state
from app.settings import Settings
from app.worker.loop import Worker, WorkerStats
from app.worker.scoring import DeploymentRoute, RoutingTable

log = logging.getLogger(__name__)


def default_worker_id() -> str:
    """Stable across restarts on one host (so a restart fences its previous incarnation)."""
    return socket.gethostname()


def initial_table(store: ModelStore) -> RoutingTable:
    table: dict[str, DeploymentRoute] = {}
    for name in store.deployments():
        spec = store.spec(name)
        ref = store.ref(name, spec.initial_production)
        table[name] = DeploymentRoute(
            state=initial_state(spec, ref, now_ms()), production=store.load(ref)
        )
    return table


async def serve(settings: Settings, worker_id: str, stop: asyncio.Event) -> WorkerStats:
    table = initial_table(ModelStore(settings.model_store))
    for name, route in table.items():
        log.info(
            "deployment %s: production %s (sha256 %s…), epoch %d",
            name,
            route.state.production.version,
            route.state.production.sha256[:12],
            route.state.epoch,
        )
    worker = Worker(settings, worker_id, lambda: table)
    return await worker.run(stop)


def install_stop_signals(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT finish the batch in flight, commit it, and return."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


async def run_worker(settings: Settings, worker_id: str) -> WorkerStats:
    stop = asyncio.Event()
    install_stop_signals(stop)
    stats = await serve(settings, worker_id, stop)
    log.info(
        "worker %s stopped: %d records, %d predictions, %d dead letters in %d batches",
        worker_id,
        stats.records,
        stats.predictions,
        stats.dead_letters,
        stats.batches,
    )
    return stats
