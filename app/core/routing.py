"""Which model serves a request, and whether the other one scores it too.

Pure and deterministic, so every worker routes a request the same way:

- automatic: production serves everything; nothing is compared.
- manual: production serves everything; the candidate only scores (as in shadow) so that the
  controller can recommend, or not, the ``promote`` that only an operator gives.
- canary: the candidate serves an entity when ``bucket(deployment, entity, candidate version)``
  is below the weight. The bucket does not depend on the weight, so at a fixed weight an
  entity never switches model, and raising the weight only adds entities. Candidate-served
  requests are also scored by production (paired) unless the policy turns pairing off.
- shadow: production serves everything; the candidate also scores a request when
  ``bucket(deployment, request id, candidate version)`` is below the sample rate.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from app.core.events import DeploymentState, Mode, Role


@dataclass(frozen=True, slots=True)
class Assignment:
    served_by: Role
    # True when the model that does not serve also scores the request (a comparison).
    compare: bool


PRODUCTION_ONLY = Assignment(Role.PRODUCTION, compare=False)
PRODUCTION_COMPARED = Assignment(Role.PRODUCTION, compare=True)
CANDIDATE_PAIRED = Assignment(Role.CANDIDATE, compare=True)
CANDIDATE_ALONE = Assignment(Role.CANDIDATE, compare=False)


def bucket(*parts: str) -> float:
    """A stable number in [0, 1) for the given strings (BLAKE2b, not Python's salted hash)."""
    digest = hashlib.blake2b("\x1f".join(parts).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def assign(state: DeploymentState, entity_key: str, request_id: str) -> Assignment:
    """Buckets lie in [0, 1): a share of 0 or 1 needs no hash (shadow at rate 1 is the usual
    case, and this runs for every request)."""
    candidate = state.candidate
    if candidate is None:
        return PRODUCTION_ONLY
    if state.mode is Mode.CANARY:
        weight = state.canary_weight
        if weight >= 1.0 or (
            weight > 0.0 and bucket(state.deployment, entity_key, candidate.version) < weight
        ):
            return CANDIDATE_PAIRED if state.policy.pairing else CANDIDATE_ALONE
        return PRODUCTION_ONLY
    if state.mode is Mode.SHADOW or state.mode is Mode.MANUAL:
        rate = state.shadow_sample_rate
        if rate >= 1.0 or (
            rate > 0.0 and bucket(state.deployment, request_id, candidate.version) < rate
        ):
            return PRODUCTION_COMPARED
        return PRODUCTION_ONLY
    return PRODUCTION_ONLY
