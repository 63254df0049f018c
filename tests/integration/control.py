"""Control-plane helpers for integration tests: a real ``rollout controller`` process, the real
CLI, and a way to bring the ``fraud`` deployment back to a known state between tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from app.adapters.control_client import current_states, send_command
from app.core.events import Action, ControlCommand, DecisionEvent, DeploymentState, Mode
from app.settings import Settings


class ControllerProcess:
    def __init__(self, bootstrap: str, log_dir: Path, name: str = "c1", **env: str) -> None:
        self.log_path = log_dir / f"controller-{name}.log"
        # No dashboard unless a test asks for one (on a port of its own).
        self._env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "ROLLOUT_DASHBOARD_PORT": "0",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ControllerProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app", "controller"],
            env=self._env,
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
        )
        return self

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.log()
            if "Worker ready" in self.log():
                return
            time.sleep(0.2)
        raise TimeoutError(f"controller not ready:\n{self.log()[-3000:]}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


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


async def state(settings: Settings) -> DeploymentState:
    return (await current_states(settings))["fraud"]


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
