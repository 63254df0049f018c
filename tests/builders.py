"""What tests build again and again, declared once: model references and deployment states
for the pure core's tables, and real ``rollout`` processes configured for a test broker.
(The integration fixtures, ``settings_`` and ``producer`` among them, are in
``tests/integration/conftest.py``; the hands-off policy is ``app.harness.rollout_scenarios``'.)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from app.core.analysis import RolloutAnalysis
from app.core.events import DeploymentState, Mode, ModelRef, Phase
from app.core.policy import Policy
from app.harness import processes
from app.harness.processes import RolloutProcess


def model_ref(version: str, name: str = "fraud") -> ModelRef:
    """A reference to ``name``'s ``version`` (its sha256 is the version repeated: no file)."""
    return ModelRef(
        name=name, version=version, uri=f"{name}/{version}/model.onnx", sha256=version * 64
    )


V1 = model_ref("1")
V2 = model_ref("2")
V3 = model_ref("3")


def reloaded(a: RolloutAnalysis) -> RolloutAnalysis:
    """``a`` written to a snapshot (its evidence and its pending chunks) and read back."""
    return RolloutAnalysis.from_json(a.to_json(), a.pending.chunk_records())


def state(
    mode: Mode = Mode.CANARY,
    candidate: ModelRef | None = V2,
    weight: float = 0.0,
    rate: float = 1.0,
    *,
    epoch: int = 1,
    phase: Phase = Phase.PROGRESSING,
    production: ModelRef = V1,
    policy: Policy | None = None,
    updated_at: int | None = None,
    **policy_fields: Any,
) -> DeploymentState:
    """``fraud`` in ``mode``: production ``V1``, ``candidate`` at canary ``weight`` and
    shadow sample ``rate``; ``policy_fields`` override ``policy`` (default ``Policy()``)."""
    base = policy if policy is not None else Policy()
    fields: dict[str, Any] = {} if updated_at is None else {"updated_at": updated_at}
    return DeploymentState(
        deployment="fraud",
        epoch=epoch,
        mode=mode,
        phase=phase,
        production=production,
        candidate=candidate,
        canary_weight=weight,
        shadow_sample_rate=rate,
        policy=base.model_copy(update=policy_fields) if policy_fields else base,
        **fields,
    )


@contextmanager
def running_workers(
    bootstrap: str, ids: list[str], log_dir: Path, **env: str
) -> Iterator[list[RolloutProcess]]:
    """``rollout worker`` processes with ``ids`` on ``bootstrap``, stopped on the way out."""
    env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, **env}
    with processes.running([processes.worker(wid, log_dir, env) for wid in ids]) as workers:
        yield workers


def controller_process(
    bootstrap: str, log_dir: Path, name: str = "c1", **env: str
) -> RolloutProcess:
    """A ``rollout controller`` on ``bootstrap`` (not started); no dashboard unless ``env``
    asks for one (on a port of its own)."""
    return processes.controller(
        name,
        log_dir,
        {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "ROLLOUT_DASHBOARD_PORT": "0", **env},
    )
