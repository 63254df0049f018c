"""``rollout schemas``: write the JSON Schema of every event (``app.core.contract_schemas``) to
``schemas/``, or with ``--check`` only report whether the files there are up to date."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from app.cli import app
from app.core.contract_schemas import render, schemas


@app.command("schemas")
def write_schemas(
    out: Annotated[Path, typer.Option("--out", help="Directory of the schema files.")] = Path(
        "schemas"
    ),
    check: Annotated[
        bool, typer.Option("--check", help="Write nothing; exit 1 when a file differs.")
    ] = False,
) -> None:
    """Generate schemas/<EventName>.json from the event models (app/core/events.py)."""
    wanted = {name: render(document) for name, document in schemas().items()}
    differing = [
        name
        for name, text in wanted.items()
        if not (out / name).is_file() or (out / name).read_text(encoding="utf-8") != text
    ]
    stale = sorted(p.name for p in out.glob("*.json") if p.name not in wanted)
    if not check:
        out.mkdir(parents=True, exist_ok=True)
        for name in differing:
            (out / name).write_text(wanted[name], encoding="utf-8")
            typer.echo(f"wrote     {out / name}")
        for name in stale:
            typer.secho(
                f"warning: {out / name} is no event's schema; delete it",
                fg=typer.colors.YELLOW,
                err=True,
            )
        typer.echo(f"{len(wanted)} schemas in {out}, {len(differing)} written")
        return
    for name in differing:
        typer.echo(f"differs   {out / name}")
    for name in stale:
        typer.echo(f"stale     {out / name}")
    if differing or stale:
        typer.secho("schemas are out of date: run `rollout schemas`", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    typer.echo(f"{len(wanted)} schemas in {out} are up to date")
