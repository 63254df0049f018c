"""``rollout worker`` and ``rollout controller``: the long-running services."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from app.adapters.logs import setup_logging
from app.cli import app
from app.cli.failures import ExitCode, fail
from app.controller import access
from app.controller.app import run_controller
from app.settings import load_settings
from app.worker.service import default_worker_id, run_event_loop, run_worker


@app.command()
def worker(
    worker_id: Annotated[
        str | None,
        typer.Option(
            "--worker-id",
            envvar="ROLLOUT_WORKER_ID",
            help="Stable id of this worker replica (its transactional id). Give each replica "
            "its own; a restart with the same id fences the previous incarnation.",
        ),
    ] = None,
) -> None:
    """Consume inference.requests and publish predictions, exactly once."""
    setup_logging(logging.INFO)
    settings = load_settings()
    run_event_loop(run_worker(settings, worker_id or default_worker_id()))


@app.command()
def controller(
    loglevel: Annotated[str, typer.Option(help="Log level.")] = "info",
) -> None:
    """Own the deployments' state: apply commands, publish states and decisions."""
    settings = load_settings()
    try:
        problem = access.bind_problem(settings, access.load_tokens(settings))
    except (access.TokenError, OSError) as exc:
        fail(ExitCode.USAGE, f"API tokens: {exc}")
    if problem is not None:
        fail(ExitCode.USAGE, problem)
    setup_logging(loglevel)
    run_controller(settings, loglevel=loglevel)
