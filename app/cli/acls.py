"""``rollout acls apply``: create the Kafka ACLs ``acls.yaml`` declares that are missing, and
report the ACLs the cluster has for its principals that it does not declare (never deleted;
exit 1 on them only with ``--strict``). Run it as a super user of the cluster."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import orjson
import typer

from app.adapters.acls import AclsError, apply_acls, load_acls_file
from app.adapters.kafka_security import client_options
from app.cli import app
from app.cli.failures import ExitCode, fail
from app.settings import load_settings

acls_app = typer.Typer(no_args_is_help=True, help="Kafka ACLs as code (acls.yaml).")
app.add_typer(acls_app, name="acls")


@acls_app.command("apply")
def apply(
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="Default: settings.acls_file.")
    ] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Exit 1 when the cluster has undeclared ACLs.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON, for scripts.")] = False,
) -> None:
    """Create missing ACLs idempotently; never delete any."""
    settings = load_settings()
    try:
        desired = load_acls_file(file or settings.acls_file)
    except AclsError as exc:
        fail(ExitCode.USAGE, str(exc))
    try:
        result = asyncio.run(
            apply_acls(
                settings.bootstrap_servers,
                desired,
                named=settings.topics.declared,
                security=client_options(settings),
            )
        )
    except AclsError as exc:
        fail(ExitCode.REJECTED, str(exc))
    if as_json:
        typer.echo(
            orjson.dumps(
                {
                    "bootstrap": settings.bootstrap_servers,
                    "created": [str(a) for a in result.created],
                    "present": [str(a) for a in result.present],
                    "undeclared": [str(a) for a in result.undeclared],
                }
            ).decode()
        )
    else:
        for acl in result.created:
            typer.echo(f"created   {acl}")
        for acl in result.undeclared:
            typer.secho(f"warning: not declared: {acl} (not deleted)", fg="yellow", err=True)
        typer.echo(
            f"{len(result.created)} created, {len(result.present)} already present, "
            f"{len(result.undeclared)} undeclared on {settings.bootstrap_servers}"
        )
    if strict and result.undeclared:
        raise typer.Exit(int(ExitCode.REJECTED))
