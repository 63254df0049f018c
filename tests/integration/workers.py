"""Worker processes for integration tests: real ``rollout worker`` subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class WorkerProcess:
    def __init__(self, bootstrap: str, worker_id: str, log_dir: Path, **env: str) -> None:
        self.worker_id = worker_id
        self.log_path = log_dir / f"worker-{worker_id}.log"
        self._env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, **env}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app", "worker", "--worker-id", self.worker_id],
            env=self._env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        return self

    def kill(self) -> None:
        """``kill -9``: no chance to finish the batch in flight."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def running_workers(
    bootstrap: str, ids: list[str], log_dir: Path, **env: str
) -> Iterator[list[WorkerProcess]]:
    workers = [WorkerProcess(bootstrap, wid, log_dir, **env).start() for wid in ids]
    try:
        yield workers
    finally:
        for w in workers:
            if w.alive():
                w.terminate()
