"""The replay gate's I/O: before an automatic deploy is let through, the last N requests *of
that deployment* are read back from ``inference.requests`` (per partition, backwards, until N
of them or the topic's start: the topic is shared by every deployment), scored by the new
version beside the current production (the data plane's own ``score_batch``, in shadow),
joined with their ground truth from ``inference.feedback`` (the deployment's partition, where
its feedback is or is re-keyed to, from the oldest replayed request on) and judged by
``app.core.replay`` on the policy's own tests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from app.adapters.artifact_cache import ArtifactCache
from app.adapters.kafka_clients import partitions_of, reader
from app.adapters.model_store import ModelStore
from app.adapters.partitioning import partition_for
from app.core.artifacts import ArtifactRejected
from app.core.batch_result import DEFAULT_TOPICS
from app.core.events import (
    Action,
    Comparison,
    DeploymentState,
    Feedback,
    Mode,
    Phase,
    decode,
    now_ms,
)
from app.core.replay import GateResult, judge, replay_analysis
from app.core.requests import ParsedRequest, RawRecord, parse_request
from app.core.routes import DeploymentRoute
from app.core.scoring import score_batch
from app.core.state_machine import Outcome, reject
from app.core.topics import Topic
from app.settings import Settings

if TYPE_CHECKING:  # it reads through this module's readers
    from app.controller.replay_history import ReplayHistory

log = logging.getLogger(__name__)

# Feedback is written after its request; producers' clocks may differ by this much.
CLOCK_SLACK_MS = 60_000
READ_TIMEOUT_S = 60.0
# Large fetches: the gate reads back many deployments' records to find one's (fewer round
# trips to the broker; aiokafka's 1 MiB per partition took ~7 for 2,000 of 100's).
FETCH_BYTES = 16 * 1024 * 1024


def needs_replay(outcome: Outcome) -> bool:
    """An accepted deploy in automatic mode whose policy asks for a replay gate."""
    state = outcome.state
    return (
        state is not None
        and outcome.decision.action == Action.DEPLOY.value
        and state.mode is Mode.AUTOMATIC
        and state.policy.replay_gate > 0
    )


async def replay(
    settings: Settings,
    store: ModelStore,
    before: DeploymentState,
    outcome: Outcome,
    cache: ArtifactCache | None = None,
    history: ReplayHistory | None = None,
) -> Outcome:
    """Automatic mode with ``replay_gate = N``: the last N requests are scored by the new
    version beside the current production before it is let through. With ``cache``, either
    version the store lacks is fetched (verified against the state's sha256) first. With
    ``history``, the requests and labels come from what it kept since the last gate."""
    new = outcome.state
    assert new is not None
    decision = outcome.decision
    if cache is not None:
        try:
            for ref in (before.production, new.production):
                await cache.ensure(ref.name, ref.version, ref.sha256)
        except ArtifactRejected as error:
            refused = reject(
                before,
                f"replay gate: artifact refused: {error.reason}",
                now_ms(),
                action=decision.action,
                command_id=decision.command_id,
                decided_by=decision.decided_by,
            )
            return Outcome(None, refused.decision)
    wanted = new.policy.replay_gate
    name = before.deployment
    if history is not None:
        records = await history.requests(name, wanted)
    else:
        records = await recent_requests(settings, name, wanted)
    feedback: list[Feedback] = []
    if records:
        since = min(r.timestamp for r in records) - CLOCK_SLACK_MS
        if history is not None:
            feedback = await history.feedback(name, since, wanted)
        else:
            feedback = await feedback_since(settings, name, since)
    # Scoring N requests by two models (a slow candidate: milliseconds a row) and the tests
    # are seconds of CPU: in a thread, so the controller's loop (and every other
    # deployment's evidence and commands) goes on meanwhile.
    result = await asyncio.to_thread(
        _judged, store, before, new, records, feedback, settings.max_request_bytes
    )
    if not result.passed:
        rejected = reject(
            before,
            result.reason,
            now_ms(),
            action=decision.action,
            command_id=decision.command_id,
            decided_by=decision.decided_by,
        )
        return Outcome(None, rejected.decision.model_copy(update={"evidence": result.evidence}))
    return Outcome(
        new,
        decision.model_copy(
            update={
                "reason": f"{decision.reason}; {result.reason}",
                "evidence": result.evidence,
            }
        ),
    )


def _judged(
    store: ModelStore,
    before: DeploymentState,
    new: DeploymentState,
    records: list[RawRecord],
    feedback: list[Feedback],
    max_request_bytes: int,
) -> GateResult:
    """The replayed ``records`` scored by both versions (the data plane's ``score_batch``, in
    shadow), joined with ``feedback``, judged by ``app.core.replay``."""
    production = store.load(before.production)
    candidate = store.load(new.production)
    shadow = before.model_copy(
        update={
            "mode": Mode.SHADOW,
            "phase": Phase.PROGRESSING,
            "candidate": new.production,
            "shadow_sample_rate": 1.0,
            "policy": new.policy,
        }
    )
    spec = store.spec(before.deployment)
    regression = spec.regression
    scored = score_batch(
        records,
        {before.deployment: DeploymentRoute(shadow, production, candidate, regression=regression)},
        max_request_bytes=max_request_bytes,
    )
    analysis = replay_analysis(
        before,
        new,
        len(records),
        kind=spec.signature.kind,
        error_cap=regression.error_cap if regression is not None else None,
    )
    for out in scored.outgoing:
        if out.topic == DEFAULT_TOPICS.comparisons:
            analysis.add_comparison(decode(Comparison, out.value))
    for label in feedback:
        analysis.add_feedback(label)
    return judge(new, analysis, new.policy.replay_gate)


def _mine(
    record: ConsumerRecord, deployment: str, needle: bytes, max_bytes: int
) -> RawRecord | None:
    """``record`` as a ``RawRecord`` when it is a readable request of ``deployment``: a cheap
    look for the name first (most records are other deployments'), then the data plane's
    own parse."""
    value = record.value
    headers = tuple(record.headers or ())
    if value is None or (needle not in value and not any(needle in v for _, v in headers)):
        return None
    raw = RawRecord(
        record.topic, record.partition, record.offset, record.key, value, record.timestamp, headers
    )
    parsed = parse_request(raw, frozenset((deployment,)), max_bytes)
    return raw if isinstance(parsed, ParsedRequest) else None


async def recent_requests(
    settings: Settings,
    deployment: str,
    n: int,
    ends: dict[TopicPartition, int] | None = None,
) -> list[RawRecord]:
    """The last ``n`` readable requests of ``deployment`` (fewer when the topic holds fewer),
    oldest first: every partition read backwards in windows, each window sized by the share
    of the deployment's requests seen so far, until ``n`` are found or every partition's
    start is reached. From ``ends`` (per partition, exclusive) when given, else from the
    topic's end."""
    consumer = reader(settings, max_partition_fetch_bytes=FETCH_BYTES, fetch_max_bytes=FETCH_BYTES)
    await consumer.start()
    try:
        partitions = await partitions_of(consumer, settings.topics.name(Topic.REQUESTS))
        consumer.assign(partitions)
        if ends is None:
            ends = await consumer.end_offsets(partitions)
        starts = await consumer.beginning_offsets(partitions)
        low = dict(ends)  # the lowest offset read so far, per partition
        needle = deployment.encode("utf-8")
        found: list[RawRecord] = []
        read = 0
        window = max(n // len(partitions), 200)
        while len(found) < n and any(low[tp] > starts[tp] for tp in partitions):
            bounds: dict[TopicPartition, int] = {}
            for tp in partitions:
                if low[tp] > starts[tp]:
                    bounds[tp] = low[tp]
                    low[tp] = max(starts[tp], low[tp] - window)
                    consumer.seek(tp, low[tp])
                else:
                    consumer.pause(tp)  # read to its start: fetch nothing more of it
            got = await read_ranges(consumer, bounds, low)
            read += len(got)
            limit = settings.max_request_bytes
            found.extend(
                raw for r in got if (raw := _mine(r, deployment, needle, limit)) is not None
            )
            share = len(found) / read if read else 0.0
            missing = n - len(found)
            # The next window: what the deployment's share says is left to find (x 1.25),
            # at least double the last one when none was found.
            per_partition = missing / max(share, 1e-9) / len(partitions) * 1.25
            window = int(min(max(per_partition, 200), window * 16 if share else window * 2))
        found.sort(key=lambda r: (r.timestamp, r.partition, r.offset))
        return found[-n:] if n else []
    finally:
        await consumer.stop()


async def read_ranges(
    consumer: AIOKafkaConsumer,
    bounds: dict[TopicPartition, int],
    low: dict[TopicPartition, int],
) -> list[ConsumerRecord]:
    """Each partition of ``bounds`` from its position (``low``) up to its bound (exclusive)."""
    records: list[ConsumerRecord] = []
    position = dict(low)
    deadline = time.monotonic() + READ_TIMEOUT_S
    while time.monotonic() < deadline:
        pending = [tp for tp, end in bounds.items() if position[tp] < end]
        if not pending:
            break
        batch = await consumer.getmany(*pending, timeout_ms=200)
        for tp, part in batch.items():
            records.extend(r for r in part if r.offset < bounds[tp])
            if part:
                position[tp] = part[-1].offset + 1
        for tp in pending:  # aborted transactions and markers leave gaps in the offsets
            position[tp] = max(position[tp], await consumer.position(tp))
    return records


async def feedback_since(settings: Settings, deployment: str, since_ms: int) -> list[Feedback]:
    """The ground truth for ``deployment`` written at or after ``since_ms``, up to the end as
    of the call: the deployment's partition of the feedback topic (feedback keyed otherwise
    is re-keyed there by the analyst)."""
    records = await feedback_records(settings, deployment, since_ms)
    return decoded_feedback(deployment, [r.value for r in records if r.value is not None])


async def feedback_records(
    settings: Settings, deployment: str, since_ms: int, until: int | None = None
) -> list[ConsumerRecord]:
    """The records of ``deployment``'s partition of the feedback topic written at or after
    ``since_ms``, up to offset ``until`` (exclusive) or the end as of the call."""
    topic = settings.topics.name(Topic.FEEDBACK)
    consumer = reader(settings)
    await consumer.start()
    try:
        partitions = await partitions_of(consumer, topic)
        tp = TopicPartition(topic, partition_for(deployment, len(partitions)))
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp] if until is None else until
        found = await consumer.offsets_for_times({tp: since_ms})
        at = found.get(tp)
        start = min(at.offset, end) if at is not None else end
        consumer.seek(tp, start)
        return await read_ranges(consumer, {tp: end}, {tp: start})
    finally:
        await consumer.stop()


def decoded_feedback(deployment: str, values: list[bytes]) -> list[Feedback]:
    """The ``Feedback`` of ``deployment`` among ``values`` (what does not read is skipped:
    the analyst logs and counts it)."""
    needle = deployment.encode("utf-8")
    out: list[Feedback] = []
    for value in values:
        if needle not in value:
            continue
        try:
            feedback = decode(Feedback, value)
        except ValueError:
            continue
        if feedback.deployment == deployment:
            out.append(feedback)
    return out


async def gated(
    settings: Settings,
    store: ModelStore,
    before: DeploymentState,
    outcomes: list[Outcome],
    cache: ArtifactCache | None = None,
    history: ReplayHistory | None = None,
) -> list[Outcome]:
    """``outcomes`` (in order, from ``before``) with each automatic deploy that needs it put
    through the replay gate (a publication's start, a dequeued version's start)."""
    out: list[Outcome] = []
    current = before
    for outcome in outcomes:
        if needs_replay(outcome):
            try:
                outcome = await replay(settings, store, current, outcome, cache, history)
            except Exception as error:  # one gate must not stop the controller's publications
                log.exception("replay gate for %s failed", current.deployment)
                refused = reject(
                    current,
                    f"replay gate could not run ({type(error).__name__}: {error}); not deployed",
                    now_ms(),
                    action=outcome.decision.action,
                    command_id=outcome.decision.command_id,
                    decided_by=outcome.decision.decided_by,
                )
                outcome = Outcome(None, refused.decision)
        out.append(outcome)
        if outcome.state is not None:
            current = outcome.state
    return out
