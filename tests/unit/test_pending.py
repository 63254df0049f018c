"""The pending store (``app.core.pending``): rows in compared order, found by request id,
closed, expired, queued, bounded, and persisted per chunk, checked against a plain ordered
dict doing the same."""

from __future__ import annotations

import random
from collections import OrderedDict

import pytest

from app.controller.partition_snapshot import latest_values
from app.core import pending
from app.core.pending import ALIVE, AUDIT, GIVEN_UP, IN_TEST, OPEN, QUEUED, PendingStore

Ref = OrderedDict[str, tuple[str | None, str | None, int, int]]


@pytest.fixture(autouse=True)
def small_merges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pending, "_MERGE_MIN", 8)  # the index merges often in these tests


def _random_run(
    store: PendingStore, ref: Ref, seed: int, n: int, topic: dict[bytes, bytes] | None = None
) -> None:
    """Adds, labels (closes), duplicates and expiries at random, on both."""
    rng = random.Random(seed)
    for t in range(n):
        rid = f"q{rng.randrange(n)}" if rng.random() < 0.05 else f"r{seed}-{t}"
        if rid in ref:  # the same request id again replaces the earlier one
            row = store.find(rid)
            assert row is not None
            store.close(row)
            del ref[rid]
        prod, cand = rng.choice(["a", "b", None]), rng.choice(["a", "b"])
        store.add(rid, prod, cand, at=t, step=t // 50, flags=AUDIT, spreads=[0.5, t / 2048])
        ref[rid] = (prod, cand, t, t // 50)
        if rng.random() < 0.4 and ref:
            label = rng.choice(list(ref))
            row = store.find(label)
            assert row is not None
            store.close(row)
            del ref[label]
        if t % 37 == 0:
            cutoff = t - 120
            for row in store.expired(cutoff):
                store.close(row)
            for rid_ in [k for k, v in ref.items() if v[2] < cutoff]:
                del ref[rid_]  # (timestamps grow: expiry is exactly "before the cutoff")
            store.release()
        if topic is not None and t % 29 == 0:  # a snapshot now and then
            _write(topic, store)


def _write(topic: dict[bytes, bytes], store: PendingStore) -> None:
    """The store's changed records onto a compacted topic (latest value per key)."""
    records = [(k.encode(), v) for k, v in store.records()]
    latest = latest_values([*topic.items(), *records])
    topic.clear()
    topic.update(latest)
    store.written()


def _same(store: PendingStore, ref: Ref) -> None:
    assert len(store) == len(ref)
    for rid, (prod, cand, at, step) in ref.items():
        row = store.find(rid)
        assert row is not None, rid
        got = store.get(row)
        assert (got.prod, got.cand, got.at, got.step) == (prod, cand, at, step)
        assert got.flags & ALIVE and got.spreads == [0.5, at / 2048]
    assert store.find("never") is None


@pytest.mark.parametrize(("seed", "chunk_rows"), [(1, 16), (2, 64), (3, 4096), (4, 7)])
def test_the_store_keeps_exactly_what_an_ordered_dict_keeps(seed: int, chunk_rows: int) -> None:
    store, ref = PendingStore(tests=2, limit=10**6, chunk_rows=chunk_rows), Ref()
    _random_run(store, ref, seed, 2000)
    _same(store, ref)
    oldest = store.oldest()
    assert oldest is not None and store.get(oldest).at == next(iter(ref.values()))[2]


@pytest.mark.parametrize("chunk_rows", [16, 100])
def test_chunks_are_freed_once_nothing_in_them_waits(chunk_rows: int) -> None:
    store = PendingStore(tests=1, limit=10**6, chunk_rows=chunk_rows)
    for t in range(1000):
        store.add(f"r{t}", "a", "a", at=t, step=1, flags=0, spreads=None)
    for row in store.expired(900):
        store.close(row)
    store.release()
    assert len(store) == 100
    # Only chunks holding rows 900.. are left: memory follows what waits, not history.
    assert store.meta()["chunks"] == list(range(900 // chunk_rows, 999 // chunk_rows + 1))
    assert store.find("r899") is None and store.find("r900") is not None


def test_a_queued_row_outlives_its_label_until_the_queue_takes_it() -> None:
    store = PendingStore(tests=1, limit=100, chunk_rows=4)
    for t in range(10):
        store.add(f"r{t}", "a", "b", at=t, step=1, flags=AUDIT | OPEN | QUEUED, spreads=[0.375])
    first = store.next_queued()
    assert first == 0 and store.queued == 10
    store.close(0)
    store.set_truth(0, "b")
    for row in store.expired(5):  # r1..r4 given up, still queued
        store.close(row)
        store.set_flags(row, on=GIVEN_UP)
    store.release()
    assert store.meta()["chunks"] == [0, 1, 2]  # the queue still reads chunk 0
    row0 = store.get(0)
    assert (row0.truth, row0.flags & ALIVE, row0.spreads) == ("b", 0, [0.375])
    for row in range(5):
        assert store.next_queued() == row
        store.set_flags(row, off=QUEUED, on=IN_TEST * (row == 4))
    store.release()
    assert store.meta()["chunks"] == [1, 2] and store.queued == 5
    store.clear(QUEUED | IN_TEST)
    assert store.queued == 0 and not store.flags(4) & IN_TEST and store.next_queued() is None


@pytest.mark.parametrize("seed", [5, 6])
def test_records_written_snapshot_by_snapshot_restore_the_same_store(seed: int) -> None:
    store, ref = PendingStore(tests=2, limit=10**6, chunk_rows=32), Ref()
    topic: dict[bytes, bytes] = {}
    _random_run(store, ref, seed, 2000, topic)
    _write(topic, store)
    on_topic = {k.decode(): v for k, v in topic.items()}
    back = PendingStore.restore(store.meta(), on_topic)
    _same(back, ref)
    assert back.meta() == store.meta()
    # Freed chunks were tombstoned: the topic holds only the chunks the store holds.
    assert sorted(on_topic) == sorted(store.chunk_records())


def test_a_missing_chunk_record_is_refused() -> None:
    store = PendingStore(tests=1, limit=100, chunk_rows=4)
    for t in range(10):
        store.add(f"r{t}", "a", "b", at=t, step=1, flags=0, spreads=None)
    records = store.chunk_records()
    del records["1/state"]
    with pytest.raises(ValueError, match="chunk 1 missing"):
        PendingStore.restore(store.meta(), records)


@pytest.mark.parametrize(
    ("outcomes", "tests"),
    [
        (["legit", "fraud"], 1),
        ([[1.5, 2.0], [0.25, -3.0]], 2),  # a regressor's values
        (["a", "b", "c", None], 3),
    ],
)
def test_outcomes_of_every_kind_round_trip(outcomes: list[object], tests: int) -> None:
    store = PendingStore(tests=tests, limit=100, chunk_rows=8)
    for t in range(20):
        prod, cand = outcomes[t % len(outcomes)], outcomes[(t + 1) % len(outcomes)]
        store.add(f"r{t}", prod, cand, at=t, step=3, flags=AUDIT, spreads=[0.125] * tests)  # type: ignore[arg-type]
    back = PendingStore.restore(store.meta(), store.chunk_records())
    for t in range(20):
        row = back.find(f"r{t}")
        assert row is not None
        got = back.get(row)
        assert (got.prod, got.cand) == (
            outcomes[t % len(outcomes)],
            outcomes[(t + 1) % len(outcomes)],
        )
        assert got.spreads == [0.125] * tests


def test_a_row_costs_tens_of_bytes() -> None:
    store = PendingStore(tests=1, limit=10**6, chunk_rows=4096)
    for t in range(20_000):
        store.add(f"r{t}", "a", "b", at=t, step=1, flags=AUDIT, spreads=[0.2])
    # 27 bytes of columns, 4 of bet size, 12 of index; the last chunk is partly empty.
    per_row = store.nbytes() / len(store)
    assert 40 < per_row < 50
