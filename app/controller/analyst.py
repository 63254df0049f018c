"""The controller's evidence side, one ``PartitionAnalyst`` per owned partition.

An analyst reads its partition of ``inference.comparisons`` and ``inference.feedback`` (both
keyed by deployment, co-partitioned with the control topic), keeps a ``RolloutAnalysis`` for
every deployment of the partition that has a candidate, and after every batch of evidence
asks ``app.core.promotion.decide`` what to do. A decision is published in one transaction
with a snapshot of the partition's analysis, which carries the offsets it was computed up
to (``deployments.analysis``, compacted, key ``p<N>``). A new owner of the partition, after a
restart or a fail-over, restores the last snapshot and reads on from its offsets: no evidence
is counted twice, and no decision is taken twice or lost.

After a promotion the analyst also keeps the watch's evidence (``app.core.watch``) for every
watched deployment of the partition: the ``watch`` comparisons (new production beside the
previous one on the audit sample) and their labels feed a change detector, and
``decide_watch`` rolls back to the previous production (``state_machine.watch_step``) or ends
the watch when its window has passed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from pydantic import ValidationError

from app.adapters import metrics
from app.adapters.kafka_clients import reader, stop_following
from app.adapters.state_view import StateView
from app.controller.publisher import DecisionPublisher
from app.core.analysis import OldSnapshot, RolloutAnalysis
from app.core.events import Comparison, DeploymentState, Feedback, ShedReport, decode, now_ms
from app.core.manifest import DeploymentSpec
from app.core.pending import PendingStore
from app.core.promotion import decide
from app.core.state_machine import controller_step, watch_step
from app.core.topics import Topic
from app.core.verdict import Verdict
from app.core.watch import WatchAnalysis, WatchVerdict, decide_watch
from app.settings import Settings

log = logging.getLogger(__name__)

SNAPSHOT_EVERY_S = 2.0
_MISROUTED_LOGGED = 1000  # deployments whose misrouted feedback is logged (once each)


@dataclass
class _Tracked:
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
    def from_json(cls, data: dict[str, Any], pending: Mapping[str, bytes]) -> _Tracked:
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
    rollouts: dict[str, _Tracked] = field(default_factory=dict)
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
            tracked = self.rollouts[name] = _Tracked.from_json(data, _under(prefix, records))
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


class PartitionAnalyst:
    def __init__(
        self,
        partition: int,
        settings: Settings,
        view: StateView,
        publisher: DecisionPublisher,
        owns: Any,
        specs: Callable[[str], DeploymentSpec | None] | None = None,
    ) -> None:
        self.partition = partition
        self._settings = settings
        self._view = view
        self._publisher = publisher
        self._owns = owns  # deployment name -> bool: is it on this partition
        self._analysis_topic = settings.topics.name(Topic.ANALYSIS)
        self._comparisons_topic = settings.topics.name(Topic.COMPARISONS)
        self._feedback_topic = settings.topics.name(Topic.FEEDBACK)
        # deployment name -> its deployment.yaml (kind, regression), None when unreadable
        self._specs = specs or (lambda _name: None)
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.snapshot = PartitionSnapshot(partition)
        self._dirty = False
        self._last_snapshot = time.monotonic()
        # Feedback read here that belongs to another partition's deployment, re-keyed to it
        # in the next transaction (with the offset past it).
        self._rekeyed: list[tuple[str, bytes, bytes]] = []
        self._misrouted_logged: set[str] = set()

    async def start(self) -> None:
        self.snapshot = await self._restore()
        consumer = reader(self._settings, client_id=f"rollout-analyst-p{self.partition}")
        await consumer.start()
        comparisons = TopicPartition(self._comparisons_topic, self.partition)
        feedback = TopicPartition(self._feedback_topic, self.partition)
        consumer.assign([comparisons, feedback])
        consumer.seek(comparisons, self.snapshot.comparisons_offset)
        consumer.seek(feedback, self.snapshot.feedback_offset)
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(), name=f"analyst-p{self.partition}")
        self._task.add_done_callback(self._ended)
        log.info(
            "analyst p%d: restored %d rollouts, comparisons@%d, feedback@%d",
            self.partition,
            len(self.snapshot.rollouts),
            self.snapshot.comparisons_offset,
            self.snapshot.feedback_offset,
        )

    def _ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.critical(
                "analyst p%d stopped: no decisions for its deployments until this controller"
                " restarts",
                self.partition,
                exc_info=task.exception(),
            )

    async def stop(self) -> None:
        await stop_following(self._task, self._consumer)

    async def _restore(self) -> PartitionSnapshot:
        consumer = reader(self._settings, client_id=f"rollout-analyst-restore-p{self.partition}")
        await consumer.start()
        try:
            tp = TopicPartition(self._analysis_topic, self.partition)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            end = (await consumer.end_offsets([tp]))[tp]
            read: list[tuple[bytes | None, bytes | None]] = []
            while await consumer.position(tp) < end:
                batch = await consumer.getmany(tp, timeout_ms=500)
                read += [(r.key, r.value) for r in batch.get(tp, [])]
            latest = latest_values(read)
            try:
                return PartitionSnapshot.from_records(self.partition, latest)
            except (ValueError, KeyError, TypeError) as exc:  # orjson.JSONDecodeError too
                log.error(
                    "analyst p%d: unreadable snapshot (%s): starting afresh", self.partition, exc
                )
                return PartitionSnapshot(self.partition)
        finally:
            await consumer.stop()

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            batch = await self._consumer.getmany(timeout_ms=200, max_records=5000)
            async with self._publisher.lock(self.partition):
                self._sync_with_states()
                for records in batch.values():
                    for record in records:
                        self._take(record)
                await self._decide()
                due = time.monotonic() - self._last_snapshot >= SNAPSHOT_EVERY_S
                if self._rekeyed or (self._dirty and due):
                    await self._publish(None, None)

    def _sync_with_states(self) -> None:
        """Start, reset or end tracked rollouts as the deployments' states say."""
        rollouts = self.snapshot.rollouts
        for name, state in self._view.states.items():
            if not self._owns(name):
                continue
            self._sync_watch(name, state)
            tracked = rollouts.get(name)
            if state.candidate is None:
                if tracked is not None:
                    del rollouts[name]
                    self._dirty = True
                continue
            if tracked is None or tracked.analysis.candidate != state.candidate.version:
                rollouts[name] = _Tracked(self._fresh(state), state.canary_weight)
                self._dirty = True
            elif tracked.weight != state.canary_weight:  # an operator moved the weight
                tracked.analysis.new_step(state.epoch, state.updated_at)
                tracked.weight = state.canary_weight
                self._dirty = True

    def _sync_watch(self, name: str, state: DeploymentState) -> None:
        watches = self.snapshot.watches
        tracked = watches.get(name)
        if state.watch is None:
            if tracked is not None:
                del watches[name]
                self._dirty = True
        elif tracked is None or tracked.start_epoch != state.watch.epoch:
            kind, cap = self._kind(state.deployment)
            watches[name] = WatchAnalysis.for_state(state, kind, cap)
            self._dirty = True

    def _kind(self, deployment: str) -> tuple[str, float | None]:
        """The deployment's model kind and a regressor's error cap (its deployment.yaml)."""
        spec = self._specs(deployment)
        kind = spec.signature.kind if spec is not None else "classifier"
        cap = spec.regression.error_cap if spec is not None and spec.regression else None
        return kind, cap

    def _fresh(self, state: DeploymentState) -> RolloutAnalysis:
        """A new rollout's analysis, of the deployment's kind: a regressor's criterion needs
        the error cap of its deployment.yaml (without one it holds, never promoting on
        feedback it cannot bound)."""
        assert state.candidate is not None
        kind, cap = self._kind(state.deployment)
        return RolloutAnalysis.for_policy(
            state.deployment,
            state.candidate.version,
            state.epoch,
            state.policy,
            state.updated_at,
            kind=kind,
            error_cap=cap,
            pending_rate=self._settings.pending_rate,
            pending_limit=self._settings.pending_limit or None,
            pending_chunk_rows=self._settings.pending_chunk_rows,
        )

    def _take(self, record: ConsumerRecord) -> None:
        """Apply one evidence record. Its offset is passed first, so a record that cannot be
        used is skipped for good (logged and counted), never retried into a crash loop; the
        analysis applies a record whole or not at all."""
        snap = self.snapshot
        self._dirty = True
        if record.topic == self._feedback_topic:
            snap.feedback_offset = record.offset + 1
        else:
            snap.comparisons_offset = record.offset + 1
        try:
            self._apply(record)
        except (ValidationError, ValueError) as exc:
            self._skipped(record, "unreadable", exc)
        except Exception as exc:  # one bad record must not stop the analysis
            self._skipped(record, "error", exc)

    def _apply(self, record: ConsumerRecord) -> None:
        snap = self.snapshot
        if record.topic == self._feedback_topic:
            feedback = decode(Feedback, record.value)
            if not self._owns(feedback.deployment):
                self._misrouted(feedback, record)
                return
            tracked = snap.rollouts.get(feedback.deployment)
            if tracked is not None:
                tracked.analysis.add_feedback(feedback, at=record.timestamp)
            watch = snap.watches.get(feedback.deployment)
            if watch is not None:
                watch.add_feedback(feedback, at=record.timestamp)
            return
        if ("kind", b"shed") in (record.headers or ()):
            report = decode(ShedReport, record.value)
            tracked = snap.rollouts.get(report.deployment)
            if tracked is not None:
                tracked.analysis.shed += report.shed
                tracked.analysis.shed_sampled += report.sampled
            return
        comparison = decode(Comparison, record.value)
        if comparison.watch:  # the watch's evidence, never a rollout's
            watch = snap.watches.get(comparison.deployment)
            if watch is not None:
                watch.add_comparison(comparison, at=record.timestamp)
            return
        tracked = snap.rollouts.get(comparison.deployment)
        if tracked is not None:
            tracked.analysis.add_comparison(comparison, at=record.timestamp)

    def _misrouted(self, feedback: Feedback, record: ConsumerRecord) -> None:
        """Feedback keyed by something other than its deployment (issue 12): counted, logged
        once per deployment, and produced again keyed by its deployment, in the transaction
        that moves this partition's offset past it, so its analyst gets it exactly once."""
        metrics.observe_misrouted_feedback()
        name = feedback.deployment
        if name not in self._misrouted_logged and len(self._misrouted_logged) < _MISROUTED_LOGGED:
            self._misrouted_logged.add(name)
            log.warning(
                "analyst p%d: feedback for %s keyed %r (not by its deployment): re-keyed to"
                " its deployment's partition (logged once per deployment)",
                self.partition,
                name,
                record.key,
            )
        self._rekeyed.append((self._feedback_topic, name.encode("utf-8"), record.value))

    def _skipped(self, record: ConsumerRecord, reason: str, exc: Exception) -> None:
        metrics.observe_skipped(record.topic, reason)
        log.warning(
            "analyst p%d: skipped %s record at %d (%s): %s",
            self.partition,
            record.topic,
            record.offset,
            reason,
            exc,
            exc_info=reason == "error",
        )

    async def _decide(self) -> None:
        await self._decide_watches()
        for name, tracked in list(self.snapshot.rollouts.items()):
            state = self._view.states.get(name)
            if state is None:
                continue
            try:
                tracked.analysis.tick(now_ms())
                decision = decide(state, tracked.analysis, tracked.recommended)
            except Exception:  # a bug in one rollout's decision must not stop the others
                metrics.observe_skipped("decision", "error")
                log.exception("analyst p%d: deciding %s failed", self.partition, name)
                continue
            if decision.verdict is Verdict.HOLD:
                continue
            outcome = controller_step(
                state,
                decision.verdict,
                decision.reason,
                now_ms(),
                decision.evidence,
                decision.next_weight,
            )
            if not decision.verdict.changes_state:
                tracked.recommended = True
            if outcome.state is not None and decision.verdict is Verdict.ADVANCE:
                tracked.analysis.new_step(outcome.state.epoch, outcome.state.updated_at)
                tracked.weight = outcome.state.canary_weight
            if outcome.state is not None and outcome.state.candidate is None:
                del self.snapshot.rollouts[name]
            await self._publish(outcome.decision, outcome.state)
            if outcome.state is not None:
                self._view.offer(outcome.state)
            log.info(
                "decided %s for %s: %s", outcome.decision.action, name, outcome.decision.reason
            )

    async def _decide_watches(self) -> None:
        for name, watch in list(self.snapshot.watches.items()):
            state = self._view.states.get(name)
            if state is None or state.watch is None or state.watch.epoch != watch.start_epoch:
                continue
            try:
                watch.tick(now_ms())
                decision = decide_watch(state, watch)
            except Exception:  # a bug in one watch must not stop the others
                metrics.observe_skipped("decision", "error")
                log.exception("analyst p%d: watching %s failed", self.partition, name)
                continue
            if decision.verdict is WatchVerdict.HOLD:
                continue
            outcome = watch_step(
                state,
                decision.verdict is WatchVerdict.ROLLBACK,
                decision.reason,
                now_ms(),
                decision.evidence,
            )
            del self.snapshot.watches[name]
            await self._publish(outcome.decision, outcome.state)
            if outcome.state is not None:
                self._view.offer(outcome.state)
            log.info(
                "decided %s for %s: %s", outcome.decision.action, name, outcome.decision.reason
            )

    async def _publish(self, decision: Any, state: DeploymentState | None) -> None:
        records = self.snapshot.records()
        extra = [(self._analysis_topic, key, value) for key, value in records]
        rekeyed, self._rekeyed = self._rekeyed, []
        try:
            await self._publisher.publish(
                self.partition, decision, state, extra=extra, keyed=rekeyed
            )
        except BaseException:
            self._rekeyed = rekeyed + self._rekeyed  # not committed: sent with the next one
            raise
        self.snapshot.written(records)
        self._dirty = False
        self._last_snapshot = time.monotonic()
