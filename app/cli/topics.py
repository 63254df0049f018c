"""``rollout topics apply``: create the topics declared in ``topics.yaml`` that are missing and
report differences on existing ones as warnings (exit 1 on them only with ``--strict``; a bad
file is a usage error, 64; other failures per ``app.cli.failures``)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import orjson
import typer

from app.adapters.kafka_security import client_options
from app.adapters.topics import TopicsError, apply_topics, desired_topics
from app.cli import app
from app.cli.failures import ExitCode, fail
from app.settings import load_settings

topics_app = typer.Typer(no_args_is_help=True, help="Kafka topics as code (topics.yaml).")
app.add_typer(topics_app, name="topics")


@topics_app.command("apply")
def apply(
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="Default: settings.topics_file.")
    ] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Exit 1 when existing topics differ.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON, for scripts.")] = False,
) -> None:
    """Create missing topics idempotently; never alter or delete existing ones."""
    settings = load_settings()
    try:
        desired = desired_topics(settings, file)
    except TopicsError as exc:
        fail(ExitCode.USAGE, str(exc))
    try:
        result = asyncio.run(
            apply_topics(settings.bootstrap_servers, desired, security=client_options(settings))
        )
    except TopicsError as exc:  # the cluster refused to create a topic
        fail(ExitCode.REJECTED, str(exc))
    if as_json:
        typer.echo(
            orjson.dumps(
                {
                    "bootstrap": settings.bootstrap_servers,
                    "created": result.created,
                    "present": result.present,
                    "differences": [str(d) for d in result.differences],
                }
            ).decode()
        )
        if strict and result.differences:
            raise typer.Exit(int(ExitCode.REJECTED))
        return
    for name in result.created:
        typer.echo(f"created   {name}")
    for name in result.present:
        typer.echo(f"present   {name}")
    for diff in result.differences:
        typer.secho(f"warning: {diff} (not altered)", fg=typer.colors.YELLOW, err=True)
    typer.echo(
        f"{len(result.created)} created, {len(result.present)} already present, "
        f"{len(result.differences)} differences on {settings.bootstrap_servers}"
    )
    if strict and result.differences:
        raise typer.Exit(int(ExitCode.REJECTED))
