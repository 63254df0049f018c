"""``rollout controller``: the faust-streaming app that owns deployment state.

Faust gives the controller its consumer group: the co-partitioned control-plane topics are
keyed by deployment, so whichever controller process owns partition N acts for the
deployments on it, and another one takes over when it dies. One agent hands each command to
``CommandHandler``, another each publication of ``models.published`` (co-partitioned) to
``PublicationHandler``; both publish through aiokafka transactions of their own
(``DecisionPublisher``): Faust's ``exactly_once`` guarantee is not used (it has open
duplicate bugs); offsets of handled commands and publications are committed inside those
transactions.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import faust
from mode import Service

from app.adapters.artifact_cache import ArtifactCache
from app.adapters.collector import tune_collector
from app.adapters.kafka_clients import configure_aiokafka
from app.adapters.kafka_security import faust_credentials
from app.adapters.model_store import ModelRejected, ModelStore
from app.adapters.partitioning import partition_for
from app.adapters.state_view import StateView
from app.controller.analyst import PartitionAnalyst
from app.controller.commands import CommandHandler
from app.controller.dashboard import WebServer, start_web
from app.controller.lanes import PartitionLanes
from app.controller.publications import PublicationHandler
from app.controller.publisher import DecisionPublisher
from app.controller.replay_history import ReplayHistory
from app.controller.retirement import Retirer
from app.core import health
from app.core.manifest import DeploymentSpec
from app.core.topics import Topic
from app.settings import Settings

log = logging.getLogger(__name__)

APP_ID = "rollout-controller"


class ControlPlane(Service):
    """The controller's own Kafka clients, started and stopped with the faust app, and one
    ``PartitionAnalyst`` per control partition faust assigns to this process."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.view = StateView(settings)
        self.publisher = DecisionPublisher(settings, group_id=settings.topics.scoped(APP_ID))
        self.store = ModelStore(settings.artifact_cache_dir, seed=settings.model_store)
        self.cache = ArtifactCache(settings, self.store)
        self.history = ReplayHistory(settings)  # the replay gates' reading, kept between them
        self.handler = CommandHandler(
            self.store, self.view, self.publisher, settings, self.cache, self.history
        )
        self.retirer = Retirer(settings, self.view, self.cache, lambda: set(self.analysts))
        self.publications = PublicationHandler(
            self.store,
            self.view,
            self.publisher,
            settings,
            current=self.handler.current,
            owns=lambda partition: partition in self.analysts,
            history=self.history,
        )
        self.view.listeners.append(self.publications.on_state)
        self.lanes = PartitionLanes(self.publications.handle)  # one per published partition
        self.analysts: dict[int, PartitionAnalyst] = {}
        self.ready = asyncio.Event()
        self.web: WebServer | None = None
        self.partitions: set[int] | None = None  # None until the group assigns some

    async def on_start(self) -> None:
        await self.view.start()
        await self.view.catch_up()
        self.ready.set()
        self.retirer.start()
        log.info("controller ready: %d deployments known", len(self.view.states))
        self.web = await start_web(self.settings, self.view, lambda: self.analysts, self.readiness)

    async def on_stop(self) -> None:
        await self.retirer.stop()
        if self.web is not None:
            await self.web.stop()
        await self.lanes.stop()
        await self.publications.stop()
        for partition in list(self.analysts):
            await self._release(partition)
        await self.publisher.close()
        await self.history.stop()
        await self.view.stop()

    def readiness(self) -> health.Probe:
        return health.controller_readiness(
            states_loaded=self.ready.is_set(),
            assigned=self.partitions,
            restored=set(self.analysts),
        )

    async def assigned(self, partitions: set[int]) -> None:
        """Act for ``partitions`` from now on, and for no others."""
        self.partitions = set(partitions)
        await self.ready.wait()
        for partition in set(self.analysts) - partitions:
            await self._release(partition)
        count = self.view.partition_count
        for partition in sorted(partitions - set(self.analysts)):
            known = {*self.store.declared(), *self.view.states}  # states: stores elsewhere
            mine = [d for d in sorted(known) if partition_for(d, count) == partition]
            await self.handler.ensure_initial_states({d: partition for d in mine})
            analyst = PartitionAnalyst(
                partition,
                self.settings,
                self.view,
                self.publisher,
                owns=lambda name, p=partition: partition_for(name, count) == p,
                specs=self._spec,
            )
            await analyst.start()
            self.analysts[partition] = analyst
        self.publications.drain_owned()  # a rollout may have ended under the previous owner
        log.info("acting for control partitions %s", sorted(partitions))

    def _spec(self, deployment: str) -> DeploymentSpec | None:
        """``deployment``'s deployment.yaml, or None (logged) when it cannot be read."""
        try:
            return self.store.spec(deployment)
        except ModelRejected as exc:
            log.warning("no deployment spec for %s (%s): analysed as a classifier", deployment, exc)
            return None

    async def _release(self, partition: int) -> None:
        await self.lanes.release(partition)  # co-partitioned: models.published's partition too
        analyst = self.analysts.pop(partition, None)
        if analyst is not None:
            await analyst.stop()
        async with self.publisher.lock(partition):
            await self.publisher.release(partition)


async def _answer(
    stream: faust.StreamT[bytes],
    ready: asyncio.Event,
    handle: Callable[[bytes | None, bytes | None, int, int], Awaitable[object]],
) -> None:
    """Hand each record of ``stream`` (key, value, partition, offset) to ``handle``, in order,
    once the control plane is ready (``handle`` publishes its answer and the offset past it in
    one transaction)."""
    await ready.wait()
    async for event in stream.events():
        message = event.message
        await handle(message.key, message.value, message.partition, message.offset)


def build_app(settings: Settings) -> faust.App:
    (settings.home / "controller").mkdir(parents=True, exist_ok=True)  # faust makes one level
    app = faust.App(
        settings.topics.scoped(APP_ID),  # the consumer group: one per environment
        broker=";".join(f"kafka://{host}" for host in settings.bootstrap_servers.split(",")),
        broker_credentials=faust_credentials(settings),
        key_serializer="raw",
        value_serializer="raw",
        topic_allow_declare=False,  # topics are declared in topics.yaml
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        datadir=str(settings.home / "controller"),
        web_enabled=False,
        # A dead controller's partitions move to a live one within seconds.
        broker_session_timeout=settings.controller_session_timeout_s,
        broker_heartbeat_interval=max(settings.controller_session_timeout_s / 6, 0.5),
    )
    plane = ControlPlane(settings)
    app.add_dependency(plane)
    control_topic = settings.topics.name(Topic.CONTROL)
    control = app.topic(control_topic, key_type=bytes, value_type=bytes, allow_empty=True)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]  # mode's stub is narrower
    async def on_assigned(sender: Any, *args: Any, signal: Any = None, **kwargs: Any) -> None:
        assigned: set[Any] = args[0] if args else kwargs.get("assigned", set())
        await plane.assigned({tp.partition for tp in assigned if tp.topic == control_topic})

    @app.agent(control)
    async def commands(stream: faust.StreamT[bytes]) -> None:
        await _answer(stream, plane.ready, plane.handler.handle)

    published = app.topic(
        settings.topics.name(Topic.PUBLISHED), key_type=bytes, value_type=bytes, allow_empty=True
    )

    @app.agent(published)
    async def publications(stream: faust.StreamT[bytes]) -> None:
        # Each partition answered in order, the partitions side by side (``lanes``); an
        # event is acked once its answer committed, so faust commits no further.
        await plane.ready.wait()
        async for event in stream.noack().events():  # type: ignore[attr-defined]  # not in StreamT
            await plane.lanes.put(event.message, event.ack)

    app.plane = plane  # type: ignore[attr-defined]
    return app


def run_controller(settings: Settings, loglevel: str = "info") -> None:
    configure_aiokafka()
    tune_collector()  # it reads comparisons in batches too (``app.adapters.collector``)
    app = build_app(settings)
    # Logging is set up by the entry point (JSON lines off a terminal): faust keeps it.
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, override_logging=False)
    worker.execute_from_commandline()
