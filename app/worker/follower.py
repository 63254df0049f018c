"""Keeps a worker's routing table in step with ``deployments.state``.

A new state is taken in the background: its models are loaded (in a thread, verified by the
model store) while the old table keeps serving, then the table is replaced in one assignment,
so a batch is routed entirely under one epoch and no request waits for a load. Models stay
loaded while the current production, the candidate or the previous production (the rollback
target) of some deployment refers to them, so a rollback switches without loading anything.
While a promotion is watched (``state.watch``) the previous production is also in the route,
scoring the audit sample beside production.
A state whose models cannot be loaded is not taken: the last good table keeps serving and
the failure is kept in ``failures`` (and logged). At start there is no good table yet: the
follower waits for the published state's models (it never serves an older model instead).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from app.adapters import metrics
from app.adapters.model_store import LoadedModel, ModelRejected, ModelStore
from app.adapters.state_view import StateView
from app.core.events import DeploymentState, ModelRef, now_ms
from app.core.scoring import DeploymentRoute, RoutingTable
from app.core.state_machine import initial_state

log = logging.getLogger(__name__)

_Key = tuple[str, str]  # (uri, sha256)


def _key(ref: ModelRef) -> _Key:
    return (ref.uri, ref.sha256)


class TableFollower:
    def __init__(self, store: ModelStore, view: StateView) -> None:
        self._store = store
        self._view = view
        self._models: dict[_Key, LoadedModel] = {}
        self._pending: dict[str, DeploymentState] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self.table: RoutingTable = {}
        self.failures: dict[str, str] = {}
        self.switches = 0

    async def start(self, stop: asyncio.Event | None = None, retry_s: float = 1.0) -> bool:
        """Build the first table from the latest states (or ``deployment.yaml`` for a
        deployment with no state yet), then follow. When a published state's models cannot be
        loaded (a file deleted or corrupted after deployment), wait and retry: serving another
        model under an earlier epoch would take the deployment backwards. Returns False when
        ``stop`` was set while waiting (nothing is followed then)."""
        await self._view.catch_up()
        table: dict[str, DeploymentRoute] = {}
        for name in self._store.deployments():
            route = await self._first_route(name)
            while route is None:
                if stop is not None and stop.is_set():
                    return False
                await asyncio.sleep(retry_s)
                await self._view.catch_up()
                route = await self._first_route(name)
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

    async def _first_route(self, name: str) -> DeploymentRoute | None:
        state = self._view.states.get(name)
        if state is not None:
            return await self._route(state)
        spec = self._store.spec(name)  # no state published yet: the declared default
        route = await self._route(
            initial_state(spec, self._store.ref(name, spec.initial_production), now_ms())
        )
        if route is None:
            raise ModelRejected(f"{name}: {self.failures.get(name)}")
        return route

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
            production = await self._load(state.production)
            candidate = await self._load(state.candidate) if state.candidate else None
            self._store.spec(state.deployment)  # read again below: fails here, not there
        except ModelRejected as exc:
            self.failures[state.deployment] = f"epoch {state.epoch}: {exc.reason}"
            log.error(
                "deployment %s: cannot take epoch %d, still serving epoch %d: %s",
                state.deployment,
                state.epoch,
                self._epoch(state.deployment),
                exc.reason,
            )
            return None
        previous: LoadedModel | None = None
        if state.history:  # the rollback target, kept warm; serving does not depend on it
            try:
                await self._load(state.history[-1])
            except ModelRejected as exc:
                log.warning(
                    "deployment %s: rollback target not loadable: %s", state.deployment, exc.reason
                )
        if state.watch is not None and candidate is None:
            # A watched promotion: the previous production scores the audit sample beside
            # production. Serving does not depend on it: unloadable, nothing is watched here.
            try:
                previous = await self._load(state.watch.previous)
            except ModelRejected as exc:
                log.warning(
                    "deployment %s: watched previous production not loadable: %s",
                    state.deployment,
                    exc.reason,
                )
        return DeploymentRoute(
            state=state,
            production=production,
            candidate=candidate,
            previous=previous,
            regression=self._store.spec(state.deployment).regression,
        )

    async def _load(self, ref: ModelRef) -> LoadedModel:
        model = self._models.get(_key(ref))
        if model is None:
            model = await asyncio.to_thread(self._store.load, ref)
            self._models[_key(ref)] = model
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
        for key in set(self._models) - keep:
            del self._models[key]
        metrics.forget_versions(held)  # label sets follow the models held, not history
