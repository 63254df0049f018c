"""The controller's evidence side, one ``PartitionAnalyst`` per owned partition.

An analyst reads its partition of ``inference.comparisons`` and ``inference.feedback`` (both
keyed by deployment, co-partitioned with the control topic), keeps a ``RolloutAnalysis`` for
every deployment of the partition that has a candidate, and after every batch of evidence
asks ``app.core.promotion.decide`` what to do. A decision is published in one transaction
with a snapshot of the partition's analysis, which carries the offsets it was computed up
to (``deployments.analysis``, compacted, key ``p<N>``; its records are
``app.controller.partition_snapshot``'s). A new owner of the partition, after a
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
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from pydantic import ValidationError

from app.adapters import controller_metrics
from app.adapters.kafka_clients import reader, stop_following
from app.adapters.state_view import StateView
from app.controller.partition_snapshot import PartitionSnapshot, TrackedRollout, latest_values
from app.controller.publisher import DecisionPublisher
from app.core.analysis import RolloutAnalysis
from app.core.events import Comparison, DeploymentState, Feedback, ShedReport, decode, now_ms
from app.core.manifest import DeploymentSpec
from app.core.promotion import decide
from app.core.state_machine import Outcome, controller_step, watch_step
from app.core.topics import Topic
from app.core.verdict import Verdict
from app.core.watch import WatchAnalysis, WatchVerdict, decide_watch
from app.settings import Settings

log = logging.getLogger(__name__)

SNAPSHOT_EVERY_S = 2.0
_MISROUTED_LOGGED = 1000  # deployments whose misrouted feedback is logged (once each)


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
                rollouts[name] = TrackedRollout(self._fresh(state), state.canary_weight)
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
        controller_metrics.observe_misrouted_feedback()
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
        controller_metrics.observe_skipped(record.topic, reason)
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
                controller_metrics.observe_skipped("decision", "error")
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
            await self._commit(name, outcome)

    async def _decide_watches(self) -> None:
        for name, watch in list(self.snapshot.watches.items()):
            state = self._view.states.get(name)
            if state is None or state.watch is None or state.watch.epoch != watch.start_epoch:
                continue
            try:
                watch.tick(now_ms())
                decision = decide_watch(state, watch)
            except Exception:  # a bug in one watch must not stop the others
                controller_metrics.observe_skipped("decision", "error")
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
            await self._commit(name, outcome)

    async def _commit(self, name: str, outcome: Outcome) -> None:
        """Publish a decision of ``name`` (with the snapshot) and offer its state to the view."""
        await self._publish(outcome.decision, outcome.state)
        if outcome.state is not None:
            self._view.offer(outcome.state)
        log.info("decided %s for %s: %s", outcome.decision.action, name, outcome.decision.reason)

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
