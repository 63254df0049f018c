"""What tests build again and again, declared once: real ``rollout`` processes configured for
a test broker.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from app.harness import processes
from app.harness.processes import RolloutProcess


@contextmanager
def running_workers(
    bootstrap: str, ids: list[str], log_dir: Path, **env: str
) -> Iterator[list[RolloutProcess]]:
    """``rollout worker`` processes with ``ids`` on ``bootstrap``, stopped on the way out."""
    env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, **env}
    with processes.running([processes.worker(wid, log_dir, env) for wid in ids]) as workers:
        yield workers


def controller_process(
    bootstrap: str, log_dir: Path, name: str = "c1", **env: str
) -> RolloutProcess:
    """A ``rollout controller`` on ``bootstrap`` (not started); no dashboard unless ``env``
    asks for one (on a port of its own)."""
    return processes.controller(
        name,
        log_dir,
        {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "ROLLOUT_DASHBOARD_PORT": "0", **env},
    )
