"""A process's small HTTP server (aiohttp, on the process's own event loop).

Workers serve ``/metrics`` and the health probes ``/healthz`` and ``/readyz`` (200 with
``{"ok": true, ...}``, or 503 with the reasons why not); the controller adds its dashboard and
JSON API to the same kind of server (``app.controller.dashboard``). Port 0 means "no server".
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from app.adapters import metrics
from app.core.health import Probe

ProbeSource = Callable[[], Probe]

log = logging.getLogger(__name__)


async def metrics_handler(request: web.Request) -> web.Response:
    return web.Response(body=metrics.rendered(), headers={"Content-Type": metrics.CONTENT_TYPE})


def probe_handler(source: ProbeSource) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        probe = source()
        return web.Response(
            body=orjson.dumps(probe.to_json()),
            status=200 if probe.ok else 503,
            content_type="application/json",
        )

    return handle


def add_probes(app: web.Application, live: ProbeSource, ready: ProbeSource) -> None:
    app.router.add_get("/healthz", probe_handler(live))
    app.router.add_get("/readyz", probe_handler(ready))


def metrics_app(
    live: ProbeSource | None = None, ready: ProbeSource | None = None
) -> web.Application:
    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    if live is not None and ready is not None:
        add_probes(app, live, ready)
    return app


async def start_site(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Serve ``app`` on ``host:port`` until the returned runner is cleaned up."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    log.info("http server on http://%s:%d", host, port, extra={"port": port})
    return runner
