"""``rollout history DEPLOYMENT [--since DURATION]`` lists a deployment's decisions from
``deployments.events`` (who or what decided, and on what evidence); ``rollout explain
DEPLOYMENT EPOCH`` prints one decision's evidence in full. Both take ``--json``. Exit 1 when
there is nothing to show (no decision, no such epoch); other codes per ``app.cli.failures``."""

from __future__ import annotations

import asyncio
import re
from datetime import datetime
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

from app.adapters.topic_reader import read_to_end
from app.cli import app
from app.cli.failures import ExitCode, fail
from app.core.events import DecisionEvent, StateSummary, decode, now_ms
from app.core.topics import Topic
from app.settings import load_settings

console = Console()
Json = Annotated[bool, typer.Option("--json", help="Print JSON, for scripts.")]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")


def parse_duration(text: str) -> float:
    """Seconds in ``text``: ``90`` or ``90s``, ``15m``, ``2h``, ``7d``, ``1w``, or a sum such as
    ``1h30m``. ``ValueError`` on anything else."""
    compact = text.strip().lower()
    if not compact or _DURATION.sub("", compact):
        raise ValueError(f"not a duration: {text!r} (e.g. 90s, 15m, 2h, 7d, 1h30m)")
    return sum(float(n) * _UNITS[unit or "s"] for n, unit in _DURATION.findall(compact))


def decisions_of(deployment: str, records: list[bytes | None]) -> list[DecisionEvent]:
    """``deployment``'s readable decisions among ``records``, oldest first."""
    found = []
    for value in records:
        if value is None:
            continue
        try:
            event = decode(DecisionEvent, value)
        except ValueError:
            continue
        if event.deployment == deployment:
            found.append(event)
    return sorted(found, key=lambda e: (e.at, e.epoch))


def decision_at(decisions: list[DecisionEvent], epoch: int) -> DecisionEvent | None:
    """The decision that made ``epoch`` (accepted); else the last one taken at it."""
    at_epoch = [d for d in decisions if d.epoch == epoch]
    accepted = [d for d in at_epoch if d.accepted]
    chosen = accepted or at_epoch
    return chosen[-1] if chosen else None


def _load(deployment: str, since_s: float | None) -> list[DecisionEvent]:
    since_ms = None if since_s is None else now_ms() - int(since_s * 1000)
    settings = load_settings()
    records = asyncio.run(
        read_to_end(settings, settings.topics.name(Topic.EVENTS), since_ms=since_ms)
    )
    return decisions_of(deployment, [r.value for r in records])


def _dump(event: DecisionEvent) -> dict[str, Any]:
    return event.model_dump(mode="json", by_alias=True)


def _when(at_ms: int) -> str:
    return datetime.fromtimestamp(at_ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


def _summary(state: StateSummary | None) -> str:
    return "-" if state is None else f"{state.mode}/{state.phase} {state.weight:.0%}"


def _evidence_line(event: DecisionEvent) -> str:
    samples = ", ".join(f"{k} {v}" for k, v in event.evidence.samples.items())
    return samples or "-"


@app.command()
def history(
    deployment: str,
    since: Annotated[
        str | None, typer.Option("--since", help="Only the last DURATION (90s, 15m, 2h, 7d).")
    ] = None,
    as_json: Json = False,
) -> None:
    """The decisions about DEPLOYMENT: when, epoch, action, who or what decided, why."""
    try:
        since_s = parse_duration(since) if since is not None else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--since") from exc
    decisions = _load(deployment, since_s)
    if as_json:
        typer.echo(orjson.dumps([_dump(d) for d in decisions]).decode())
    if not decisions:
        window = f" in the last {since}" if since else ""
        fail(ExitCode.REJECTED, f"no decisions about {deployment!r}{window}")
    if as_json:
        return
    table = Table("at", "epoch", "action", "outcome", "decided by", "evidence", "reason")
    for d in decisions:
        table.add_row(
            _when(d.at),
            str(d.epoch),
            d.action,
            "accepted" if d.accepted else "[red]rejected[/red]",
            d.decided_by,
            _evidence_line(d),
            d.reason,
        )
    console.print(table)


@app.command()
def explain(deployment: str, epoch: int, as_json: Json = False) -> None:
    """One decision about DEPLOYMENT (the one that made EPOCH) with its evidence in full."""
    found = decision_at(_load(deployment, None), epoch)
    if found is None:
        fail(ExitCode.REJECTED, f"no decision about {deployment!r} at epoch {epoch}")
    if as_json:
        typer.echo(orjson.dumps(_dump(found)).decode())
        return
    outcome = "accepted" if found.accepted else "rejected"
    console.print(
        f"[bold]{found.deployment}[/bold] epoch {found.epoch}: {found.action} ({outcome}) "
        f"by {found.decided_by} at {_when(found.at)}"
    )
    if found.from_ is not None or found.to is not None:
        before = (
            f"{found.from_.mode}/{found.from_.phase} {found.from_.weight:.0%}"
            if found.from_
            else "-"
        )
        after = f"{found.to.mode}/{found.to.phase} {found.to.weight:.0%}" if found.to else "-"
        console.print(f"  {before} → {after}")
    console.print(f"  reason: {found.reason}")
    if found.command_id:
        console.print(f"  command: {found.command_id}")
    for part in ("samples", "metrics", "tests"):
        value = getattr(found.evidence, part)
        console.print(f"[bold]{part}[/bold]")
        console.print_json(orjson.dumps(value).decode() if value else "{}")
