"""The controller's web server: the live dashboard, its JSON API, and ``/metrics``.

Routes (all JSON unless said otherwise):

- ``GET /`` — the dashboard (one HTML page that polls the API every second).
- ``GET /api/deployments`` — ``{"now", "deployments": [view, ...]}``, one view per deployment
  (``app.core.rollout_view.deployment_view``): its state, the live analysis of its rollout
  (when this controller owns the deployment's partition), the traffic split over time and
  its recent decisions with their evidence, newest first.
- ``GET /api/deployments/{name}`` — one view; 404 if the deployment has no state.
- ``POST /api/deployments/{name}/commands`` — body ``{"action": "promote" | "rollback" |
  "pause" | "resume", "reason": str}`` (``Content-Type: application/json``, same origin, an
  operator's token; ``issued_by`` is the token's identity): writes a ``ControlCommand`` to
  ``deployments.control`` and answers with the controller's ``DecisionEvent`` (200 accepted,
  409 rejected, 504 no answer in time); 400 for an action outside that list or a malformed
  body, 404 for an unknown deployment (nothing is sent in either case).
- ``GET /metrics`` — Prometheus text format.
- ``GET /healthz``, ``GET /readyz`` — the probes (``app.core.health``): 200, or 503 and why.

Every ``/api`` route needs a token when tokens are configured (``app.controller.access``).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from typing import Any

import orjson
from aiohttp import web

from app.adapters import live_metrics
from app.adapters.control_client import send_command
from app.adapters.decision_log import DecisionLog
from app.adapters.http_server import ProbeSource, add_probes, metrics_handler, start_site
from app.adapters.state_view import StateView
from app.controller import access
from app.controller.analyst import PartitionAnalyst
from app.core.analysis import RolloutAnalysis
from app.core.events import Action, ControlCommand, DecisionEvent, DeploymentState, now_ms
from app.core.health import Probe
from app.core.rollout_view import analysis_view, decision_view, deployment_view
from app.core.watch import WatchAnalysis
from app.settings import Settings

log = logging.getLogger(__name__)

# What the dashboard's buttons may ask for.
BUTTON_ACTIONS = (Action.PROMOTE, Action.ROLLBACK, Action.PAUSE, Action.RESUME)

SendCommand = Callable[[ControlCommand], Awaitable[DecisionEvent | None]]


class Dashboard:
    def __init__(
        self,
        states: Callable[[], Mapping[str, DeploymentState]],
        analyses: Callable[[], Mapping[str, RolloutAnalysis]],
        decisions: DecisionLog,
        send: SendCommand,
        tokens: access.TokenBook | None = None,
        readiness: ProbeSource | None = None,
        watches: Callable[[], Mapping[str, WatchAnalysis]] = dict,
    ) -> None:
        self._readiness = readiness
        self._tokens = tokens if tokens is not None else access.TokenBook()
        self._states = states
        self._analyses = analyses
        self._decisions = decisions
        self._send = send
        self._watches = watches

    def app(self) -> web.Application:
        app = web.Application(middlewares=[access.middleware(self._tokens)])
        app.router.add_get("/", self.page)
        app.router.add_get("/api/deployments", self.list_deployments)
        app.router.add_get("/api/deployments/{name}", self.get_deployment)
        app.router.add_post("/api/deployments/{name}/commands", self.post_command)
        app.router.add_get("/metrics", metrics_handler)
        add_probes(app, _alive, self._readiness or _alive)
        return app

    def view(self, name: str, now: int) -> dict[str, Any] | None:
        state = self._states().get(name)
        if state is None:
            return None
        analysis = self._analyses().get(name)
        watch = self._watches().get(name)
        return deployment_view(state, analysis, self._decisions.recent(name), now, watch)

    async def page(self, request: web.Request) -> web.Response:
        html = resources.files("app.controller").joinpath("static/dashboard.html").read_text()
        return web.Response(text=html, content_type="text/html")

    async def list_deployments(self, request: web.Request) -> web.Response:
        now = now_ms()
        views = [self.view(name, now) for name in sorted(self._states())]
        return _json({"now": now, "deployments": [v for v in views if v is not None]})

    async def get_deployment(self, request: web.Request) -> web.Response:
        view = self.view(request.match_info["name"], now_ms())
        if view is None:
            return _json({"error": f"no deployment {request.match_info['name']!r}"}, 404)
        return _json(view)

    async def post_command(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self._states():
            return _json({"error": f"no deployment {name!r}"}, 404)
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            return _json({"error": f"body is not JSON: {exc}"}, 400)
        if not isinstance(body, dict):
            return _json({"error": "body must be a JSON object"}, 400)
        allowed = {a.value for a in BUTTON_ACTIONS}
        action = body.get("action")
        if action not in allowed:
            return _json({"error": f"action must be one of {sorted(allowed)}"}, 400)
        command = ControlCommand(
            command_id=uuid.uuid4().hex,
            deployment=name,
            action=Action(action),
            issued_by=access.principal_of(request).name[:128],
            reason=str(body.get("reason") or "from the dashboard")[:1000],
        )
        log.info(
            "dashboard: %s %s by %s",
            action,
            name,
            command.issued_by,
            extra={"deployment": name, "command_id": command.command_id},
        )
        decision = await self._send(command)
        if decision is None:
            return _json({"error": "no answer from the controller in time"}, 504)
        return _json(decision_view(decision), 200 if decision.accepted else 409)


def _alive() -> Probe:
    """The controller answers on the event loop its Kafka work runs on: the loop is alive."""
    return Probe(True, [], {"loop": "answering"})


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


class WebServer:
    """The controller's web server and the decision log behind it, started and stopped with
    the control plane. A port that cannot be bound is logged, and the controller goes on
    without its dashboard: deciding matters more than showing."""

    def __init__(self, decisions: DecisionLog, runner: web.AppRunner | None) -> None:
        self.decisions = decisions
        self.runner = runner

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        await self.decisions.stop()


async def start_web(
    settings: Settings,
    view: StateView,
    analysts: Callable[[], Mapping[int, PartitionAnalyst]],
    readiness: ProbeSource | None = None,
) -> WebServer:
    def analyses() -> dict[str, RolloutAnalysis]:
        return {
            name: tracked.analysis
            for analyst in analysts().values()
            for name, tracked in analyst.snapshot.rollouts.items()
        }

    def watches() -> dict[str, WatchAnalysis]:
        return {
            name: watch
            for analyst in analysts().values()
            for name, watch in analyst.snapshot.watches.items()
        }

    def analysis_views() -> dict[str, dict[str, Any]]:
        states = view.states
        return {n: analysis_view(states[n], a) for n, a in analyses().items() if n in states}

    live_metrics.watch_states(lambda: view.states)
    live_metrics.watch_analyses(analysis_views)
    decisions = DecisionLog(settings)
    await decisions.start()
    runner = None
    if settings.dashboard_port:

        async def send(command: ControlCommand) -> DecisionEvent | None:
            return await send_command(settings, command, timeout_s=15.0)

        tokens = access.load_tokens(settings)
        problem = access.bind_problem(settings, tokens)
        if problem is not None:
            await decisions.stop()
            raise access.TokenError(problem)
        if not tokens:
            log.warning(
                "the dashboard API has no tokens: anyone on this host may use it "
                "(set ROLLOUT_API_TOKENS or ROLLOUT_API_TOKENS_FILE)"
            )
        dashboard = Dashboard(
            lambda: view.states, analyses, decisions, send, tokens, readiness, watches
        )
        try:
            runner = await start_site(dashboard.app(), settings.http_host, settings.dashboard_port)
            log.info("dashboard on http://%s:%d/", settings.http_host, settings.dashboard_port)
        except OSError as exc:
            log.error("dashboard not served on port %d: %s", settings.dashboard_port, exc)
    return WebServer(decisions, runner)
