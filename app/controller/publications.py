"""The controller's publication side: every ``ModelPublished`` on ``models.published`` (its
owned partitions) checked, its artifact fetched from ``models.artifacts`` and validated,
installed into the controller's model store, and rolled out per the deployment's
``policy.on_publish`` (``app.core.publication``); and, when a rollout ends, the next
queued version started.

A publication is answered in one transaction with the offset past it: ``publish``
(accepted, or refused: malformed, misrouted, unknown deployment, the version exists), then
``validate`` (the artifact complete and exactly the published sha256 and size, its manifest
given or derived from the graph, its signature the deployment's, a smoke run; or rejected
with the reason), then the rollout's steps (``supersede``, ``deploy``, ``queue``). Nothing is
served before ``validate`` accepts. The fetch is awaited and the ONNX checks run in a
thread, outside the partition's lock: commands and evidence on the partition go on
meanwhile. A replayed ``publish_id`` gets its first answer again and changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

from aiokafka import AIOKafkaProducer, TopicPartition

from app.adapters import controller_metrics
from app.adapters.artifact_cache import install, put_manifest
from app.adapters.artifacts import fetch
from app.adapters.kafka_clients import plain_producer
from app.adapters.model_store import ModelRejected, ModelStore, UnknownModel
from app.adapters.partitioning import partition_for
from app.adapters.publishing import PublishError, verify_published
from app.adapters.state_view import StateView
from app.controller.publisher import DecisionPublisher
from app.controller.replay_gate import gated
from app.controller.replay_history import ReplayHistory
from app.core.artifacts import ArtifactRejected
from app.core.events import (
    DecisionAction,
    DecisionEvent,
    DeploymentState,
    ModelPublished,
    ModelRef,
    encode,
    now_ms,
)
from app.core.incoming import key_text, loose_fields, parse
from app.core.manifest import DeploymentSpec, ModelManifest
from app.core.policy import PublishMode
from app.core.publication import answer, dequeue, orphan, received, roll_out, where_exists
from app.core.state_machine import CONTROLLER, Outcome
from app.core.topics import Topic
from app.settings import Settings

log = logging.getLogger(__name__)

# A publication's chunks are written just before it: read the last two minutes of the
# artifacts partition first (all of it when they are not all there: a slow upload, a late or
# re-sent publication). An hour was read before: at a fleet's pace (1,000 versions in 15
# minutes, ~40 MB of artifacts a partition) each fetch then read every version of the run,
# and validations, one at a time, fell behind the publications.
RECENT_MS = 120_000
ANSWERS_KEPT = 10_000  # publish_ids whose answer is remembered (replays answered from it)
# Plans put through the replay gate outside the partition's lock before the last, which holds
# it throughout (a deployment whose state keeps changing still gets its answer).
GATE_ATTEMPTS = 3


class _Refused(Exception):
    """A publication refused before its artifact is read; ``outcome`` is the answer."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.decision.reason)
        self.outcome = outcome


class PublicationHandler:
    def __init__(
        self,
        store: ModelStore,
        view: StateView,
        publisher: DecisionPublisher,
        settings: Settings,
        current: Callable[[str], DeploymentState | None],
        owns: Callable[[int], bool],
        history: ReplayHistory | None = None,
    ) -> None:
        self._store = store
        self._view = view
        self._publisher = publisher
        self._settings = settings
        self._current = current  # a deployment's state (its initial one when unpublished)
        self._owns = owns  # partition -> does this controller act for it now
        self._history = history  # the replay gates' reading, kept between them
        self._topic = settings.topics.name(Topic.PUBLISHED)
        self._answers: OrderedDict[str, DecisionEvent] = OrderedDict()
        self._published: dict[tuple[str, str], str] = {}  # (deployment, version) -> publish_id
        self._draining: dict[str, asyncio.Task[None]] = {}
        self._producer: AIOKafkaProducer | None = None  # manifest records (models.artifacts)
        self._starting = asyncio.Lock()  # lanes side by side: one producer all the same

    # -- a publication ---------------------------------------------------------------

    async def handle(
        self, key: bytes | None, value: bytes | None, partition: int, offset: int
    ) -> list[Outcome]:
        """Answer the publication at ``offset`` of ``partition``; the answers published."""
        await self._view.catch_up()
        consumed = {TopicPartition(self._topic, partition): offset + 1}
        try:
            event, state, spec = self._checked(key, value, partition)
        except _Refused as refused:
            return await self._commit(partition, [refused.outcome], consumed)
        first = received(state, event, now_ms())
        try:
            ref = await self._validated(event, spec)
        except PublishError as error:
            reason = f"version {event.version} rejected: {' '.join(str(error).split())}"
            rejected = answer(
                state, DecisionAction.VALIDATE, False, reason, now_ms(), event.publish_id
            )
            return await self._commit(partition, [first, rejected], consumed)
        fallback = state

        def started(state: DeploymentState) -> list[Outcome]:
            now = now_ms()
            reason = _validated_reason(ref, spec)
            valid = answer(state, DecisionAction.VALIDATE, True, reason, now, event.publish_id)
            return [first, valid, *roll_out(state, ref, event, spec.policy, now)]

        outcomes = await self._gated_commit(
            partition, lambda: self._current(event.deployment) or fallback, started, consumed
        )
        self._published[(event.deployment, event.version)] = event.publish_id
        return outcomes

    async def _gated_commit(
        self,
        partition: int,
        current: Callable[[], DeploymentState | None],
        plan: Callable[[DeploymentState], list[Outcome]],
        consumed: dict[TopicPartition, int] | None,
    ) -> list[Outcome]:
        """``plan``'s outcomes from the deployment's ``current`` state, an automatic deploy
        put through the replay gate (when its policy asks for one), committed on
        ``partition``. The gate takes seconds: it runs outside the partition's lock, so the
        other deployments' decisions go on meanwhile, and its outcomes are committed only if
        the state is still the one they were planned from (else planned and gated again;
        the last attempt holds the lock throughout)."""
        lock = self._publisher.lock(partition)
        for _ in range(GATE_ATTEMPTS - 1):
            gated_plan = await self._planned(current, plan)
            if gated_plan is None:
                return []
            before, outcomes = gated_plan
            async with lock:
                after = current()
                if after is not None and _same(before, after):
                    return await self._commit_locked(partition, outcomes, consumed)
            log.info(
                "%s changed during its replay gate: planned and gated again", before.deployment
            )
        async with lock:
            gated_plan = await self._planned(current, plan)
            if gated_plan is None:
                return []
            return await self._commit_locked(partition, gated_plan[1], consumed)

    async def _planned(
        self,
        current: Callable[[], DeploymentState | None],
        plan: Callable[[DeploymentState], list[Outcome]],
    ) -> tuple[DeploymentState, list[Outcome]] | None:
        """The state planned from and ``plan``'s outcomes through the replay gate; None when
        there is no state or nothing to do."""
        before = current()
        if before is None:
            return None
        planned = plan(before)
        if not planned:
            return None
        return before, await gated(
            self._settings, self._store, before, planned, history=self._history
        )

    def _checked(
        self, key: bytes | None, value: bytes | None, partition: int
    ) -> tuple[ModelPublished, DeploymentState, DeploymentSpec]:
        """The publication, its deployment's state and spec; ``_Refused`` when it is
        malformed, a replay, for an unknown deployment, misrouted, or of an existing version."""
        event, problem = parse(ModelPublished, value, "publication")
        if event is None:
            loose = loose_fields(value, ("publish_id", "deployment", "published_by"))
            name = loose.get("deployment") or key_text(key) or "unknown"
            reason = problem or "unreadable publication"
            by = loose.get("published_by", CONTROLLER)
            raise self._refused(name, reason, loose.get("publish_id"), by)
        earlier = self._answers.get(event.publish_id)
        if earlier is not None:
            reason = (
                f"publication {event.publish_id} was answered already ({earlier.reason}); "
                "not applied again"
            )
            raise self._refused(
                event.deployment, reason, event.publish_id, accepted=earlier.accepted
            )
        try:
            state = self._current(event.deployment) if event.deployment in self._known() else None
        except ModelRejected as error:  # declared, but its deployment.yaml does not read
            raise self._refused(
                event.deployment, error.reason, event.publish_id, event.published_by
            ) from None
        if state is None:
            reason = f"no deployment named {event.deployment!r}"
            raise self._refused(event.deployment, reason, event.publish_id, event.published_by)
        refusal = self._refusal(event, state, partition)
        if refusal is not None:
            raise self._refused(event.deployment, refusal, event.publish_id, event.published_by)
        return event, state, self._store.spec(event.deployment)

    def _refused(
        self,
        deployment: str,
        reason: str,
        publish_id: str | None,
        by: str = CONTROLLER,
        accepted: bool = False,
    ) -> _Refused:
        """The ``publish`` answer that ends a publication (``accepted`` only for a replay of
        an accepted one)."""
        now = now_ms()
        state = self._view.states.get(deployment)
        if state is None:
            return _Refused(orphan(deployment, reason, now, publish_id, by))
        return _Refused(
            answer(state, DecisionAction.PUBLISH, accepted, reason, now, publish_id, by)
        )

    def _known(self) -> set[str]:
        return set(self._view.states) | set(self._store.declared())

    def _refusal(self, event: ModelPublished, state: DeploymentState, partition: int) -> str | None:
        """Why ``event`` cannot be taken (misrouted, spec unreadable, version exists), or None."""
        home = partition_for(event.deployment, self._view.partition_count)
        if home != partition:
            return (
                f"published on partition {partition} of {self._topic}, but {event.deployment!r}"
                f" is on partition {home}: key the record by the deployment name (murmur2, as"
                " Kafka's Java client; kcat and librdkafka: -X partitioner=murmur2_random)"
            )
        try:
            self._store.spec(event.deployment)
        except ModelRejected as error:
            return error.reason
        where = where_exists(state, event.version)
        if where is None and (event.deployment, event.version) in self._published:
            earlier = self._published[(event.deployment, event.version)]
            where = f"it was published before (publication {earlier})"
        if where is None:
            where = self._in_store(event)
        if where is not None:
            return f"version {event.version} of {event.deployment!r} exists already: {where}"
        return None

    def _in_store(self, event: ModelPublished) -> str | None:
        """Whether the store holds other bytes as ``event``'s version. The same bytes are
        not a conflict: ``rollout publish`` on the controller's host writes them first."""
        try:
            manifest = self._store.manifest(event.deployment, event.version)
        except UnknownModel:
            return None
        except ModelRejected as error:
            return f"the model store holds an unreadable version ({error.reason})"
        if manifest.sha256 != event.artifact.sha256:
            return (
                f"the model store holds other bytes under it (sha256 {manifest.sha256[:12]}...,"
                f" published {event.artifact.sha256[:12]}...)"
            )
        return None

    async def _validated(self, event: ModelPublished, spec: DeploymentSpec) -> ModelRef:
        """The version fetched, checked and installed, its manifest record written for the
        other hosts (``app.adapters.artifact_cache``); ``PublishError`` with the reason."""
        try:
            data = await fetch(
                self._settings,
                event.deployment,
                event.version,
                event.artifact,
                since_ms=event.published_at - RECENT_MS,  # the chunks came just before
            )
            manifest = await asyncio.to_thread(self._verify_and_install, event, spec, data)
        except ArtifactRejected as error:
            raise PublishError(error.reason) from error
        await put_manifest(await self._manifests(), self._settings, manifest, event.artifact)
        return self._store.ref(event.deployment, event.version)

    def _verify_and_install(
        self, event: ModelPublished, spec: DeploymentSpec, data: bytes
    ) -> ModelManifest:
        with tempfile.TemporaryDirectory(prefix="rollout-publication-") as tmp:
            path = Path(tmp) / "model.onnx"
            path.write_bytes(data)
            manifest = verify_published(
                spec,
                path,
                event.version,
                event.manifest,
                event.labels,
                event.description,
                created_by=f"{event.published_by} (publication {event.publish_id})",
            )
        install(self._store, manifest, data)
        return manifest

    async def _manifests(self) -> AIOKafkaProducer:
        async with self._starting:
            if self._producer is None:
                producer = plain_producer(self._settings)
                await producer.start()
                self._producer = producer
        return self._producer

    # -- the queue -------------------------------------------------------------------

    def on_state(self, state: DeploymentState) -> None:
        """A ``StateView`` listener: a deployment of an owned partition with no rollout in
        flight and versions queued gets its next one started."""
        name = state.deployment
        if state.candidate is not None or not state.queue or name in self._draining:
            return
        partition = partition_for(name, self._view.partition_count)
        if not self._owns(partition):
            return
        task = asyncio.get_running_loop().create_task(self._drain(name, partition))
        self._draining[name] = task

    async def _drain(self, name: str, partition: int) -> None:
        try:
            policy = self._store.spec(name).policy
            while self._owns(partition):
                outcomes = await self._gated_commit(
                    partition,
                    lambda: self._view.states.get(name),
                    lambda state: dequeue(state, policy, now_ms()),
                    None,
                )
                if not outcomes:
                    return
        except Exception:  # one deployment's queue must not stop the controller
            log.exception("dequeue for %s failed; retried at its next state", name)
        finally:
            self._draining.pop(name, None)

    def drain_owned(self) -> None:
        """Start the next queued version of every owned deployment that has none in flight
        (after a partition is assigned: a rollout may have ended under another owner)."""
        for state in list(self._view.states.values()):
            self.on_state(state)

    async def stop(self) -> None:
        for task in list(self._draining.values()):
            task.cancel()
        await asyncio.gather(*self._draining.values(), return_exceptions=True)
        if self._producer is not None:
            await self._producer.stop()

    # -- publishing ------------------------------------------------------------------

    async def _commit(
        self,
        partition: int,
        outcomes: Sequence[Outcome],
        consumed: dict[TopicPartition, int] | None,
    ) -> list[Outcome]:
        async with self._publisher.lock(partition):
            return await self._commit_locked(partition, outcomes, consumed)

    async def _commit_locked(
        self,
        partition: int,
        outcomes: Sequence[Outcome],
        consumed: dict[TopicPartition, int] | None,
    ) -> list[Outcome]:
        """Every outcome's state and decision, in order, and the offset past the
        publication, in one transaction on ``partition``."""
        states = self._settings.topics.name(Topic.STATE)
        events = self._settings.topics.name(Topic.EVENTS)
        records: list[tuple[str, bytes, bytes]] = []
        for outcome in outcomes:
            key = outcome.decision.deployment.encode("utf-8")
            if outcome.state is not None:
                records.append((states, key, encode(outcome.state)))
            records.append((events, key, encode(outcome.decision)))
        await self._publisher.publish(partition, None, None, consumed, extra=records)
        for outcome in outcomes:
            controller_metrics.observe_decision(outcome.decision)
            if outcome.state is not None:
                self._view.offer(outcome.state)
            log.info(
                "%s %s for %s: %s (epoch %d)",
                "accepted" if outcome.decision.accepted else "rejected",
                outcome.decision.action,
                outcome.decision.deployment,
                outcome.decision.reason,
                outcome.decision.epoch,
            )
        publish_id = outcomes[-1].decision.command_id if outcomes else None
        if consumed is not None and publish_id is not None:
            self._remember(publish_id, outcomes[-1].decision)
        return list(outcomes)

    def _remember(self, publish_id: str, final: DecisionEvent) -> None:
        self._answers[publish_id] = final
        self._answers.move_to_end(publish_id)
        while len(self._answers) > ANSWERS_KEPT:
            self._answers.popitem(last=False)


def _same(before: DeploymentState, after: DeploymentState) -> bool:
    """Whether nothing but the clock moved between two reads of a deployment's state."""
    return before.model_dump(exclude={"updated_at"}) == after.model_dump(exclude={"updated_at"})


def _validated_reason(ref: ModelRef, spec: DeploymentSpec) -> str:
    mode = spec.policy.on_publish.mode
    then = (
        "on_publish is none: deploy it by hand"
        if mode is PublishMode.NONE
        else f"on_publish: {mode}, {spec.policy.on_publish.in_flight} when one is in flight"
    )
    return (
        f"version {ref.version} validated: artifact complete (sha256 {ref.sha256[:12]}...), "
        f"signature fits, smoke run passed; installed; {then}"
    )
