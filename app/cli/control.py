"""Operator verbs: ``rollout deploy|promote|rollback|abort|pause|resume|set-weight|set-mode``
write a ``ControlCommand`` and wait (bounded) for its ``DecisionEvent``; ``rollout status``
prints the deployments' states. Exit codes: ``app.cli.failures`` (1 rejected, 2 no answer, 3
broker unreachable, 4 refused); ``--json`` prints the ``DecisionEvent`` (or the states)."""

from __future__ import annotations

import asyncio
import getpass
import json
import uuid
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

from app.adapters.control_client import current_states, send_command
from app.cli import app
from app.cli.failures import ExitCode, fail
from app.core.events import (
    Action,
    ControlCommand,
    DecisionEvent,
    DeploymentState,
    Mode,
    now_ms,
)
from app.settings import load_settings

console = Console()

Wait = Annotated[float, typer.Option("--wait", help="Seconds to wait for the controller's answer.")]
Reason = Annotated[str, typer.Option("--reason", help="Why (kept in the audit log).")]
Unit = Annotated[float, typer.Argument(min=0.0, max=1.0)]
Json = Annotated[bool, typer.Option("--json", help="Print JSON, for scripts.")]


def _issue(
    deployment: str, action: Action, wait: float, reason: str, as_json: bool, **fields: Any
) -> None:
    command = ControlCommand(
        command_id=uuid.uuid4().hex,
        deployment=deployment,
        action=action,
        issued_by=getpass.getuser(),
        reason=reason,
        **fields,
    )
    decision = asyncio.run(send_command(load_settings(), command, timeout_s=wait))
    if decision is None:
        fail(
            ExitCode.NO_ANSWER,
            f"no answer to {action} {deployment} within {wait:.0f}s: "
            "is `rollout controller` running?",
        )
    if as_json:
        typer.echo(orjson.dumps(decision.model_dump(mode="json", by_alias=True)).decode())
    elif decision.accepted:
        _print_decision(decision)
    if not decision.accepted:
        fail(ExitCode.REJECTED, f"rejected {decision.action} {deployment}: {decision.reason}")


def _print_decision(d: DecisionEvent) -> None:
    to = d.to
    where = f" → {to.mode}/{to.phase}, weight {to.weight:.0%}" if to else ""
    console.print(f"[green]accepted[/green] {d.action} {d.deployment} (epoch {d.epoch}){where}")
    console.print(f"  {d.reason}")


@app.command()
def deploy(
    deployment: str,
    version: str,
    mode: Annotated[Mode, typer.Option("--mode", help="How the candidate gets traffic.")],
    weight: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="Canary: first weight.")
    ] = None,
    sample_rate: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="Shadow: share of requests scored.")
    ] = None,
    policy: Annotated[
        str | None, typer.Option(help="Policy overrides as JSON, e.g. '{\"alpha\": 0.01}'.")
    ] = None,
    wait: Wait = 30.0,
    reason: Reason = "",
    as_json: Json = False,
) -> None:
    """Deploy VERSION of DEPLOYMENT as candidate (or, in automatic mode, as production)."""
    overrides = None
    if policy is not None:
        try:
            overrides = json.loads(policy)
        except json.JSONDecodeError as exc:
            raise typer.BadParameter(f"--policy is not JSON: {exc}") from exc
    _issue(
        deployment,
        Action.DEPLOY,
        wait,
        reason,
        as_json,
        version=version,
        mode=mode,
        weight=weight,
        sample_rate=sample_rate,
        policy=overrides,
    )


@app.command()
def promote(deployment: str, wait: Wait = 30.0, reason: Reason = "", as_json: Json = False) -> None:
    """Make the candidate production."""
    _issue(deployment, Action.PROMOTE, wait, reason, as_json)


@app.command()
def rollback(
    deployment: str, wait: Wait = 30.0, reason: Reason = "", as_json: Json = False
) -> None:
    """Retire the candidate in flight, or else go back to the previous production."""
    _issue(deployment, Action.ROLLBACK, wait, reason, as_json)


@app.command()
def abort(deployment: str, wait: Wait = 30.0, reason: Reason = "", as_json: Json = False) -> None:
    """Retire the candidate."""
    _issue(deployment, Action.ABORT, wait, reason, as_json)


@app.command()
def pause(deployment: str, wait: Wait = 30.0, reason: Reason = "", as_json: Json = False) -> None:
    """Hold the rollout where it is."""
    _issue(deployment, Action.PAUSE, wait, reason, as_json)


@app.command()
def resume(deployment: str, wait: Wait = 30.0, reason: Reason = "", as_json: Json = False) -> None:
    """Continue a paused rollout."""
    _issue(deployment, Action.RESUME, wait, reason, as_json)


@app.command("set-weight")
def set_weight(
    deployment: str, weight: Unit, wait: Wait = 30.0, reason: Reason = "", as_json: Json = False
) -> None:
    """Set the canary's weight (share of entities on the candidate)."""
    _issue(deployment, Action.SET_WEIGHT, wait, reason, as_json, weight=weight)


@app.command("set-mode")
def set_mode(
    deployment: str, mode: Mode, wait: Wait = 30.0, reason: Reason = "", as_json: Json = False
) -> None:
    """Switch the rollout's mode."""
    _issue(deployment, Action.SET_MODE, wait, reason, as_json, mode=mode)


def _queue_json(state: DeploymentState) -> list[Any]:
    """The queue as JSON, empty too (the state's own JSON leaves an empty queue out)."""
    return [q.model_dump(mode="json") for q in state.queue]


@app.command()
def status(
    deployment: Annotated[str | None, typer.Argument()] = None,
    as_json: Json = False,
) -> None:
    """Each deployment's mode, phase, versions, weight, sample rate, queued versions (first
    out first) and epoch."""
    states = asyncio.run(current_states(load_settings()))
    if deployment is not None:
        if deployment not in states:
            fail(ExitCode.REJECTED, f"no state for deployment {deployment!r}")
        states = {deployment: states[deployment]}
    if as_json:
        typer.echo(
            orjson.dumps(
                {
                    name: {**st.model_dump(mode="json"), "queue": _queue_json(st)}
                    for name, st in sorted(states.items())
                },
                option=orjson.OPT_INDENT_2,
            ).decode()
        )
        return
    table = Table(
        "deployment",
        "mode",
        "phase",
        "production",
        "candidate",
        "weight",
        "sample",
        "queued",
        "epoch",
    )
    for name, st in sorted(states.items()):
        table.add_row(
            name,
            st.mode,
            st.phase,
            st.production.version,
            st.candidate.version if st.candidate else "-",
            f"{st.canary_weight:.0%}",
            f"{st.shadow_sample_rate:.0%}",
            ", ".join(q.model.version for q in st.queue) or "-",
            str(st.epoch),
        )
    console.print(table)
    for name, st in sorted(states.items()):
        console.print(f"{name} (epoch {st.epoch}): {st.reason}")
        if st.watch is not None:
            left = max(st.watch.until - now_ms(), 0) / 1000
            console.print(
                f"{name}: watching version {st.production.version} after its promotion; "
                f"version {st.watch.previous.version} stays loaded and is restored if it "
                f"degrades ({left:.0f} s left)"
            )
