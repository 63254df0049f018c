"""``rollout api-token NAME --role read|operator``: make a token for the controller's HTTP API.
Prints the token (give it to NAME) and the line that grants it in a tokens file
(``ROLLOUT_API_TOKENS_FILE``), which holds only its sha256 digest."""

from __future__ import annotations

from typing import Annotated

import orjson
import typer

from app.cli import app
from app.controller.access import ApiRole, file_line, new_token


@app.command("api-token")
def api_token(
    name: Annotated[str, typer.Argument(help="Who will use it (becomes issued_by).")],
    role: Annotated[ApiRole, typer.Option("--role", help="read, or operator (commands).")] = (
        ApiRole.READ
    ),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON, for scripts.")] = False,
) -> None:
    """A new API token for NAME, and its line for ROLLOUT_API_TOKENS_FILE."""
    if not name or any(c.isspace() or c in ",:#" for c in name):
        raise typer.BadParameter("a name without spaces, commas, colons or #", param_hint="NAME")
    token = new_token()
    line = file_line(name, role, token)
    if as_json:
        typer.echo(orjson.dumps({"name": name, "role": role, "token": token, "line": line}))
        return
    typer.echo(f"token: {token}")
    typer.echo(f"line for ROLLOUT_API_TOKENS_FILE: {line}")
