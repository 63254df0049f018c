"""Retirement of artifacts: the controller tombstones, on ``models.artifacts``, the versions
of its partitions' deployments that no state has referred to for ``ROLLOUT_ARTIFACT_GRACE_S``
(``app.core.retirement``). Workers free such versions' sessions as soon as a state stops
referring to them; the tombstones let compaction remove the bytes, and a host that has not
fetched a retired version by then cannot any more (``no manifest record ... retired``).
Files already in a host's local store stay (the store is also the seed)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaProducer

from app.adapters import artifact_metrics
from app.adapters.artifact_cache import ArtifactCache, retire
from app.adapters.kafka_clients import plain_producer
from app.adapters.partitioning import partition_for
from app.adapters.state_view import StateView
from app.core.events import now_ms
from app.core.retirement import RetirementClock
from app.settings import Settings

log = logging.getLogger(__name__)


class Retirer:
    """Sweeps the deployments of the control partitions ``owned()`` returns, every
    ``interval_s`` (a quarter of the grace, between 1 s and 60 s)."""

    def __init__(
        self,
        settings: Settings,
        view: StateView,
        cache: ArtifactCache,
        owned: Callable[[], set[int]],
    ) -> None:
        self._settings = settings
        self._view = view
        self._cache = cache
        self._owned = owned
        self.clock = RetirementClock(int(settings.artifact_grace_s * 1000))
        self.interval_s = min(max(settings.artifact_grace_s / 4, 1.0), 60.0)
        self.retired: list[tuple[str, str]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="artifact-retirer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        producer = plain_producer(self._settings)
        await producer.start()
        try:
            while True:
                await asyncio.sleep(self.interval_s)
                try:
                    await self.sweep(producer)
                except Exception as error:  # a broker hiccup: the next sweep tries again
                    log.warning("artifact retirement sweep failed: %s", error)
        finally:
            await producer.stop()

    async def sweep(self, producer: AIOKafkaProducer) -> list[tuple[str, str]]:
        """Tombstone the versions due now; the (deployment, version) pairs retired."""
        owned = self._owned()
        count = self._view.partition_count
        states = {
            name: state
            for name, state in self._view.states.items()
            if partition_for(name, count) in owned
        }
        if not states:
            return []
        inventories = await self._cache.inventory(states)
        now = now_ms()
        done: list[tuple[str, str]] = []
        for name, state in states.items():
            for version in self.clock.due(state, inventories[name].versions(), now):
                records = await retire(producer, self._settings, name, version, inventories[name])
                self.clock.retired(name, version)
                artifact_metrics.ARTIFACTS_RETIRED.labels(name).inc()
                log.info(
                    "retired %s v%s from the artifacts topic (%d tombstones): no state has"
                    " referred to it for %.0f s",
                    name,
                    version,
                    records,
                    self._settings.artifact_grace_s,
                    extra={"deployment": name},
                )
                done.append((name, version))
        self.retired += done
        return done
