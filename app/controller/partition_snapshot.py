"""A partition's analysis snapshot: what the analyst writes to ``deployments.analysis``.

A ``PartitionSnapshot`` holds the offsets of ``inference.comparisons`` and
``inference.feedback`` it covers, the rollouts (``TrackedRollout``: a ``RolloutAnalysis``, its
canary weight, whether it recommended) and the watches of its deployments, and turns them
into compacted records of their own (``records``, only those that changed), and back
(``from_records``, from ``latest_values`` of the topic). ``app.controller.analyst`` runs the
agent loops that feed it and publish it with each decision. No Kafka here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from app.core.analysis import RolloutAnalysis
from app.core.analysis_snapshot import OldSnapshot
from app.core.pending import PendingStore
from app.core.watch import WatchAnalysis

log = logging.getLogger(__name__)


@dataclass
class TrackedRollout:
    """A rollout the analyst follows: its evidence, the canary weight of its step, and
    whether it has recommended (manual mode recommends once)."""

    analysis: RolloutAnalysis
    weight: float
    recommended: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "analysis": self.analysis.to_json(),
            "weight": self.weight,
            "recommended": self.recommended,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], pending: Mapping[str, bytes]) -> TrackedRollout:
        return cls(
            RolloutAnalysis.from_json(data["analysis"], pending),
            data["weight"],
            data["recommended"],
        )


Record = tuple[bytes, bytes | None]  # key, value (None: a tombstone)
SNAPSHOT_FORMAT = 2  # 2: one record per rollout and watch, pending requests per chunk


@dataclass
class PartitionSnapshot:
    """The analyst's state for one partition, written to ``deployments.analysis`` as
    records of their own (all in one transaction, so always consistent on restore):

    - ``p<N>``: the offsets covered and the names of the rollouts and watches;
    - ``p<N>/rollout/<deployment>``: a rollout's evidence (without its pending requests);
    - ``p<N>/pending/<deployment>/<start epoch>/<chunk>/rows|state``: its pending requests,
      a chunk of ``app.core.pending`` each (written when it changed; tombstoned when freed);
    - ``p<N>/watch/<deployment>``: a watch's evidence.

    Only records that changed since the last snapshot are written (``records``), so a
    snapshot's size follows what changed, and no record grows with the number of rollouts
    on the partition or with the requests awaiting labels."""

    partition: int
    comparisons_offset: int = 0
    feedback_offset: int = 0
    rollouts: dict[str, TrackedRollout] = field(default_factory=dict)
    watches: dict[str, WatchAnalysis] = field(default_factory=dict)
    # key -> the value last written (what is on the topic), to write only what changed
    _written: dict[bytes, bytes] = field(default_factory=dict, repr=False)
    # (kind, deployment) -> (key prefix, chunk numbers) of the pending chunks on the topic
    _chunks_of: dict[tuple[str, str], tuple[str, list[int]]] = field(
        default_factory=dict, repr=False
    )

    def header_key(self) -> bytes:
        return f"p{self.partition}".encode()

    def _key(self, kind: str, name: str) -> bytes:
        return f"p{self.partition}/{kind}/{name}".encode()

    def _prefix(self, kind: str, name: str, start_epoch: int) -> str:
        """Where the pending chunks of a rollout ("pending") or a watch ("watch-pending") of
        ``name`` that started at ``start_epoch`` are kept."""
        return f"p{self.partition}/{kind}/{name}/{start_epoch}/"

    def _stores(self) -> dict[tuple[str, str], tuple[str, PendingStore]]:
        """(kind, deployment) -> (key prefix, pending store) of every rollout and watch."""
        out = {
            ("pending", name): (
                self._prefix("pending", name, t.analysis.start_epoch),
                t.analysis.pending,
            )
            for name, t in self.rollouts.items()
        }
        for name, w in self.watches.items():
            out["watch-pending", name] = (
                self._prefix("watch-pending", name, w.start_epoch),
                w.pending,
            )
        return out

    def records(self) -> list[Record]:
        """The records that bring the topic to this snapshot (the header always)."""
        values: dict[bytes, bytes] = {}
        chunks: list[Record] = []
        for prefix, store in self._stores().values():
            chunks += [((prefix + k).encode(), v) for k, v in store.records()]
        for name, tracked in self.rollouts.items():
            values[self._key("rollout", name)] = orjson.dumps(tracked.to_json())
        for name, watch in self.watches.items():
            values[self._key("watch", name)] = orjson.dumps(watch.to_json())
        out: list[Record] = [(k, v) for k, v in values.items() if self._written.get(k) != v]
        out += [(k, None) for k in self._written if k not in values]  # ended
        out += chunks + self._ended_chunks()
        header = {
            "format": SNAPSHOT_FORMAT,
            "partition": self.partition,
            "comparisons_offset": self.comparisons_offset,
            "feedback_offset": self.feedback_offset,
            "rollouts": sorted(self.rollouts),
            "watches": sorted(self.watches),
        }
        return [*out, (self.header_key(), orjson.dumps(header))]

    def _ended_chunks(self) -> list[Record]:
        """Tombstones for the pending chunks of rollouts and watches that ended (or started
        afresh)."""
        out: list[Record] = []
        stores = self._stores()
        for ident, (prefix, chunks) in self._chunks_of.items():
            if ident in stores and stores[ident][0] == prefix:
                continue
            for number in chunks:
                out += [(f"{prefix}{number}/{part}".encode(), None) for part in ("rows", "state")]
        return out

    def written(self, records: list[Record]) -> None:
        """``records`` (from ``records``) are committed."""
        for key, value in records:
            if value is None:
                self._written.pop(key, None)
            elif b"pending/" not in key and key != self.header_key():
                self._written[key] = value
        self._chunks_of = {}
        for ident, (prefix, store) in self._stores().items():
            store.written()
            self._chunks_of[ident] = (prefix, store.meta()["chunks"])

    @classmethod
    def from_records(cls, partition: int, records: Mapping[bytes, bytes]) -> PartitionSnapshot:
        """The snapshot from the latest value of each key of the partition (tombstones
        left out). A rollout whose evidence an earlier controller wrote (or that does not
        load) is left out with a log line, and its evidence starts afresh."""
        header = records.get(f"p{partition}".encode())
        if header is None:
            return cls(partition)
        data = orjson.loads(header)
        snap = cls(partition, data["comparisons_offset"], data["feedback_offset"])
        if data.get("format") != SNAPSHOT_FORMAT:
            log.warning(
                "analysis snapshot of p%d in an earlier format: evidence starts afresh", partition
            )
            return snap
        for name in data["rollouts"]:
            snap._restore_rollout(name, records)
        for name in data["watches"]:
            snap._restore_watch(name, records)
        return snap

    def _restore_rollout(self, name: str, records: Mapping[bytes, bytes]) -> None:
        key = self._key("rollout", name)
        try:
            data = orjson.loads(records[key])
            prefix = self._prefix("pending", name, data["analysis"]["start_epoch"])
            tracked = self.rollouts[name] = TrackedRollout.from_json(data, _under(prefix, records))
            self._written[key] = records[key]
            self._chunks_of["pending", name] = (prefix, tracked.analysis.pending.meta()["chunks"])
        except (OldSnapshot, KeyError, TypeError, ValueError) as exc:
            log.warning("analysis of %s not restored (%s): its evidence starts afresh", name, exc)

    def _restore_watch(self, name: str, records: Mapping[bytes, bytes]) -> None:
        key = self._key("watch", name)
        try:
            data = orjson.loads(records[key])
            prefix = self._prefix("watch-pending", name, data["start_epoch"])
            watch = self.watches[name] = WatchAnalysis.from_json(data, _under(prefix, records))
            self._written[key] = records[key]
            self._chunks_of["watch-pending", name] = (prefix, watch.pending.meta()["chunks"])
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("watch of %s not restored (%s): it starts afresh", name, exc)


def _under(prefix: str, records: Mapping[bytes, bytes]) -> dict[str, bytes]:
    """The records whose key starts with ``prefix``, by the rest of their key."""
    start = prefix.encode()
    return {k[len(start) :].decode(): v for k, v in records.items() if k.startswith(start)}


def latest_values(records: Iterable[tuple[bytes | None, bytes | None]]) -> dict[bytes, bytes]:
    """Each key's latest value of a compacted topic's records (key, value), in order;
    tombstones remove the key."""
    latest: dict[bytes, bytes] = {}
    for key, value in records:
        if key is None:
            continue
        if value is None:
            latest.pop(key, None)
        else:
            latest[key] = value
    return latest
