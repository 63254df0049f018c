"""One model call over a batch's rows: its outputs as the wire has them, per-row time, error.

``run_model`` scores the chosen rows of a batch's input in one call of a ``Scorer``; when the
call fails it isolates the failing rows one by one, so that one bad row costs only itself.
An ``ArmRun`` is what the call gave, column by column: the labels and the scores (or a
regressor's values) of the rows it scored, each row's output already as JSON (encoded for
the whole call at once: no dict per row on the hot path; ``output`` builds one on demand),
the time and CPU time per row, the last error, the rows tried, and the OIP datatype of its
values.

No Kafka here; the clocks read are ``time.perf_counter`` for the call's duration (what a
request waited) and ``time.thread_time`` for the CPU time the call spent computing.
onnxruntime runs a session with one intra-op thread on the calling thread, so that CPU time
is the model's own cost: a stall of the host (the scheduler running another process) is in
the first and not in the second.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from app.core.json_templates import HOLE
from app.core.manifest import OIP_DATATYPES
from app.core.routes import Scorer
from app.core.tensors import InputBatch, select

# A model's output for one row, as the wire has it: {"label": str, "scores": [float, ...]}.
Output = dict[str, Any]


@dataclass(slots=True)
class ArmRun:
    """One model's outputs over the rows it scored (indices into the deployment's rows): row
    ``i``'s output is at ``position[i]`` of ``labels`` (a classifier's; None for a
    regressor) and of ``values`` (its scores, or a regressor's values; one row each), and is
    ``encoded[position[i]]`` on the wire."""

    position: dict[int, int]
    labels: list[str] | None
    values: np.ndarray
    encoded: list[bytes]
    latency_ms: float
    error: str | None
    rows: int = 0  # rows the call scored (or tried to)
    datatype: str = "FP32"  # the OIP type of its values (an OIP request's prediction says it)
    cpu_ms: float = 0.0  # the call's CPU time on this thread, per row

    def output(self, i: int) -> Output | None:
        """Row ``i``'s output (``{"label", "scores", "values"}``), or None: none for it."""
        n = self.position.get(i)
        if n is None:
            return None
        row = self.values[n].tolist()
        if self.labels is None:
            return {"label": None, "scores": None, "values": row}
        return {"label": self.labels[n], "scores": row, "values": None}

    def merged(self, other: ArmRun) -> ArmRun:
        """This call's outputs and ``other``'s (the same model over other rows) as one; the
        times, error, rows and datatype stay this call's."""
        if not other.position:
            return self
        if not self.position:
            return ArmRun(
                other.position,
                other.labels,
                other.values,
                other.encoded,
                self.latency_ms,
                self.error,
                self.rows,
                self.datatype,
                self.cpu_ms,
            )
        runs = [self, other]
        position = dict(self.position)
        offset = len(self.encoded)
        position.update((i, offset + n) for i, n in other.position.items())
        labels = None if runs[0].labels is None else [x for r in runs for x in r.labels or ()]
        return ArmRun(
            position,
            labels,
            np.concatenate([r.values for r in runs]),
            [*self.encoded, *other.encoded],
            self.latency_ms,
            self.error,
            self.rows,
            self.datatype,
            self.cpu_ms,
        )


def no_outputs(
    latency_ms: float = 0.0, error: str | None = None, rows: int = 0, cpu_ms: float = 0.0
) -> ArmRun:
    return ArmRun({}, None, np.zeros((0, 0)), [], latency_ms, error, rows, cpu_ms=cpu_ms)


def scored(
    indices: list[int],
    labels: list[str] | None,
    values: np.ndarray,
    latency_ms: float,
    error: str | None = None,
    rows: int | None = None,
    cpu_ms: float = 0.0,
) -> ArmRun:
    """The run whose row ``indices[n]`` got ``labels[n]`` (None: a regressor) and
    ``values[n]``."""
    return ArmRun(
        {i: n for n, i in enumerate(indices)},
        labels,
        values,
        encode_outputs(labels, values),
        latency_ms,
        error,
        len(indices) if rows is None else rows,
        _datatype(values),
        cpu_ms,
    )


def _output_format(kind: dict[str, Any]) -> bytes:
    """A row's output as JSON, ``%s`` where its list's numbers go (without brackets)."""
    before, after = orjson.dumps(kind).replace(b"%", b"%%").split(orjson.dumps(HOLE))
    return before + b"[%s]" + after


_VALUES = _output_format({"label": None, "scores": None, "values": HOLE})


def encode_outputs(labels: list[str] | None, values: np.ndarray) -> list[bytes]:
    """Each row's output as ``orjson.dumps`` of ``{"label", "scores", "values"}`` gives it,
    the rows' numbers encoded in one call (floats as float64, as ``tolist`` gives them; a
    list of numbers holds no ``],[``)."""
    if len(values) == 0:
        return []
    if values.dtype.kind == "f":
        whole = orjson.dumps(values.astype(np.float64), option=orjson.OPT_SERIALIZE_NUMPY)
    else:  # whatever else a graph gives, as a list gives it
        whole = orjson.dumps(values.tolist())
    numbers = whole[2:-2].split(b"],[")
    if labels is None:
        return [_VALUES % n for n in numbers]
    formats = {
        label: _output_format({"label": label, "scores": HOLE, "values": None})
        for label in set(labels)
    }
    return [formats[label] % n for label, n in zip(labels, numbers, strict=True)]


def run_model(scorer: Scorer, matrix: InputBatch, indices: list[int]) -> ArmRun:
    """Score rows ``indices`` of ``matrix`` in one model call; on failure, isolate the
    failing rows one by one."""
    if not indices:
        return no_outputs()
    selected = select(matrix, indices)
    started, cpu = time.perf_counter(), time.thread_time()
    try:
        labels, values = scorer.predict(selected)
    except Exception as exc:  # a model may fail on a batch; find the rows it fails on
        return _one_by_one(scorer, matrix, indices, exc)
    per_row_ms = (time.perf_counter() - started) * 1000.0 / len(indices)
    cpu_ms = (time.thread_time() - cpu) * 1000.0 / len(indices)
    return scored(indices, labels, values, per_row_ms, cpu_ms=cpu_ms)


def _datatype(values: np.ndarray) -> str:
    return OIP_DATATYPES.get(values.dtype.name, "FP64")


def _one_by_one(scorer: Scorer, matrix: InputBatch, indices: list[int], first: Exception) -> ArmRun:
    served: list[int] = []
    labels: list[str] = []
    values: list[np.ndarray] = []
    regressor = False
    error = f"{type(first).__name__}: {first}"
    started, cpu = time.perf_counter(), time.thread_time()
    for i in indices:
        try:
            row_labels, row_values = scorer.predict(select(matrix, [i]))
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            continue
        served.append(i)
        regressor = row_labels is None
        labels.extend(row_labels or ())
        values.append(row_values)
    per_row_ms = (time.perf_counter() - started) * 1000.0 / len(indices)
    cpu_ms = (time.thread_time() - cpu) * 1000.0 / len(indices)
    if not served:
        return no_outputs(per_row_ms, error, len(indices), cpu_ms)
    return scored(
        served,
        None if regressor else labels,
        np.concatenate(values),
        per_row_ms,
        error,
        len(indices),
        cpu_ms,
    )
