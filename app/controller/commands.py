"""The controller's command side: validate a ``ControlCommand``, apply it, publish the outcome.

Validation that needs the model store happens here (the version exists, its file matches the
manifest's sha256, its signature fits the deployment, a smoke inference runs: all of it is
``ModelStore.load``); legality of the transition is the pure state machine's. Every command,
well-formed or not, gets exactly one ``DecisionEvent``; only an accepted one changes the state.

The store is a cache of ``models.artifacts`` (``ArtifactCache``): what a command names and
the store lacks (the deployment's spec, the version it deploys or creates) is fetched and
verified first; a refused artifact is the command's rejection reason. The other way, what an
accepted state refers to and the topic lacks (a version seeded in this store) is put on the
topic before the state is published, and on taking a partition the controller shares its
deployments' specs and referenced versions: a worker with an empty store can serve them.
"""

from __future__ import annotations

import contextlib
import logging

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from app.adapters.artifact_cache import ArtifactCache, share
from app.adapters.kafka_clients import plain_producer
from app.adapters.model_store import ModelRejected, ModelStore, UnknownModel
from app.adapters.state_view import StateView
from app.controller.publisher import DecisionPublisher
from app.controller.replay_gate import needs_replay, replay
from app.controller.replay_history import ReplayHistory
from app.core.artifacts import ArtifactRejected
from app.core.command_steps import apply
from app.core.events import (
    Action,
    ControlCommand,
    DecisionAction,
    DecisionEvent,
    DeploymentState,
    ModelRef,
    now_ms,
)
from app.core.incoming import key_text, loose_fields, parse
from app.core.retirement import referenced
from app.core.state_machine import (
    CONTROLLER,
    Outcome,
    initial_state,
    reject,
    reject_command,
)
from app.core.topics import Topic
from app.settings import Settings

log = logging.getLogger(__name__)


class CommandHandler:
    def __init__(
        self,
        store: ModelStore,
        view: StateView,
        publisher: DecisionPublisher,
        settings: Settings,
        cache: ArtifactCache | None = None,
        history: ReplayHistory | None = None,
    ) -> None:
        self._store = store
        self._history = history  # the replay gates' reading, kept between them
        self._view = view
        self._publisher = publisher
        self._settings = settings
        self._cache = cache or ArtifactCache(settings, store)

    def deployments(self) -> list[str]:
        return self._store.declared()

    def current(self, deployment: str) -> DeploymentState | None:
        """The deployment's latest state, or its initial state when none was published yet."""
        state = self._view.states.get(deployment)
        if state is not None:
            return state
        if deployment not in self._store.declared():
            return None
        spec = self._store.spec(deployment)
        return initial_state(spec, self._store.ref(deployment, spec.initial_production), now_ms())

    async def handle(
        self, key: bytes | None, value: bytes | None, partition: int, offset: int
    ) -> Outcome:
        await self._view.catch_up()
        async with self._publisher.lock(partition):
            await self._prefetch(value)
            outcome = self.decide(key, value)
            if needs_replay(outcome):
                before = self.current(outcome.decision.deployment)  # not yet replaced
                assert before is not None
                outcome = await replay(
                    self._settings, self._store, before, outcome, self._cache, self._history
                )
            if outcome.state is not None and outcome.decision.action in _NEW_VERSIONS:
                await self.share({outcome.state.deployment: sorted(referenced(outcome.state))})
            consumed = {
                TopicPartition(self._settings.topics.name(Topic.CONTROL), partition): offset + 1
            }
            await self._publisher.publish(partition, outcome.decision, outcome.state, consumed)
            if outcome.state is not None:
                self._view.offer(outcome.state)
        log.info(
            "%s %s for %s: %s (epoch %d)",
            "accepted" if outcome.accepted else "rejected",
            outcome.decision.action,
            outcome.decision.deployment,
            outcome.decision.reason,
            outcome.decision.epoch,
        )
        return outcome

    def decide(self, key: bytes | None, value: bytes | None) -> Outcome:
        now = now_ms()
        loose = loose_fields(value, _ECHOED)
        command, problem = parse(ControlCommand, value, "command")
        if command is not None and command.action is Action.CREATE:
            return self._create(command, now)
        deployment = command.deployment if command else loose.get("deployment") or key_text(key)
        try:
            state = self.current(deployment) if deployment else None
        except ModelRejected as exc:  # its deployment.yaml or first version does not read
            return _orphan(
                deployment or "unknown", loose, f"deployment {deployment!r}: {exc.reason}", now
            )
        if state is None:
            reason = problem or f"no deployment named {deployment!r}"
            return _orphan(deployment or "unknown", loose, reason, now)
        if command is None:
            return reject(
                state,
                problem or "unreadable command",
                now,
                action=DecisionAction.parse(loose.get("action")),
                command_id=loose.get("command_id"),
                decided_by=loose.get("issued_by", CONTROLLER),
            )
        candidate: ModelRef | None = None
        if command.action is Action.DEPLOY and command.version is not None:
            try:
                candidate = self._validated(command.deployment, command.version)
            except ModelRejected as exc:
                return reject_command(
                    state, command, f"version {command.version}: {exc.reason}", now
                )
        try:
            policy = self._store.spec(command.deployment).policy
        except ModelRejected as exc:  # a spec neither held nor fetched (the cache says why)
            return reject_command(state, command, exc.reason, now)
        return apply(state, command, now, candidate, policy)

    def _create(self, command: ControlCommand, now: int) -> Outcome:
        """A deployment new to the store gets its first state (epoch 0), once its
        ``deployment.yaml`` reads and its initial production loads (sha256, signature,
        smoke run); one that has a state already is refused."""
        name = command.deployment
        known = self._view.states.get(name)
        if known is not None:
            return reject(
                known,
                f"deployment {name!r} exists already (epoch {known.epoch})",
                now,
                action=DecisionAction.CREATE,
                command_id=command.command_id,
                decided_by=command.issued_by,
            )
        loose = {"action": command.action.value, "command_id": command.command_id}
        loose["issued_by"] = command.issued_by
        try:
            spec = self._store.spec(name)
            ref = self._validated(name, spec.initial_production)
        except ModelRejected as exc:
            return _orphan(name, loose, f"cannot create {name!r}: {exc.reason}", now)
        state = initial_state(spec, ref, now)
        decision = DecisionEvent(
            deployment=name,
            epoch=state.epoch,
            action=DecisionAction.CREATE,
            command_id=command.command_id,
            accepted=True,
            reason=f"created: {spec.signature.kind}, production {ref.version}; serving",
            decided_by=command.issued_by,
            to=None,
            at=now,
        )
        return Outcome(state, decision)

    def _validated(self, deployment: str, version: str) -> ModelRef:
        """The version's reference, once its artifact, signature and a smoke run check out."""
        try:
            ref = self._store.ref(deployment, version)
        except UnknownModel as unknown:
            if (deployment, version) in self._cache.missing:
                topic = self._settings.topics.name(Topic.ARTIFACTS)
                raise UnknownModel(f"{unknown.reason}; nor on {topic}") from None
            refused = self._cache.rejected.get((deployment, version))
            if refused is None:
                raise
            raise ModelRejected(f"artifact refused: {refused}") from None
        self._store.load(ref)
        return ref

    async def _prefetch(self, value: bytes | None) -> None:
        """Fetch into the store what the command names and the store lacks (verified; a
        refusal is kept in the cache's ``rejected`` for ``_validated`` to give as the
        reason): the deployment's spec, and the version it creates or deploys."""
        command, _ = parse(ControlCommand, value, "command")
        if command is None:
            return
        name = command.deployment
        known = name in self._view.states or self._store.has_spec(name)
        if not known and command.action is not Action.CREATE:
            return  # an unknown deployment: rejected as such, nothing to read
        # A refusal here is the decision's to report (``decide`` reads the same store and
        # says why); raising would crash the agent and leave the command unanswered.
        with contextlib.suppress(ArtifactRejected, ModelRejected, KafkaError, OSError):
            await self._cache.ensure_spec(name)
            if command.action is Action.CREATE:
                await self._cache.ensure(name, self._store.spec(name).initial_production)
            elif command.action is Action.DEPLOY and command.version is not None:
                await self._cache.ensure(name, command.version)

    async def share(self, wanted: dict[str, list[str]]) -> dict[str, list[str]]:
        """Put on ``models.artifacts`` each deployment's spec and those of its ``wanted``
        versions the store holds and the topic lacks (one read of the topic). Failures are
        logged, never raised: the decision stands, and hosts holding the files still serve.
        The versions uploaded, by deployment."""
        uploaded: dict[str, list[str]] = {}
        try:
            inventories = await self._cache.inventory(wanted)
            producer = plain_producer(self._settings)
            await producer.start()
            try:
                for name, versions in wanted.items():
                    uploaded[name] = await share(
                        producer, self._settings, self._store, name, versions, inventories[name]
                    )
            finally:
                await producer.stop()
        except Exception as error:  # a broker or file problem: say so, do not fail the command
            log.error("cannot share %s on the artifacts topic: %s", wanted, error)
        for name, versions in uploaded.items():
            if versions:
                log.info("shared %s versions %s on the artifacts topic", name, versions)
        return uploaded

    async def _sync_artifacts(self, names: list[str]) -> None:
        """On taking a partition: fetch the specs (and productions) of its deployments this
        store lacks, and share what it holds that the topic lacks (the specs, and the versions
        each state refers to, or the initial production of a deployment with no state yet):
        the ``models/`` seed reaches workers whose store is empty."""
        for name in names:
            state = self._view.states.get(name)
            if state is None or self._store.has_spec(name):
                continue
            try:
                await self._cache.ensure(name, state.production.version, state.production.sha256)
            except ArtifactRejected as error:  # logged and counted by the cache
                log.warning("deployment %s: its spec or production not fetched: %s", name, error)
        wanted: dict[str, list[str]] = {}
        for name in names:
            if self._store.has_spec(name):
                state = self._view.states.get(name)
                try:
                    held = (
                        referenced(state) if state else {self._store.spec(name).initial_production}
                    )
                except ModelRejected as error:  # said by ensure_initial_states
                    log.debug("deployment %s not shared: %s", name, error.reason)
                    continue
                wanted[name] = sorted(held)
        if wanted:
            await self.share(wanted)

    async def ensure_initial_states(self, partition_of: dict[str, int]) -> None:
        """Publish epoch 0 for each deployment of ``partition_of`` (name → its partition)
        that has no state yet."""
        await self._view.catch_up()
        await self._sync_artifacts(list(partition_of))
        for name in partition_of:
            if name in self._view.states:
                continue
            try:
                state = self.current(name)
            except ModelRejected as error:  # one unreadable folder must not stop the others
                log.error(
                    "deployment %s has no state and none can be made: %s; a create or deploy "
                    "for it is refused with this reason until it is fixed",
                    name,
                    error.reason,
                    extra={"deployment": name},
                )
                continue
            assert state is not None
            decision = DecisionEvent(
                deployment=name,
                epoch=0,
                action=DecisionAction.INITIALIZE,
                command_id=None,
                accepted=True,
                reason=state.reason,
                decided_by=CONTROLLER,
                to=None,
                at=state.updated_at,
            )
            partition = partition_of[name]
            async with self._publisher.lock(partition):
                await self._publisher.publish(partition, decision, state)
                self._view.offer(state)


_NEW_VERSIONS = frozenset({DecisionAction.CREATE, DecisionAction.DEPLOY})
# The fields a rejection echoes from a command that failed validation (ids, action, sender).
_ECHOED = ("command_id", "deployment", "action", "issued_by")


def _orphan(deployment: str, loose: dict[str, str], reason: str, now: int) -> Outcome:
    """A rejection for a deployment that has no state at all (unknown name, garbage key)."""
    return Outcome(
        None,
        DecisionEvent(
            deployment=deployment,
            epoch=-1,
            action=DecisionAction.parse(loose.get("action")),
            command_id=loose.get("command_id"),
            accepted=False,
            reason=reason,
            decided_by=loose.get("issued_by", CONTROLLER),
            at=now,
        ),
    )
