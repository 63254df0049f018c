"""The audit sample: which requests' ground truth the promotion criterion rests on.

A deterministic, hash-chosen subset of requests with a known inclusion probability (the
policy's ``audit_rate``): a request is in it when a hash of (deployment, request id), read as
a number in [0, 1), is below the rate. The worker (which marks audit predictions so that the
labelling pipeline knows which labels matter) and the controller (which computes coverage and
the criterion on it) call the same function, so they always agree. Because membership does
not depend on the request's features, outcome or label, the audit sample is a simple random
sample of the traffic, and labels that arrive only for flagged requests or only for
positives cannot stand in for it. Pure.
"""

from __future__ import annotations

import hashlib

_SCALE = float(1 << 64)


def audit_draw(deployment: str, request_id: str) -> float:
    """The request's uniform draw in [0, 1)."""
    digest = hashlib.blake2b(
        f"audit\x00{deployment}\x00{request_id}".encode(), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big") / _SCALE


def in_audit(deployment: str, request_id: str, rate: float) -> bool:
    """Whether ``request_id`` of ``deployment`` is in the audit sample of inclusion
    probability ``rate``."""
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    return audit_draw(deployment, request_id) < rate
