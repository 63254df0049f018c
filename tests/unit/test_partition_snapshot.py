"""The analysis snapshot of a partition (``controller/partition_snapshot.py``): a
record per rollout, per watch and per chunk of pending requests, so that no record grows
with the number of rollouts sharing the partition or with the requests awaiting labels;
only what changed is written; restored, it is the same evidence."""

from __future__ import annotations

import random

import orjson
import pytest

from app.controller.partition_snapshot import (
    PartitionSnapshot,
    Record,
    TrackedRollout,
    latest_values,
)
from app.core.analysis import RolloutAnalysis
from app.core.events import ArmResult, Comparison, Feedback, Mode, ModelOutput, Role, SourceOffset
from app.core.policy import Policy
from app.core.promotion import criterion
from app.core.topics import Topic
from tests import builders

CHUNK = 64
# A rollout's evidence record is a few KiB; a chunk record is CHUNK x (24 + 8 per test) bytes
# and a small header. The bound asserted for the largest record, whatever the count:
RECORD_BOUND = 16 * 1024


def comparison(deployment: str, i: int, rng: random.Random) -> Comparison:
    prod = "fraud" if rng.random() < 0.2 else "legit"
    cand = prod if rng.random() > 0.1 else ("legit" if prod == "fraud" else "fraud")
    return Comparison(
        request_id=f"{deployment}-{i}",
        deployment=deployment,
        mode=Mode.CANARY,
        epoch=1,
        source=SourceOffset(topic=Topic.REQUESTS, partition=0, offset=i),
        served_by=Role.CANDIDATE,
        production=ArmResult(
            version="1",
            sha256="1" * 64,
            output=ModelOutput(label=prod, scores=[0.7, 0.3]),
            latency_ms=0.02,
        ),
        candidate=ArmResult(
            version="2",
            sha256="2" * 64,
            output=ModelOutput(label=cand, scores=[0.6, 0.4]),
            latency_ms=0.02,
        ),
        agree=prod == cand,
        score_delta=0.1,
    )


def rollout(deployment: str, compared: int, labelled: float, seed: int = 0) -> TrackedRollout:
    """A canary rollout of ``deployment`` with ``compared`` requests, ``labelled`` of them
    (a share) with their ground truth: the rest wait."""
    a = RolloutAnalysis.for_policy(
        deployment, "2", 1, Policy(), started_at=0, pending_chunk_rows=CHUNK
    )
    rng = random.Random(seed)
    for i in range(compared):
        a.add_comparison(comparison(deployment, i, rng), at=1000 + i)
    for i in range(int(compared * labelled)):
        truth = "fraud" if rng.random() < 0.2 else "legit"
        a.add_feedback(
            Feedback(
                request_id=f"{deployment}-{i}", deployment=deployment, label=truth, observed_at=1
            ),
            at=5000,
        )
    return TrackedRollout(a, weight=0.05)


def publish(topic: dict[bytes, bytes], snap: PartitionSnapshot) -> list[Record]:
    """One snapshot onto the compacted topic; the records written."""
    records = snap.records()
    topic.update(latest_values([*topic.items(), *records]))
    for key in [k for k, v in records if v is None]:
        topic.pop(key, None)
    snap.written(records)
    return records


@pytest.mark.parametrize("rollouts", [1, 10, 100])
def test_no_record_grows_with_the_rollouts_sharing_a_partition(rollouts: int) -> None:
    snap = PartitionSnapshot(0, 123, 45)
    for k in range(rollouts):
        snap.rollouts[f"d{k}"] = rollout(f"d{k}", 150, labelled=0.3, seed=k)
    topic: dict[bytes, bytes] = {}
    records = publish(topic, snap)
    largest = max(len(v) for _, v in records if v is not None)
    assert largest < RECORD_BOUND
    header = orjson.loads(topic[b"p0"])
    assert header["comparisons_offset"] == 123 and len(header["rollouts"]) == rollouts
    # Each rollout: its evidence and two records per chunk of its pending requests (150
    # compared, in 3 chunks of 64 rows).
    for tracked in snap.rollouts.values():
        assert tracked.analysis.pending.meta()["chunks"] == [0, 1, 2]
    assert len(records) == 1 + rollouts * (1 + 3 * 2)


def test_pending_requests_are_not_carried_in_the_evidence_record() -> None:
    small, large = rollout("d", 100, 0.0), rollout("d", 3000, 0.0)
    small_size = len(orjson.dumps(small.to_json()))
    large_size = len(orjson.dumps(large.to_json()))
    assert large.analysis.pending.alive == 3000
    assert large_size < small_size + 1024  # a list of 47 chunk numbers more, nothing per request


def test_only_what_changed_is_written_again() -> None:
    snap = PartitionSnapshot(2)
    for k in range(5):
        snap.rollouts[f"d{k}"] = rollout(f"d{k}", 200, labelled=0.0, seed=k)
    topic: dict[bytes, bytes] = {}
    publish(topic, snap)
    assert [k for k, _ in publish(topic, snap)] == [b"p2"]  # nothing changed: the header
    d1 = snap.rollouts["d1"].analysis
    d1.add_feedback(
        Feedback(request_id="d1-70", deployment="d1", label="legit", observed_at=1), at=6000
    )
    written = sorted(k.decode() for k, _ in publish(topic, snap))
    # The rollout's evidence and the state (flags) of the one chunk holding d1-70.
    assert written == ["p2", "p2/pending/d1/1/1/state", "p2/rollout/d1"]


def test_restored_from_the_topic_the_evidence_is_the_same_and_labels_still_join() -> None:
    snap = PartitionSnapshot(1, 10, 20)
    for k in range(3):
        snap.rollouts[f"d{k}"] = rollout(f"d{k}", 400, labelled=0.25, seed=k)
    topic: dict[bytes, bytes] = {}
    publish(topic, snap)
    back = PartitionSnapshot.from_records(1, topic)
    assert sorted(back.rollouts) == sorted(snap.rollouts)
    for name, tracked in snap.rollouts.items():
        restored = back.rollouts[name]
        assert restored.to_json() == tracked.to_json()
        assert restored.analysis.pending.chunk_records() == tracked.analysis.pending.chunk_records()
    late = Feedback(request_id="d0-399", deployment="d0", label="legit", observed_at=1)
    before = back.rollouts["d0"].analysis.labelled
    assert back.rollouts["d0"].analysis.add_feedback(late, at=9000)
    assert back.rollouts["d0"].analysis.labelled == before + 1


def test_an_ended_rollout_leaves_nothing_on_the_topic() -> None:
    snap = PartitionSnapshot(0)
    snap.rollouts["gone"] = rollout("gone", 300, 0.0)
    snap.rollouts["kept"] = rollout("kept", 100, 0.0)
    topic: dict[bytes, bytes] = {}
    publish(topic, snap)
    del snap.rollouts["gone"]
    publish(topic, snap)
    assert not [k for k in topic if b"gone" in k]
    # A new rollout of the same deployment (another start epoch) replaces the old chunks.
    fresh = rollout("kept", 10, 0.0)
    fresh.analysis.start_epoch = 7
    snap.rollouts["kept"] = fresh
    publish(topic, snap)
    assert sorted(k.decode() for k in topic if b"kept" in k) == [
        "p0/pending/kept/7/0/rows",
        "p0/pending/kept/7/0/state",
        "p0/rollout/kept",
    ]


def test_a_snapshot_in_the_earlier_format_keeps_its_offsets_and_starts_afresh() -> None:
    old = {
        b"p0": orjson.dumps(
            {
                "partition": 0,
                "comparisons_offset": 5,
                "feedback_offset": 6,
                "rollouts": {"fraud": {"analysis": {"version": 4}}},
            }
        )
    }
    snap = PartitionSnapshot.from_records(0, old)
    assert (snap.comparisons_offset, snap.feedback_offset, snap.rollouts) == (5, 6, {})


def _labels(a: RolloutAnalysis, deployment: str, ids: range, seed: int = 9) -> int:
    rng = random.Random(seed)
    joined = 0
    for i in ids:
        truth = "fraud" if rng.random() < 0.2 else "legit"
        f = Feedback(
            request_id=f"{deployment}-{i}", deployment=deployment, label=truth, observed_at=1
        )
        joined += a.add_feedback(f, at=10**6)
    return joined


def _fed(limit: int | None, compared: int) -> RolloutAnalysis:
    policy = Policy(promote_on_agreement=False)
    a = RolloutAnalysis.for_policy(
        "d", "2", 1, policy, started_at=0, pending_limit=limit, pending_chunk_rows=16
    )
    rng = random.Random(3)
    for i in range(compared):
        a.add_comparison(comparison("d", i, rng), at=1000 + i)
    return a


def test_a_label_after_thousands_of_other_comparisons_is_still_joined() -> None:
    a = _fed(None, 5000)  # the limit: 24 h x 100/s
    assert a.pending_limit == 8_640_000 and len(a.pending) == 5000
    assert _labels(a, "d", range(5000)) == 5000  # the first after 4,999 others, in 313 chunks
    assert (a.labelled, a.dropped_pending, a.expired_pending, len(a.pending)) == (5000, 0, 0, 0)


def test_past_its_limit_a_rollout_drops_the_oldest_and_says_so_never_silently() -> None:
    full, capped = _fed(None, 600), _fed(200, 600)
    samples = capped.samples()
    assert (samples["pending"], samples["pending_limit"], samples["pending_dropped"]) == (
        200,
        200,
        400,
    )
    # Labels of the dropped requests are not joined; those of the kept ones are.
    assert _labels(capped, "d", range(600)) == 200
    assert _labels(full, "d", range(600)) == 600
    # A dropped request stays at its worst case: the promote tests never gain from a drop.
    for t in full.step_better:
        assert capped.step_better[t].log_wealth <= full.step_better[t].log_wealth
        assert capped.step_frontier[t].log_wealth <= full.step_frontier[t].log_wealth
    assert capped.step_coverage < full.step_coverage


def test_the_hold_reason_names_the_dropped_requests() -> None:
    capped = _fed(200, 600)
    st = builders.state(Mode.CANARY, weight=1.0, policy=Policy(promote_on_agreement=False))
    why = criterion(st, capped).why
    assert "400 compared requests dropped unlabelled" in why and "worst case" in why
