"""A process's small HTTP server (aiohttp, on the process's own event loop).

Workers serve only ``/metrics``; the controller adds its dashboard and JSON API to the same
kind of server (``app.controller.dashboard``). Port 0 means "no server".
"""

from __future__ import annotations

import logging

from aiohttp import web

from app.adapters import metrics

log = logging.getLogger(__name__)


async def metrics_handler(request: web.Request) -> web.Response:
    return web.Response(body=metrics.rendered(), headers={"Content-Type": metrics.CONTENT_TYPE})


def metrics_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
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
