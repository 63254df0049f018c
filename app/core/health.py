"""What a process's health probes answer (pure): ``/healthz`` (is its loop alive) and
``/readyz`` (is it doing its job), each a :class:`Probe` whose ``reasons`` say why not.

- Worker, live: its consume loop went round within ``stale_after_s`` (before the loop starts,
  while models load, the event loop answering the probe is the evidence).
- Worker, ready: in the consumer group (an assignment received since the last revocation),
  models loaded, lag at most ``max_lag`` records.
- Controller, ready: the deployment states caught up, an assignment received from the group,
  and every control partition it owns has its analysis restored.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Probe:
    ok: bool
    reasons: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "reasons": self.reasons, **self.details}


def _probe(failures: Iterable[str | None], details: dict[str, Any]) -> Probe:
    reasons = [r for r in failures if r]
    return Probe(not reasons, reasons, details)


def worker_liveness(now: float, beat_at: float | None, stale_after_s: float) -> Probe:
    if beat_at is None:
        return Probe(True, [], {"loop": "not started (loading models)"})
    age = now - beat_at
    why = f"the consume loop has not gone round for {age:.0f}s" if age > stale_after_s else None
    return _probe([why], {"loop_age_s": round(age, 3)})


def worker_readiness(*, joined: bool, models_loaded: bool, lag: int, max_lag: int) -> Probe:
    return _probe(
        [
            None if models_loaded else "models not loaded yet",
            None if joined else "not in the consumer group (joining or rebalancing)",
            None if lag <= max_lag else f"lag {lag} records is above {max_lag}",
        ],
        {"joined": joined, "models_loaded": models_loaded, "lag": lag, "max_lag": max_lag},
    )


def controller_readiness(
    *, states_loaded: bool, assigned: set[int] | None, restored: set[int]
) -> Probe:
    missing = sorted((assigned or set()) - restored)
    return _probe(
        [
            None if states_loaded else "deployment states not caught up yet",
            None if assigned is not None else "no partitions assigned by the group yet",
            f"analysis of partitions {missing} not restored yet" if missing else None,
        ],
        {
            "states_loaded": states_loaded,
            "partitions": sorted(assigned) if assigned is not None else None,
            "restored": sorted(restored),
        },
    )
