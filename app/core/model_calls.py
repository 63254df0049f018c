"""One model call over a batch's rows: its outputs as the wire has them, per-row time, error.

``run`` scores the chosen rows of a batch's input in one call of a ``Scorer``; when the call
fails it isolates the failing rows one by one, so that one bad row costs only itself. An
``ArmRun`` is what the call gave: each row's output (``{"label", "scores", "values"}``), the
time per row, the last error, the rows tried, and the OIP datatype of its values.

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

from app.core.manifest import OIP_DATATYPES
from app.core.routes import Scorer
from app.core.tensors import InputBatch, select

# A model's output for one row, as the wire has it: {"label": str, "scores": [float, ...]}.
Output = dict[str, Any]


@dataclass(slots=True)
class ArmRun:
    """One model's outputs over the rows it scored (indices into the deployment's rows)."""

    outputs: dict[int, Output]
    latency_ms: float
    error: str | None
    rows: int = 0  # rows the call scored (or tried to)
    datatype: str = "FP32"  # the OIP type of its values (an OIP request's prediction says it)
    cpu_ms: float = 0.0  # the call's CPU time on this thread, per row


def _outputs(indices: list[int], labels: list[str] | None, values: np.ndarray) -> dict[int, Output]:
    rows = values.tolist()
    if labels is None:  # a regressor
        return {
            i: {"label": None, "scores": None, "values": row}
            for i, row in zip(indices, rows, strict=True)
        }
    return {
        i: {"label": labels[n], "scores": row, "values": None}
        for n, (i, row) in enumerate(zip(indices, rows, strict=True))
    }


def run_model(scorer: Scorer, matrix: InputBatch, indices: list[int]) -> ArmRun:
    """Score rows ``indices`` of ``matrix`` in one model call; on failure, isolate the
    failing rows one by one."""
    if not indices:
        return ArmRun({}, 0.0, None)
    selected = select(matrix, indices)
    started, cpu = time.perf_counter(), time.thread_time()
    try:
        labels, values = scorer.predict(selected)
    except Exception as exc:  # a model may fail on a batch; find the rows it fails on
        return _one_by_one(scorer, matrix, indices, exc)
    per_row_ms = (time.perf_counter() - started) * 1000.0 / len(indices)
    cpu_ms = (time.thread_time() - cpu) * 1000.0 / len(indices)
    return ArmRun(
        _outputs(indices, labels, values),
        per_row_ms,
        None,
        len(indices),
        _datatype(values),
        cpu_ms,
    )


def _datatype(values: np.ndarray) -> str:
    return OIP_DATATYPES.get(values.dtype.name, "FP64")


def _one_by_one(scorer: Scorer, matrix: InputBatch, indices: list[int], first: Exception) -> ArmRun:
    outputs: dict[int, Output] = {}
    error = f"{type(first).__name__}: {first}"
    datatype = "FP32"
    started, cpu = time.perf_counter(), time.thread_time()
    for i in indices:
        try:
            labels, values = scorer.predict(select(matrix, [i]))
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            continue
        outputs.update(_outputs([i], labels, values))
        datatype = _datatype(values)
    per_row_ms = (time.perf_counter() - started) * 1000.0 / len(indices)
    cpu_ms = (time.thread_time() - cpu) * 1000.0 / len(indices)
    return ArmRun(outputs, per_row_ms, error, len(indices), datatype, cpu_ms)
