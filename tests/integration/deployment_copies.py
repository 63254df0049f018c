"""Many deployments for integration tests: copies of ``fraud`` (its three versions) under new
names in a model store, created live with the controller's ``create`` command (as
``rollout deployments create`` does), and the controller's decisions read per deployment."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

import orjson

from app.adapters.control_client import send_command
from app.core.events import Action, ControlCommand, DecisionEvent
from app.settings import Settings


def copy_fraud(store: Path, name: str) -> None:
    """``fraud``'s folder copied to ``name`` (deployment.yaml and manifests renamed)."""
    folder = store / name
    shutil.copytree(store / "fraud", folder)
    spec = folder / "deployment.yaml"
    spec.write_text(spec.read_text().replace("name: fraud", f"name: {name}", 1))
    for manifest in folder.glob("*/model.json"):
        data = orjson.loads(manifest.read_bytes())
        data["name"] = name
        manifest.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))


async def create(settings: Settings, name: str) -> DecisionEvent:
    """Have the controller publish ``name``'s first state (workers serve it at once)."""
    return await order(settings, name, Action.CREATE)


async def order(settings: Settings, name: str, action: Action, **fields: Any) -> DecisionEvent:
    decision = await send_command(
        settings,
        ControlCommand(
            command_id=uuid.uuid4().hex,
            deployment=name,
            action=action,
            issued_by="tests",
            **fields,
        ),
        timeout_s=60,
    )
    assert decision is not None, f"the controller did not answer for {name}"
    assert decision.accepted, f"{name}: {decision.reason}"
    return decision
