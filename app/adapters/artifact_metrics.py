"""The artifact metrics: model versions fetched, refused and retired on ``models.artifacts``.

Workers and the controller both fetch and verify artifacts (``app.adapters.artifact_cache``);
the controller retires them (``app.controller.retirement``).
"""

from __future__ import annotations

from prometheus_client import Counter

from app.core.topics import Topic

ARTIFACTS_FETCHED = Counter(
    "rollout_artifacts_fetched_total",
    f"Model versions fetched from {Topic.ARTIFACTS}, verified and installed in the local store.",
    ["deployment"],
)
ARTIFACTS_REJECTED = Counter(
    "rollout_artifacts_rejected_total",
    "Artifacts refused (tampered, incomplete, missing, or not the version the state names):"
    " never installed nor served (logged each).",
    ["deployment"],
)
ARTIFACTS_RETIRED = Counter(
    "rollout_artifacts_retired_total",
    f"Versions the controller tombstoned on {Topic.ARTIFACTS} after the grace period.",
    ["deployment"],
)
