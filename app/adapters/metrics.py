"""Every Prometheus metric of a Rollout process, as ``/metrics`` serves it (``rendered()``).

The metrics are defined in modules of their own: the worker's (``worker_metrics``), the
controller's (``controller_metrics``), the artifacts' (``artifact_metrics``, both processes)
and those read at scrape time (``live_metrics``), on the base of ``prometheus_base``. This
module imports them all, so that every process exposes every metric, as one registry; code
records through the module that owns a metric. ``rendered()`` is what ``/metrics`` serves
(see ``app.adapters.http_server``).
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

# Imported for their metrics' registration: every process exposes them all.
from app.adapters import (  # noqa: F401
    artifact_metrics,
    controller_metrics,
    live_metrics,
    worker_metrics,
)

CONTENT_TYPE = CONTENT_TYPE_LATEST


def rendered() -> bytes:
    """The text exposition of every metric of this process."""
    return generate_latest(REGISTRY)


__all__ = ["CONTENT_TYPE", "rendered"]
