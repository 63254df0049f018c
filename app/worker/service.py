"""``rollout worker``: load the deployments' current states, then serve until SIGTERM/SIGINT.

Until the controller publishes a deployment's state, it serves the production version its
``deployment.yaml`` names (epoch 0).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket

from app.adapters.model_store import ModelStore
from app.adapters.state_view import StateView
from app.settings import Settings
from app.worker.follower import TableFollower
from app.worker.loop import Worker, WorkerStats

log = logging.getLogger(__name__)


def default_worker_id() -> str:
    """Stable across restarts on one host (so a restart fences its previous incarnation)."""
    return socket.gethostname()


async def serve(settings: Settings, worker_id: str, stop: asyncio.Event) -> WorkerStats:
    """Follow ``deployments.state`` and serve under its latest epochs until ``stop`` is set."""
    async with StateView(settings) as view:
        follower = TableFollower(ModelStore(settings.model_store), view)
        if not await follower.start(stop):  # stopped while waiting for loadable models
            return WorkerStats()
        try:
            for name, route in follower.table.items():
                st = route.state
                log.info(
                    "deployment %s: epoch %d, %s, production %s (sha256 %s…), candidate %s",
                    name,
                    st.epoch,
                    st.mode,
                    st.production.version,
                    st.production.sha256[:12],
                    st.candidate.version if st.candidate else "-",
                )
            worker = Worker(
                settings, worker_id, lambda: follower.table, on_assigned=follower.settle
            )
            return await worker.run(stop)
        finally:
            await follower.stop()


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
