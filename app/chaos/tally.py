"""Counting outcomes per request after a fault: the check behind every chaos scenario.

The promise: every valid request gets exactly one committed prediction, every invalid one
exactly one dead letter. Given what was sent (ids of valid requests, keys of invalid records)
and what was read back with ``read_committed`` (the request id of each prediction, the key of
each dead letter), :func:`tally` says how many were lost and how many duplicated.
:func:`recovery_ms` says how long the worst-hit request waited once faults began.

Pure: no I/O.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Tally:
    """``lost``: sent, with no output. ``duplicated``: outputs beyond the first, summed.
    ``wrong_kind``: a valid request dead-lettered or an invalid one predicted.
    ``dead_letters``: dead letters read for the invalid records sent."""

    valid_sent: int
    invalid_sent: int
    lost: int
    duplicated: int
    wrong_kind: int
    dead_letters: int

    @property
    def sent(self) -> int:
        return self.valid_sent + self.invalid_sent

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.wrong_kind == 0


def tally(
    valid: Iterable[str],
    invalid: Iterable[str],
    predicted: Iterable[str],
    dead_lettered: Iterable[str],
) -> Tally:
    """``valid``: request ids; ``invalid``: record keys; ``predicted``: the request id of each
    prediction read; ``dead_lettered``: the key of each dead letter read. Outputs for ids that
    were not sent (another run's) are ignored."""
    valid_ids, invalid_keys = set(valid), set(invalid)
    predictions = Counter(p for p in predicted if p in valid_ids or p in invalid_keys)
    letters = Counter(k for k in dead_lettered if k in valid_ids or k in invalid_keys)
    lost = sum(1 for v in valid_ids if predictions[v] == 0 and letters[v] == 0)
    lost += sum(1 for k in invalid_keys if letters[k] == 0 and predictions[k] == 0)
    duplicated = sum(n - 1 for n in predictions.values() if n > 1)
    duplicated += sum(n - 1 for n in letters.values() if n > 1)
    wrong = sum(1 for v in valid_ids if letters[v]) + sum(1 for k in invalid_keys if predictions[k])
    return Tally(
        valid_sent=len(valid_ids),
        invalid_sent=len(invalid_keys),
        lost=lost,
        duplicated=duplicated,
        wrong_kind=wrong,
        dead_letters=sum(letters[k] for k in invalid_keys),
    )


def recovery_ms(
    faults_at: Iterable[int], sent_at: Mapping[str, int], served_at: Mapping[str, int]
) -> int | None:
    """How long the stream took to recover: the longest any request sent at or after the
    first fault waited for its prediction (``served_at - sent_at``, epoch ms), i.e. the stall
    of the worst-hit partition. None when there was no fault or nothing sent after it was
    served. Requests never served are not here: ``tally`` counts them as lost."""
    first = min(faults_at, default=None)
    if first is None:
        return None
    waits = [served_at[rid] - t for rid, t in sent_at.items() if t >= first and rid in served_at]
    return max(waits, default=None)
