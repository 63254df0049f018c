"""Compared requests awaiting ground truth, compactly: ``PendingStore``.

A rollout keeps every compared request until its label comes or the policy's feedback
horizon passes: at 100 labelled requests per second and a 24 h horizon that is 8.6 million
requests per deployment. So a pending request is a row of fixed-width numpy columns, in
compared order, in chunks of ``chunk_rows`` rows:

- ``key`` (the first 8 bytes of BLAKE2b of the request id), ``at`` (compared at, epoch ms),
  ``step`` (the canary step's epoch), ``prod``/``cand`` (the two outcomes, as codes into the
  chunk's table of distinct outcomes: a classifier's labels, a regressor's value lists):
  24 bytes, written once;
- ``flags`` (alive, audit, open, queued, in the in-order test, given up) and ``truth`` (the
  label of a queued request, as a code): 3 bytes, changing;
- an audit request's bet sizes, one float32 per test (the analysis rounds them to float32
  before betting, so the stored value is the one bet), in a per-chunk array made when the
  chunk holds its first audit request.

Lookup by request id goes through a sorted array of (key, row) with a small dict of recent
keys merged into it when it reaches 1/16 of the array (12 bytes a row). A row
whose label came, or that was given up, is marked dead; a chunk is freed once no row in it
is alive or waits in the queue of the in-order promote test.

The store never holds more than ``limit`` alive rows (the analysis derives it from the
horizon and the rate it is sized for): beyond it the oldest is closed as *dropped*, which
the analysis counts, shows, and treats as a label never coming (its worst case). Nothing is
dropped silently.

Persistence is per chunk (``records``): ``<chunk>/rows`` (the fixed columns and bet sizes,
rewritten only while the chunk fills) and ``<chunk>/state`` (flags, truths and the outcome
table, rewritten when they change), each a few hundred KiB at most; freed chunks become
tombstones. ``meta`` is the small rest. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import orjson

from app.core.metric import Outcome

ALIVE, AUDIT, OPEN, QUEUED, IN_TEST, GIVEN_UP = 1, 2, 4, 8, 16, 32
NONE = 0xFFFF  # the code of a missing outcome
CHUNK_ROWS = 4096
_FIXED = np.dtype(
    [("key", "<u8"), ("at", "<i8"), ("step", "<i4"), ("prod", "<u2"), ("cand", "<u2")]
)
_STATE = np.dtype([("flags", "u1"), ("truth", "<u2")])
_FRAME = struct.Struct("<I")
_MERGE_MIN = 4096

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
U32 = npt.NDArray[np.uint32]


def request_key(request_id: str) -> int:
    """The 64-bit key a request id is found by (two ids share one with odds ~n²/2⁶⁵)."""
    return int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "little")


class Row(NamedTuple):
    prod: Outcome
    cand: Outcome
    at: int
    step: int
    flags: int
    truth: Outcome
    spreads: list[float] | None  # the bet sizes of an audit request, one per test


class _Chunk:
    """``rows`` consecutive rows: fixed columns, state columns, bet sizes, outcome table."""

    def __init__(self, number: int, rows: int, tests: int) -> None:
        self.number = number
        self.tests = tests
        self.fixed = np.zeros(rows, _FIXED)
        self.state = np.zeros(rows, _STATE)
        self.spreads: npt.NDArray[np.float32] | None = None
        self.size = 0
        self.outcomes: list[Outcome] = []
        self._codes: dict[Any, int] = {}
        self.rows_dirty = True
        self.state_dirty = True

    def code(self, outcome: Outcome) -> int:
        if outcome is None:
            return NONE
        key = tuple(outcome) if isinstance(outcome, list) else outcome
        code = self._codes.get(key)
        if code is None:
            code = self._codes[key] = len(self.outcomes)
            self.outcomes.append(outcome)
        return code

    def outcome(self, code: int) -> Outcome:
        if code == NONE:
            return None
        value = self.outcomes[code]
        return list(value) if isinstance(value, list) else value

    def set_spreads(self, i: int, spreads: Sequence[float]) -> None:
        if self.spreads is None:
            self.spreads = np.zeros((len(self.fixed), self.tests), np.float32)
        self.spreads[i] = spreads

    def encode_rows(self) -> bytes:
        head = orjson.dumps({"size": self.size, "spreads": self.spreads is not None})
        body = self.fixed[: self.size].tobytes()
        if self.spreads is not None:
            body += self.spreads[: self.size].tobytes()
        return _FRAME.pack(len(head)) + head + body

    def encode_state(self) -> bytes:
        head = orjson.dumps({"size": self.size, "outcomes": self.outcomes})
        return _FRAME.pack(len(head)) + head + self.state[: self.size].tobytes()

    def decode(self, rows: bytes, state: bytes) -> None:
        rows_head, rows_body = _unframe(rows)
        state_head, state_body = _unframe(state)
        n = self.size = int(rows_head["size"])
        if state_head["size"] != n:
            raise ValueError(f"pending chunk {self.number}: rows and state disagree")
        self.fixed[:n] = np.frombuffer(rows_body[: n * _FIXED.itemsize], _FIXED)
        if rows_head["spreads"]:
            self.set_spreads(0, [0.0] * self.tests)
            assert self.spreads is not None
            spreads = np.frombuffer(rows_body[n * _FIXED.itemsize :], np.float32)
            self.spreads[:n] = spreads.reshape(n, self.tests)
        self.state[:n] = np.frombuffer(state_body, _STATE)
        for outcome in state_head["outcomes"]:
            self.code(outcome)
        self.rows_dirty = self.state_dirty = False


def _unframe(value: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = _FRAME.unpack_from(value)
    return orjson.loads(value[_FRAME.size : _FRAME.size + n]), value[_FRAME.size + n :]


class _Index:
    """Key -> row: a sorted array, plus a dict of recent keys merged in when it grows."""

    def __init__(self) -> None:
        self.keys: U64 = np.empty(0, np.uint64)
        self.rows: U32 = np.empty(0, np.uint32)  # a rollout numbers fewer than 2^32 rows
        self.recent: dict[int, int] = {}

    def put(self, key: int, row: int) -> bool:
        """Add; True when the recent keys are due to be merged."""
        self.recent[key] = row
        return len(self.recent) > max(_MERGE_MIN, len(self.keys) // 16)

    def candidates(self, key: int) -> list[int]:
        found = [self.recent[key]] if key in self.recent else []
        if not len(self.keys):
            return found
        k = np.uint64(key)
        lo = int(self.keys.searchsorted(k))
        while lo < len(self.keys) and self.keys[lo] == k:
            found.append(int(self.rows[lo]))
            lo += 1
        return found

    def rebuild(self, keys: U64, rows: U32) -> None:
        order = np.argsort(keys, kind="stable")
        self.keys, self.rows, self.recent = keys[order], rows[order], {}

    def merged(self, alive: npt.NDArray[np.bool_]) -> tuple[U64, U32]:
        """The base entries still alive (``alive`` per base entry) and the recent ones."""
        recent_keys = np.fromiter(self.recent.keys(), np.uint64, len(self.recent))
        recent_rows = np.fromiter(self.recent.values(), np.uint32, len(self.recent))
        return (
            np.concatenate([self.keys[alive], recent_keys]),
            np.concatenate([self.rows[alive], recent_rows]),
        )


class PendingStore:
    """Pending requests of one rollout in compared order (rows numbered from 0)."""

    def __init__(self, tests: int, limit: int, chunk_rows: int = CHUNK_ROWS) -> None:
        if chunk_rows < 1 or limit < 1:
            raise ValueError("chunk_rows and limit must be at least 1")
        self.tests = tests
        self.limit = limit
        self.chunk_rows = chunk_rows
        self.next_row = 0
        self.head = 0  # no row before it is alive
        self.queue_row = 0  # no row before it is queued
        self.alive = 0
        self.queued = 0
        self._chunks: dict[int, _Chunk] = {}
        self._index = _Index()
        self._freed: list[int] = []
        self._low = 0  # no chunk below it is held

    def __len__(self) -> int:
        return self.alive

    # -- rows -----------------------------------------------------------------------------

    def _at(self, row: int) -> tuple[_Chunk, int]:
        return self._chunks[row // self.chunk_rows], row % self.chunk_rows

    def add(
        self,
        request_id: str,
        prod: Outcome,
        cand: Outcome,
        at: int,
        step: int,
        flags: int,
        spreads: Sequence[float] | None,
    ) -> int:
        """Append an alive row; its number. The caller closes an alive row of the same
        request id first (``find``)."""
        row = self.next_row
        number, i = divmod(row, self.chunk_rows)
        chunk = self._chunks.get(number)
        if chunk is None:
            chunk = self._chunks[number] = _Chunk(number, self.chunk_rows, self.tests)
        key = request_key(request_id)
        chunk.fixed[i] = (key, at, step, chunk.code(prod), chunk.code(cand))
        chunk.state[i] = (flags | ALIVE, NONE)
        if spreads is not None:
            chunk.set_spreads(i, spreads)
        chunk.size = i + 1
        chunk.rows_dirty = chunk.state_dirty = True
        self.next_row += 1
        self.alive += 1
        self.queued += int(bool(flags & QUEUED))
        if self._index.put(key, row):
            self._merge()
        return row

    def find(self, request_id: str) -> int | None:
        """The alive row of ``request_id``, if any."""
        key = request_key(request_id)
        for row in self._index.candidates(key):
            if row >= self.head and self.flags(row) & ALIVE:
                chunk, i = self._at(row)
                if int(chunk.fixed[i]["key"]) == key:
                    return row
        return None

    def get(self, row: int) -> Row:
        chunk, i = self._at(row)
        _, at, step, prod, cand = chunk.fixed[i].item()
        flags, truth = chunk.state[i].item()
        spreads = chunk.spreads[i].tolist() if chunk.spreads is not None else None
        return Row(
            chunk.outcome(prod),
            chunk.outcome(cand),
            at,
            step,
            flags,
            chunk.outcome(truth),
            spreads if flags & AUDIT else None,
        )

    def _compared_at(self, row: int) -> int:
        chunk, i = self._at(row)
        return int(chunk.fixed["at"][i])

    def flags(self, row: int) -> int:
        chunk, i = self._at(row)
        return int(chunk.state[i]["flags"])

    def set_flags(self, row: int, on: int = 0, off: int = 0) -> None:
        chunk, i = self._at(row)
        before = int(chunk.state[i]["flags"])
        after = (before | on) & ~off
        chunk.state[i]["flags"] = after
        chunk.state_dirty = True
        self.alive += bool(after & ALIVE) - bool(before & ALIVE)
        self.queued += bool(after & QUEUED) - bool(before & QUEUED)

    def set_truth(self, row: int, truth: Outcome) -> None:
        chunk, i = self._at(row)
        chunk.state[i]["truth"] = chunk.code(truth)
        chunk.state_dirty = True

    def close(self, row: int) -> None:
        """No label will be joined to this row any more."""
        self.set_flags(row, off=ALIVE)

    # -- in order -------------------------------------------------------------------------

    def _first(self, start: int, flag: int) -> int | None:
        """The first row from ``start`` with ``flag`` set."""
        number = start // self.chunk_rows
        if start < self.next_row and number in self._chunks and self.flags(start) & flag:
            return start  # the usual case, without scanning
        while start < self.next_row:
            chunk = self._chunks.get(number)
            if chunk is not None:
                i0 = max(start - number * self.chunk_rows, 0)
                hits = np.flatnonzero(chunk.state["flags"][i0 : chunk.size] & flag)
                if len(hits):
                    return number * self.chunk_rows + i0 + int(hits[0])
            number += 1
            start = number * self.chunk_rows
        return None

    def oldest(self) -> int | None:
        """The oldest alive row (and the head moves up to it)."""
        row = self._first(self.head, ALIVE)
        self.head = self.next_row if row is None else row
        return row

    def next_queued(self) -> int | None:
        """The first row waiting in the queue of the in-order test (the queue moves up)."""
        row = self._first(self.queue_row, QUEUED) if self.queued else None
        self.queue_row = self.next_row if row is None else row
        return row

    def expired(self, cutoff: int) -> list[int]:
        """Alive rows, oldest first, compared before ``cutoff``, up to the first alive one
        compared at or after it."""
        out: list[int] = []
        row = self.oldest()
        if row is None or self._compared_at(row) >= cutoff:
            return out
        while row is not None:
            chunk, i = self._at(row)
            alive = np.flatnonzero(chunk.state["flags"][i : chunk.size] & ALIVE)
            late = chunk.fixed["at"][i : chunk.size][alive] >= cutoff
            stop = int(np.argmax(late)) if late.any() else len(alive)
            out += [row + int(j) for j in alive[:stop]]
            if stop < len(alive):
                break
            row = self._first((chunk.number + 1) * self.chunk_rows, ALIVE)
        return out

    def clear(self, mask: int) -> None:
        """Clear ``mask`` in every row (a new canary step empties the queue and the test)."""
        for chunk in self._chunks.values():
            flags = chunk.state["flags"][: chunk.size]
            if (flags & mask).any():
                flags &= np.uint8(~mask & 0xFF)
                chunk.state_dirty = True
        if mask & QUEUED:
            self.queued = 0
            self.queue_row = self.next_row
        if mask & ALIVE:
            self.alive = 0

    def release(self) -> None:
        """Free the chunks before the head and the queue."""
        self.oldest()
        if self.queued:
            self.next_queued()
        else:
            self.queue_row = self.next_row
        first = min(self.head, self.queue_row) // self.chunk_rows
        while self._low < first:
            if self._chunks.pop(self._low, None) is not None:
                self._freed.append(self._low)
            self._low += 1

    # -- the index ------------------------------------------------------------------------

    def _alive_rows(self, rows: U32) -> npt.NDArray[np.bool_]:
        out = np.zeros(len(rows), np.bool_)
        numbers, offsets = np.divmod(rows, self.chunk_rows)
        for number in np.unique(numbers):
            chunk = self._chunks.get(int(number))
            if chunk is None:
                continue
            here = numbers == number
            out[here] = (chunk.state["flags"][offsets[here]] & ALIVE) != 0
        return out

    def _merge(self) -> None:
        keys, rows = self._index.merged(self._alive_rows(self._index.rows))
        self._index.rebuild(keys, rows)

    # -- persistence ----------------------------------------------------------------------

    def meta(self) -> dict[str, Any]:
        return {
            "tests": self.tests,
            "limit": self.limit,
            "chunk_rows": self.chunk_rows,
            "next_row": self.next_row,
            "head": self.head,
            "queue_row": self.queue_row,
            "alive": self.alive,
            "queued": self.queued,
            "chunks": sorted(self._chunks),
        }

    def records(self, everything: bool = False) -> list[tuple[str, bytes | None]]:
        """(suffix, value) of every chunk changed since ``written`` (or of all), and a
        tombstone (None) for each chunk freed since."""
        out: list[tuple[str, bytes | None]] = []
        for number in [] if everything else self._freed:
            out += [(f"{number}/rows", None), (f"{number}/state", None)]
        for number, chunk in sorted(self._chunks.items()):
            if everything or chunk.rows_dirty:
                out.append((f"{number}/rows", chunk.encode_rows()))
            if everything or chunk.state_dirty:
                out.append((f"{number}/state", chunk.encode_state()))
        return out

    def chunk_records(self) -> dict[str, bytes]:
        """Every chunk's records (suffix -> value): with ``meta``, the whole store."""
        return {k: v for k, v in self.records(everything=True) if v is not None}

    def written(self) -> None:
        """What ``records`` returned is committed."""
        self._freed = []
        for chunk in self._chunks.values():
            chunk.rows_dirty = chunk.state_dirty = False

    def keys(self) -> list[str]:
        """The suffix of every record this store has (to tombstone when it ends)."""
        return [f"{n}/{part}" for n in (*self._freed, *self._chunks) for part in ("rows", "state")]

    @classmethod
    def restore(cls, meta: Mapping[str, Any], records: Mapping[str, bytes]) -> PendingStore:
        """The store ``meta`` describes, from its chunk records; ValueError if one is
        missing or does not agree with it."""
        store = cls(int(meta["tests"]), int(meta["limit"]), int(meta["chunk_rows"]))
        store.next_row, store.head = int(meta["next_row"]), int(meta["head"])
        store.queue_row = int(meta["queue_row"])
        store._low = min(meta["chunks"], default=store.next_row // store.chunk_rows)
        keys: list[U64] = []
        rows: list[U32] = []
        for number in meta["chunks"]:
            rows_rec, state_rec = records.get(f"{number}/rows"), records.get(f"{number}/state")
            if rows_rec is None or state_rec is None:
                raise ValueError(f"pending chunk {number} missing")
            chunk = store._chunks[number] = _Chunk(number, store.chunk_rows, store.tests)
            chunk.decode(rows_rec, state_rec)
            flags = chunk.state["flags"][: chunk.size]
            store.alive += int(np.count_nonzero(flags & ALIVE))
            store.queued += int(np.count_nonzero(flags & QUEUED))
            live = np.flatnonzero(flags & ALIVE)
            keys.append(chunk.fixed["key"][live])
            rows.append((live + number * store.chunk_rows).astype(np.uint32))
        if (store.alive, store.queued) != (meta["alive"], meta["queued"]):
            raise ValueError("pending chunks do not add up to the snapshot's counts")
        store._index.rebuild(
            np.concatenate([np.empty(0, np.uint64), *keys]),
            np.concatenate([np.empty(0, np.uint32), *rows]),
        )
        return store

    def nbytes(self) -> int:
        """Bytes held by the rows, bet sizes and index (not the outcome tables)."""
        chunks = sum(
            c.fixed.nbytes + c.state.nbytes + (c.spreads.nbytes if c.spreads is not None else 0)
            for c in self._chunks.values()
        )
        return chunks + self._index.keys.nbytes + self._index.rows.nbytes
