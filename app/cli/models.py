"""Model verbs: ``rollout publish DEPLOYMENT MODEL.onnx`` writes an immutable version into the
model store, uploads it to ``models.artifacts`` and writes a ``ModelPublished`` event that the
controller validates and rolls out per the deployment's ``on_publish`` (``--local-only``: the
store alone); ``rollout deployments create NAME --model MODEL.onnx`` makes a deployment (and
asks the controller for its first state, so running workers and controllers serve and judge
it without a restart); ``rollout deployments list`` shows them. Exit codes:
``app.cli.failures`` (1 refused, 2 no controller answered)."""

from __future__ import annotations

import asyncio
import getpass
import json
import uuid
from pathlib import Path
from typing import Annotated

import orjson
import typer
import yaml
from rich.console import Console
from rich.table import Table

from app.adapters.control_client import current_states, send_command, send_publication
from app.adapters.model_store import ModelRejected, ModelStore
from app.adapters.publishing import PublishError, create, publish
from app.cli import app
from app.cli.failures import ExitCode, fail
from app.core.events import Action, ControlCommand, DeploymentState
from app.core.manifest import ModelManifest, RegressionSpec, Signature
from app.core.policy import Policy
from app.settings import load_settings

console = Console()
deployments = typer.Typer(no_args_is_help=True, help="Create and list deployments.")
app.add_typer(deployments, name="deployments")

Labels = Annotated[
    str | None,
    typer.Option(
        "--labels",
        help="Comma-separated names of the classes (classifier) or output values (regressor).",
    ),
]
Description = Annotated[str, typer.Option("--description", help="Kept in the manifest.")]


def _labels(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",")] if text else None


def _store() -> ModelStore:
    return ModelStore(load_settings().model_store)


@app.command("publish")
def publish_command(
    deployment: str,
    model: Path,
    version: Annotated[
        str | None, typer.Option("--version", help="Default: the next number.")
    ] = None,
    labels: Labels = None,
    description: Description = "",
    local_only: Annotated[
        bool,
        typer.Option(
            "--local-only", help="Only write the local model store (offline; no rollout)."
        ),
    ] = False,
    wait: Annotated[
        float, typer.Option("--wait", help="Seconds to wait for the controller's answer.")
    ] = 60.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON, for scripts.")] = False,
) -> None:
    """Publish MODEL (an ONNX file) as a new, immutable version of DEPLOYMENT: its signature
    is read from the graph and must fit the deployment's; a smoke inference must run. The
    version is written to the local model store (when it holds the deployment), its artifact
    to Kafka, then a ModelPublished event: the controller validates it and rolls it out as
    the deployment's policy.on_publish says. Waits for the controller's answers."""
    store = _store()
    manifest: ModelManifest | None = None
    if local_only or deployment in store.deployments():
        try:
            manifest = publish(
                store,
                deployment,
                model,
                version=version,
                labels=_labels(labels),
                description=description,
            )
        except PublishError as error:
            fail(ExitCode.REJECTED, f"refused: {error}")
        version = manifest.version
        if not as_json:
            console.print(
                f"[green]published[/green] {deployment} version {manifest.version} "
                f"(sha256 {manifest.sha256[:12]}): {_describe(manifest.signature)}"
            )
    if local_only:
        assert manifest is not None
        if as_json:
            typer.echo(orjson.dumps({"manifest": manifest.model_dump(mode="json")}).decode())
        else:
            console.print(
                f"  deploy it: rollout deploy {deployment} {manifest.version} --mode canary"
            )
        return
    if version is None:
        fail(ExitCode.USAGE, f"{deployment!r} is not in the local model store: give --version")
    _send_publication(deployment, version, model, manifest, labels, description, wait, as_json)


def _send_publication(
    deployment: str,
    version: str,
    model: Path,
    manifest: ModelManifest | None,
    labels: str | None,
    description: str,
    wait: float,
    as_json: bool,
) -> None:
    """Upload the artifact, write the ModelPublished event, print the controller's answers."""
    try:
        data = model.read_bytes()
    except OSError as error:
        fail(ExitCode.USAGE, f"cannot read {model}: {error}")
    event, answers = asyncio.run(
        send_publication(
            load_settings(),
            deployment,
            version,
            data,
            timeout_s=wait,
            manifest=manifest,
            labels=None if manifest is not None else _labels(labels),
            description=description,
            published_by=getpass.getuser(),
        )
    )
    if as_json:
        typer.echo(
            orjson.dumps(
                {
                    "publication": event.model_dump(mode="json"),
                    "decisions": [d.model_dump(mode="json", by_alias=True) for d in answers],
                }
            ).decode()
        )
    if not answers:
        fail(
            ExitCode.NO_ANSWER,
            f"no answer to the publication of {deployment} version {version} within "
            f"{wait:.0f}s: is `rollout controller` running? (publish_id {event.publish_id})",
        )
    if not as_json:
        for d in answers:
            mark = "[green]accepted[/green]" if d.accepted else "[red]rejected[/red]"
            console.print(f"{mark} {d.action} {d.deployment} (epoch {d.epoch}): {d.reason}")
    refused = next((d for d in answers if not d.accepted), None)
    if refused is not None:
        fail(ExitCode.REJECTED, f"rejected {refused.action} {deployment}: {refused.reason}")


@deployments.command("create")
def create_command(
    name: str,
    model: Annotated[Path, typer.Option("--model", help="The first version (ONNX).")],
    policy: Annotated[
        Path | None, typer.Option("--policy", help="A YAML or JSON file of policy fields.")
    ] = None,
    tolerance: Annotated[
        float | None,
        typer.Option(min=0.0, help="Regressor: values within this of production's agree."),
    ] = None,
    relative_tolerance: Annotated[
        float | None, typer.Option(min=0.0, help="Regressor: plus this share of |production|.")
    ] = None,
    error_cap: Annotated[
        float | None,
        typer.Option(min=0.0, help="Regressor: the cap on the absolute error against feedback."),
    ] = None,
    labels: Labels = None,
    description: Description = "",
    wait: Annotated[
        float, typer.Option("--wait", help="Seconds to wait for the controller.")
    ] = 30.0,
) -> None:
    """Create deployment NAME from MODEL (version 1) with the default policy or FILE's, and
    have the controller publish its first state: workers serve it at once."""
    regression = None
    if tolerance is not None or relative_tolerance is not None or error_cap is not None:
        regression = RegressionSpec(
            absolute_tolerance=tolerance or 0.0,
            relative_tolerance=relative_tolerance or 0.0,
            error_cap=error_cap,
        )
    try:
        spec = create(
            _store(),
            name,
            model,
            policy=_policy(policy),
            regression=regression,
            labels=_labels(labels),
            description=description,
        )
    except PublishError as error:
        console.print(f"[red]refused[/red]: {error}")
        raise typer.Exit(1) from None
    console.print(f"[green]created[/green] {name} in {_store().root}: {_describe(spec.signature)}")
    command = ControlCommand(
        command_id=uuid.uuid4().hex,
        deployment=name,
        action=Action.CREATE,
        issued_by=getpass.getuser(),
        reason=description or "new deployment",
    )
    decision = asyncio.run(send_command(load_settings(), command, timeout_s=wait))
    if decision is None:
        console.print(
            f"[yellow]no controller answered within {wait:.0f}s[/yellow]: {name} is in the "
            "store; a controller publishes its first state when it next takes its partition"
        )
        raise typer.Exit(2)
    if not decision.accepted:
        console.print(f"[red]the controller refused {name}[/red]: {decision.reason}")
        raise typer.Exit(1)
    console.print(f"  {decision.reason}")


def _policy(path: Path | None) -> Policy | None:
    if path is None:
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return Policy.model_validate(data or {})
    except (OSError, yaml.YAMLError, json.JSONDecodeError, ValueError) as error:
        raise typer.BadParameter(f"--policy {path}: {error}") from error


@deployments.command("list")
def list_command(
    states: Annotated[
        bool, typer.Option("--states/--no-states", help="Also read each deployment's state.")
    ] = True,
) -> None:
    """The deployments of the model store: kind, inputs, outputs, versions, and (from their
    published states) mode and production."""
    store = _store()
    published: dict[str, DeploymentState] = {}
    if states:
        try:
            published = asyncio.run(asyncio.wait_for(current_states(load_settings()), 15))
        except Exception as error:  # no broker: the store alone
            console.print(f"[yellow]states not read[/yellow]: {error}")
    table = Table("deployment", "kind", "inputs", "outputs", "versions", "mode", "production")
    for name in store.deployments():
        try:
            spec = store.spec(name)
        except ModelRejected as error:
            table.add_row(name, "?", error.reason, "", "", "", "")
            continue
        sig = spec.signature
        state = published.get(name)
        table.add_row(
            name,
            sig.kind,
            _inputs(sig),
            ", ".join(sig.labels or sig.targets),
            ", ".join(store.versions(name)),
            f"{state.mode}/{state.phase}" if state else "no state yet",
            state.production.version if state else spec.initial_production,
        )
    console.print(table)


def _inputs(sig: Signature) -> str:
    return ", ".join(f"{i.name} {i.dtype}{list(i.shape)}" for i in sig.inputs)


def _describe(sig: Signature) -> str:
    outputs = f"labels {list(sig.labels)}" if sig.labels else f"targets {list(sig.targets)}"
    return f"{sig.kind}, inputs {_inputs(sig)}, {outputs}"
