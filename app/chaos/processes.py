"""Real Rollout processes for fault scenarios: workers and controllers as subprocesses
(``python -m app ...``) that can be killed with SIGKILL, and a broker of the scenario's own on
free ports (so a restart never touches anyone else's)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from app.adapters import kafka_local
from app.adapters.kafka_local import BrokerConfig
from app.settings import Settings


class Process:
    """One ``python -m app <args>`` subprocess, its output in ``log_path``."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str]) -> None:
        self.args = args
        self.log_path = log_path
        self.env = {**os.environ, **env}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app", *self.args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """``kill -9``: no chance to finish the batch in flight."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def terminate(self, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for(self, text: str, timeout_s: float = 60.0, after: int = 0) -> None:
        """Until ``text`` appears in the log past character ``after``; raises on exit."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if text in self.log()[after:]:
                return
            if not self.alive():
                raise RuntimeError(f"{self.args} exited:\n{self.log()[-3000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"{self.args}: no {text!r} within {timeout_s}s:\n{self.log()[-3000:]}")


def worker(worker_id: str, log_dir: Path, env: dict[str, str]) -> Process:
    return Process(["worker", "--worker-id", worker_id], log_dir / f"worker-{worker_id}.log", env)


def controller(name: str, log_dir: Path, env: dict[str, str]) -> Process:
    home = log_dir / f"controller-{name}"
    return Process(
        ["controller"], log_dir / f"controller-{name}.log", {**env, "ROLLOUT_HOME": str(home)}
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that points a child process at the same cluster and model store."""
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "ROLLOUT_MODEL_STORE": str(Path(settings.model_store).resolve()),
    }
    return env


def dedicated_broker(home: Path, settings: Settings) -> BrokerConfig:
    """A broker config of its own in ``home`` on free ports, reusing the already fetched jars
    of ``settings.home`` when there are any (a symlink), so nothing is downloaded again."""
    shared = (Path(settings.home) / "kafka" / "libs").resolve()
    libs = home / "kafka" / "libs"
    if (shared / ".fetched").is_file() and not libs.exists():
        libs.parent.mkdir(parents=True, exist_ok=True)
        libs.symlink_to(shared)
    port = kafka_local.free_port_pair()
    return BrokerConfig(home=home, port=port, controller_port=port + 1)


def remove_broker_home(config: BrokerConfig) -> None:
    kafka_local.stop(config)
    shutil.rmtree(config.data_dir, ignore_errors=True)
