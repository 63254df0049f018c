"""Control-plane helpers for integration tests: the real CLI, commands, and a way to bring
the ``fraud`` deployment back to a known state between tests."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from typing import Any

import orjson

from app.adapters.control_client import current_states, send_command
from app.core.events import Action, ControlCommand, DecisionEvent, DeploymentState, Mode
from app.settings import Settings


def cli(
    bootstrap: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real ``rollout`` CLI."""
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "COLUMNS": "200", **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def status(bootstrap: str) -> dict[str, Any]:
    result = cli(bootstrap, "status", "--json")
    assert result.returncode == 0, result.stderr
    parsed: dict[str, Any] = orjson.loads(result.stdout)
    return parsed


async def command(settings: Settings, action: Action, **fields: Any) -> DecisionEvent:
    decision = await send_command(
        settings,
        ControlCommand(
            command_id=uuid.uuid4().hex,
            deployment="fraud",
            action=action,
            issued_by="tests",
            **fields,
        ),
        timeout_s=30,
    )
    assert decision is not None, "the controller did not answer"
    return decision


async def state(settings: Settings, wait_s: float = 30.0) -> DeploymentState:
    """``fraud``'s state; on a fresh broker the controller publishes epoch 0 only once it owns
    the partition, shortly after it says it is ready: wait for it."""
    deadline = time.monotonic() + wait_s
    while True:
        states = await current_states(settings)
        if "fraud" in states or time.monotonic() > deadline:
            return states["fraud"]
        await asyncio.sleep(0.5)


async def reset_fraud(settings: Settings, production: str = "1") -> DeploymentState:
    """No candidate, ``production`` serving everything, whatever earlier tests left behind."""
    st = await state(settings)
    if st.candidate is not None:
        assert (await command(settings, Action.ABORT)).accepted
    st = await state(settings)
    if st.production.version != production:
        d = await command(settings, Action.DEPLOY, version=production, mode=Mode.AUTOMATIC)
        assert d.accepted, d.reason
    return await state(settings)
