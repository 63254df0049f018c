"""Labels read before their comparison, held until it comes.

The controller reads the feedback topic beside the comparisons topic, so a label can be read
before the comparison it belongs to (a fast label, a lagging worker or controller). A join
(``app.core.feedback_join`` for a rollout, ``app.core.watch`` for a watch) that finds no
compared request for a label holds it here, and takes it back when the comparison comes, as
if the label had come right after it. Held: at most ``limit``, each for at most
``window_ms`` of record time (a label whose comparison has not come by then is for a request
never compared, e.g. one production alone served in a canary). Those let go are counted.

Not persisted: a restart forgets what is held (those requests wait at their worst case,
like any unlabelled one). Pure: no I/O, no clock (times are passed in).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.core.pending import PendingStore

EARLY_LIMIT = 2_000
EARLY_WINDOW_MS = 60_000


@dataclass(eq=False)
class EarlyLabels:
    """Labels by request id, in the order they came, with their record time."""

    limit: int = EARLY_LIMIT
    window_ms: int = EARLY_WINDOW_MS
    dropped: int = 0  # let go unjoined: past the window or the limit
    _held: dict[str, tuple[Any, int]] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, request_id: str, truth: Any, at: int) -> None:
        """Keep ``truth`` for ``request_id`` (a later label for it replaces an earlier one)."""
        self._held.pop(request_id, None)
        self._held[request_id] = (truth, at)
        while len(self._held) > self.limit:
            del self._held[next(iter(self._held))]
            self.dropped += 1

    def take(self, request_id: str, at: int) -> tuple[Any, int] | None:
        """The comparison of ``request_id`` came at ``at``: let go of labels older than the
        window, then hand back the one held for it (its truth and record time), if any."""
        while self._held:
            oldest = next(iter(self._held))
            if self._held[oldest][1] >= at - self.window_ms:
                break
            del self._held[oldest]
            self.dropped += 1
        return self._held.pop(request_id, None)

    def pending_or_hold(
        self, pending: PendingStore, request_id: str, truth: Any, at: int
    ) -> int | None:
        """A label came: the row of its compared request in ``pending``; when there is none
        (yet), the label is held and None returned."""
        row = pending.find(request_id)
        if row is None:
            self.hold(request_id, truth, at)
        return row

    def joinable(
        self, pending: PendingStore, request_id: str, at: int
    ) -> tuple[int, Any, int] | None:
        """A comparison came (and is pending): its row, and the label held for it with the
        later of the two record times, if one was held (``take``)."""
        held = self.take(request_id, at)
        row = pending.find(request_id) if held is not None else None
        if held is None or row is None:
            return None
        return row, held[0], max(at, held[1])
