"""Keeps a worker's routing table in step with ``deployments.state``.

A new state is taken in the background: its models are loaded (in a thread, verified by the
model store) while the old table keeps serving, then the table is replaced in one assignment,
so a batch is routed entirely under one epoch and no request waits for a load. Models stay
loaded while the current production, the candidate or the previous production (the rollback
target) of some deployment refers to them, so a rollback switches without loading anything.
While a promotion is watched (``state.watch``) the previous production is also in the route,
scoring the audit sample beside production.
A state whose production cannot be loaded is not taken: the last good table keeps serving
and the failure is kept in ``failures`` (and logged). At start there is no good table yet: the
follower waits for the published state's models (it never serves an older model instead), so
a worker that cannot load a deployment's production does not join the group (the others
serve). A candidate that cannot be loaded is not served: the state is taken with production
alone (its predictions say so), reported, and tried again with the deployment's next state.

With an ``ArtifactCache`` a version (and a deployment's spec) the local store lacks is
fetched from ``models.artifacts`` and verified against the sha256 the state names before it
is loaded, so a worker needs no shared files: its store may start empty. Sessions of versions
no state refers to any more are dropped (``_evict``), and their memory with them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from app.adapters import worker_metrics
from app.adapters.artifact_cache import ArtifactCache
from app.adapters.model_store import LoadedModel, ModelRejected, ModelStore, release_memory
from app.adapters.state_view import StateView
from app.core.artifacts import ArtifactRejected
from app.core.events import DeploymentState, ModelRef, now_ms
from app.core.routes import DeploymentRoute, RoutingTable
from app.core.state_machine import initial_state

log = logging.getLogger(__name__)

_Key = tuple[str, str]  # (uri, sha256)


def _key(ref: ModelRef) -> _Key:
    return (ref.uri, ref.sha256)


class TableFollower:
    def __init__(
        self, store: ModelStore, view: StateView, cache: ArtifactCache | None = None
    ) -> None:
        self._store = store
        self._view = view
        self._cache = cache
        self._models: dict[_Key, LoadedModel] = {}
        self._pending: dict[str, DeploymentState] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self.table: RoutingTable = {}
        self.failures: dict[str, str] = {}
        # Deployments whose state names a candidate this worker could not load, and why.
        self.unserved: dict[str, str] = {}
        self.switches = 0

    async def start(self, stop: asyncio.Event | None = None, retry_s: float = 1.0) -> bool:
        """Build the first table from the latest states (or ``deployment.yaml`` for a
        deployment with no state yet), then follow. When a published state's models cannot be
        loaded from the local store (a file deleted or corrupted after deployment), wait and
        retry: serving another model under an earlier epoch would take the deployment
        backwards. A deployment the store does not hold (known from its state alone) is
        fetched; when that fails it is reported and left out (tried again with its next
        state), rather than holding every other deployment back. Returns False when ``stop``
        was set while waiting (nothing is followed then)."""
        await self._view.catch_up()
        table: dict[str, DeploymentRoute] = {}
        local = set(self._store.declared())
        for name in sorted(local | set(self._view.states)):
            route = await self._first_route(name)
            if route is None and name in local and name in self._view.states:
                route = await self._hold(name, stop, retry_s)
                if route is None:
                    return False
            if route is not None:
                table[name] = route
        self.table = table
        self._evict()
        self._view.listeners.append(self._on_state)
        # States the view took while the first table was being loaded: take them now (no
        # await between attaching the listener and this, so none slips through).
        for state in list(self._view.states.values()):
            self._on_state(state)
        self._task = asyncio.create_task(self._run(), name="table-follower")
        return True

    async def _hold(
        self, name: str, stop: asyncio.Event | None, retry_s: float
    ) -> DeploymentRoute | None:
        """Retry ``name``'s first route until it loads (None: ``stop`` was set)."""
        while stop is None or not stop.is_set():
            await asyncio.sleep(retry_s)
            await self._view.catch_up()
            route = await self._first_route(name)
            if route is not None:
                return route
        return None

    async def _first_route(self, name: str) -> DeploymentRoute | None:
        state = self._view.states.get(name)
        if state is not None:
            return await self._route(state)
        # No state published yet: the declared default. When it does not read or load, the
        # deployment is left out and said to be (``unavailable``): it has no epoch to keep,
        # and the controller gives it no state either until it is fixed.
        try:
            spec = self._store.spec(name)
            route = await self._route(
                initial_state(spec, self._store.ref(name, spec.initial_production), now_ms())
            )
        except ModelRejected as error:
            self.failures[name] = error.reason
            route = None
        if route is None:
            log.error(
                "deployment %s not served: %s", name, self.failures.get(name),
                extra={"deployment": name},
            )  # fmt: skip
        return route

    def unavailable(self) -> dict[str, str]:
        """Deployments this worker knows of but does not serve (no table entry: their
        production could not be fetched or loaded), and why."""
        table = self.table
        return {name: why for name, why in self.failures.items() if name not in table}

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def settle(self, timeout_s: float = 30.0) -> None:
        """Return once every committed state is read and taken (or failed): called on a
        partition assignment, so a partition's epochs never go backwards across workers."""
        await self._view.catch_up(timeout_s)
        await asyncio.wait_for(self._idle.wait(), timeout=timeout_s)

    def _on_state(self, state: DeploymentState) -> None:
        current = self.table.get(state.deployment)
        if current is not None and current.state.epoch >= state.epoch:
            return
        self._pending[state.deployment] = state  # the latest state of a deployment wins
        self._idle.clear()
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                name, state = self._pending.popitem()
                route = await self._route(state)
                if route is not None and state.epoch > self._epoch(name):
                    self.table = {**self.table, name: route}
                    self.switches += 1
                    self.failures.pop(name, None)
                    self._evict()
                    log.info(
                        "deployment %s: epoch %d, %s/%s, production %s, candidate %s",
                        name,
                        state.epoch,
                        state.mode,
                        state.phase,
                        state.production.version,
                        state.candidate.version if state.candidate else "-",
                    )
            if not self._pending:
                self._idle.set()

    def _epoch(self, name: str) -> int:
        route = self.table.get(name)
        return route.state.epoch if route is not None else -1

    async def _route(self, state: DeploymentState) -> DeploymentRoute | None:
        try:
            if self._cache is not None:
                await self._cache.ensure_spec(state.deployment)
            production = await self._load(state.production)
            spec = self._store.spec(state.deployment)
        except (ModelRejected, ArtifactRejected) as exc:
            self.failures[state.deployment] = f"epoch {state.epoch}: {exc.reason}"
            log.error(
                "deployment %s: cannot take epoch %d, still serving epoch %d: %s",
                state.deployment,
                state.epoch,
                self._epoch(state.deployment),
                exc.reason,
            )
            return None
        candidate = await self._candidate(state)
        if candidate is None and state.candidate is not None:
            state = state.model_copy(update={"candidate": None})  # production serves all
        if state.history:  # the rollback target, kept warm; serving does not depend on it
            await self._optional(state, state.history[-1], "rollback target")
        previous: LoadedModel | None = None
        if state.watch is not None and candidate is None:
            # A watched promotion: the previous production scores the audit sample beside
            # production. Serving does not depend on it: unloadable, nothing is watched here.
            previous = await self._optional(state, state.watch.previous, "watched previous")
        return DeploymentRoute(
            state=state,
            production=production,
            candidate=candidate,
            previous=previous,
            regression=spec.regression,
        )

    async def _candidate(self, state: DeploymentState) -> LoadedModel | None:
        """The state's candidate, or None (reported) when it cannot be loaded: a tampered or
        missing artifact is never served; production serves its requests meanwhile."""
        if state.candidate is None:
            self.unserved.pop(state.deployment, None)
            return None
        try:
            model = await self._load(state.candidate)
        except (ModelRejected, ArtifactRejected) as exc:
            self.unserved[state.deployment] = (
                f"epoch {state.epoch}: candidate {state.candidate.version} not served: {exc.reason}"
            )
            log.error(
                "deployment %s: epoch %d taken without its candidate %s (production serves"
                " everything): %s",
                state.deployment,
                state.epoch,
                state.candidate.version,
                exc.reason,
            )
            return None
        self.unserved.pop(state.deployment, None)
        return model

    async def _optional(
        self, state: DeploymentState, ref: ModelRef, what: str
    ) -> LoadedModel | None:
        try:
            return await self._load(ref)
        except (ModelRejected, ArtifactRejected) as exc:
            log.warning("deployment %s: %s not loadable: %s", state.deployment, what, exc.reason)
            return None

    async def _load(self, ref: ModelRef) -> LoadedModel:
        model = self._models.get(_key(ref))
        if model is None:
            if self._cache is not None:
                await self._cache.ensure(ref.name, ref.version, ref.sha256)
            model = await asyncio.to_thread(self._store.load, ref)
            self._models[_key(ref)] = model
            worker_metrics.MODELS_LOADED.set(len(self._models))
        return model

    def _evict(self) -> None:
        keep: set[_Key] = set()
        held: set[tuple[str, str]] = set()
        for route in self.table.values():
            st = route.state
            watched = st.watch.previous if st.watch is not None else None
            for ref in (st.production, st.candidate, *st.history[-1:], watched):
                if ref is not None:
                    keep.add(_key(ref))
                    held.add((st.deployment, ref.version))
        dropped = set(self._models) - keep
        for key in dropped:
            model = self._models.pop(key)  # the session's memory goes with its last reference
            log.info("unloaded %s v%s: no state refers to it", model.ref.name, model.ref.version)
        if dropped:
            release_memory()
        worker_metrics.MODELS_LOADED.set(len(self._models))
        worker_metrics.forget_versions(held)  # label sets follow the models held, not history
