"""A deployment's state over time: where it starts, and (later) how commands move it.

Pure: no I/O. The controller is the only one that applies transitions; workers only read
the resulting ``DeploymentState``.
"""

from __future__ import annotations

from app.core.events import DeploymentState, Mode, ModelRef, Phase
from app.core.manifest import DeploymentSpec


def initial_state(spec: DeploymentSpec, production: ModelRef, now: int) -> DeploymentState:
    """Epoch 0: the version ``deployment.yaml`` names serves everything, nothing is rolling out."""
    return DeploymentState(
        deployment=spec.name,
        epoch=0,
        mode=Mode.MANUAL,
        phase=Phase.STABLE,
        production=production,
        policy=spec.policy,
        updated_at=now,
        reason=f"initial state from deployment.yaml (production {production.version})",
    )
