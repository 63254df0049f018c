"""Rollout processes started from outside: the one wrapper every driver uses (the demo, the
bench, the fault scenarios, the integration tests).

:class:`RolloutProcess` is one ``python -m <module> <args>`` child (``app`` by default: the
``rollout`` command), its output appended to a log file (or discarded), that can be stopped
with SIGTERM or killed with SIGKILL. :func:`worker` and :func:`controller` build the two
services; :class:`Services` is a controller and its workers started and stopped together.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from app.settings import Settings

# What faust logs once the controller's app has started (its consumer group joined or joining).
CONTROLLER_READY = "Worker ready"


class RolloutProcess:
    """One ``python -m <module> <args>`` subprocess; output in ``log_path`` (None: discarded);
    ``env`` on top of this process's environment."""

    def __init__(
        self,
        args: Sequence[str],
        log_path: Path | None,
        env: Mapping[str, str],
        module: str = "app",
    ) -> None:
        self.args = list(args)
        self.module = module
        self.log_path = log_path
        self.env = {**os.environ, **env}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def start(self) -> RolloutProcess:
        command = [sys.executable, "-m", self.module, *self.args]
        if self.log_path is None:
            self.proc = subprocess.Popen(
                command, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            return self
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                command, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check(self) -> None:
        """Raise if the process was started and has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            where = f"; see {self.log_path}" if self.log_path else ""
            raise RuntimeError(f"{self.proc.args!r} exited with {self.proc.returncode}{where}")

    def kill(self) -> None:
        """``kill -9``: no chance to finish the batch in flight."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def request_stop(self) -> None:
        """SIGTERM, without waiting (:meth:`wait_stopped` waits)."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)

    def wait_stopped(self, timeout: float = 30.0) -> int | None:
        """Wait for the exit; SIGKILL after ``timeout``. The exit code (None: never started)."""
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.proc.returncode

    def terminate(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then wait (SIGKILL after ``timeout``); the exit code."""
        self.request_stop()
        return self.wait_stopped(timeout)

    def log(self) -> str:
        path = self.log_path
        return path.read_text(errors="replace") if path is not None and path.exists() else ""

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

    def wait_ready(self, port: int, timeout_s: float = 60.0) -> None:
        """Until the process's ``/readyz`` on 127.0.0.1:``port`` answers 200 (a worker in its
        group with its models loaded; a controller with its partitions and analysis);
        raises on exit or timeout with the probe's last answer."""
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
                    if r.status == 200:
                        return
            except urllib.error.HTTPError as exc:  # 503: not ready, and the body says why
                last = exc.read().decode(errors="replace")
            except OSError as exc:  # not serving yet
                last = str(exc)
            if not self.alive():
                raise RuntimeError(f"{self.args} exited:\n{self.log()[-3000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"{self.args}: not ready within {timeout_s}s: {last}")


def worker(worker_id: str, log_dir: Path, env: Mapping[str, str]) -> RolloutProcess:
    """``rollout worker --worker-id ID``, logging to ``<log_dir>/worker-<ID>.log``."""
    return RolloutProcess(
        ["worker", "--worker-id", worker_id], log_dir / f"worker-{worker_id}.log", env
    )


def controller(name: str, log_dir: Path, env: Mapping[str, str]) -> RolloutProcess:
    """``rollout controller``, logging to ``<log_dir>/controller-<name>.log``."""
    return RolloutProcess(["controller"], log_dir / f"controller-{name}.log", env)


@contextmanager
def running(procs: Sequence[RolloutProcess]) -> Iterator[list[RolloutProcess]]:
    """Start ``procs``; stop (SIGTERM) those still alive on the way out."""
    started = [p.start() for p in procs]
    try:
        yield started
    finally:
        for p in started:
            if p.alive():
                p.terminate()


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that points a child process at the same cluster (and topic names)
    and model store."""
    return {
        "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "ROLLOUT_TOPIC_PREFIX": settings.topic_prefix,
        "ROLLOUT_MODEL_STORE": str(Path(settings.model_store).resolve()),
    }


class Services:
    """A controller and ``workers`` workers (ids ``<name>-<i>``), logs in ``<home>/<name>``,
    started and stopped together."""

    def __init__(
        self, settings: Settings, workers: int = 2, name: str = "demo", **env: str
    ) -> None:
        self.logs = settings.home / name
        self.logs.mkdir(parents=True, exist_ok=True)
        full_env = {**settings_env(settings), **env}
        self.procs: dict[str, RolloutProcess] = {
            "controller": RolloutProcess(["controller"], self.logs / "controller.log", full_env)
        }
        for i in range(1, workers + 1):
            self.procs[f"worker-{i}"] = RolloutProcess(
                ["worker", "--worker-id", f"{name}-{i}"], self.logs / f"worker-{i}.log", full_env
            )
        self.dashboard_port = int(env.get("ROLLOUT_DASHBOARD_PORT", settings.dashboard_port))

    @property
    def workers(self) -> int:
        return len(self.procs) - 1

    def start(self) -> None:
        for proc in self.procs.values():
            proc.start()

    def check(self) -> None:
        for proc in self.procs.values():
            proc.check()

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.request_stop()
        for proc in self.procs.values():
            proc.wait_stopped()
