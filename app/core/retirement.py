"""Which versions of a deployment may leave ``models.artifacts``: those no state refers to
(not production, the previous production kept for a rollback, the candidate, the previous
production a watch compares, nor a version queued to roll out) for a grace period.

The clock is the controller's own: a version is first seen unreferenced at some time, and is
due once it has stayed so for ``grace_ms`` (a later state that refers to it again restarts
it). A controller that takes a partition over starts its clocks afresh, so a version is never
retired early, only later. Pure: the controller reads the topic and writes the tombstones
(``app.controller.retirement``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from app.core.events import DeploymentState


def referenced(state: DeploymentState) -> set[str]:
    """The versions ``state`` needs kept: workers load them, or may be told to at once."""
    versions = {state.production.version}
    if state.candidate is not None:
        versions.add(state.candidate.version)
    if state.history:
        versions.add(state.history[-1].version)
    if state.watch is not None:
        versions.add(state.watch.previous.version)
    return versions | queued(state)


def queued(state: DeploymentState) -> set[str]:
    """HOOK for the publish queue (``on_publish: queue``): the versions waiting in
    ``state.queue`` once the state has one (ModelRefs, or entries naming a ``version``)."""
    entries: Iterable[object] = getattr(state, "queue", None) or ()
    return {str(getattr(entry, "version", entry)) for entry in entries}


@dataclass
class RetirementClock:
    grace_ms: int
    since: dict[tuple[str, str], int] = field(default_factory=dict)

    def due(self, state: DeploymentState, held: Iterable[str], now: int) -> list[str]:
        """The versions of ``held`` (on the topic) to retire at ``now``, by ``state``."""
        name = state.deployment
        keep = referenced(state)
        held = set(held)
        for key in [k for k in self.since if k[0] == name and (k[1] in keep or k[1] not in held)]:
            del self.since[key]
        due = []
        for version in sorted(held - keep):
            first = self.since.setdefault((name, version), now)
            if now - first >= self.grace_ms:
                due.append(version)
        return due

    def retired(self, deployment: str, version: str) -> None:
        self.since.pop((deployment, version), None)
