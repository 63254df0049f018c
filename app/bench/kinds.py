"""The bench's other model kinds: a 3-class classifier (one float32 input of 4 columns,
ZipMap output) and a classifier on an 8x8 float32 tensor (the general input path), trained
at start (``app.training.model_kinds``) and published into a temporary model store as
``rollout deployments create`` would; their fixed routing tables; their generated requests.

Each kind's backlog goes to a topic of its own (``bench.requests.<kind>``, 6 partitions like
``inference.requests``), so a drain that runs past its backlog on one partition reads
nothing of another line's.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.adapters.model_store import ModelStore
from app.adapters.publishing import create
from app.bench.report import MULTI_CLASS, TENSOR
from app.bench.setup import fixed_table
from app.core.events import Features, InferenceRequest, Mode
from app.core.routes import RoutingTable
from app.harness.traffic import SentRequest
from app.training import model_kinds

# n requests, their ids prefixed by run_id
MakeRequests = Callable[[int, str], list[SentRequest]]


@dataclass(frozen=True)
class Kind:
    line: str  # the report's line
    deployment: str
    topic: str  # where its backlog is written
    make: MakeRequests
    table: RoutingTable  # production only


def _requests(deployment: str, rows: Sequence[Features], run_id: str) -> list[SentRequest]:
    return [
        SentRequest(
            InferenceRequest(
                request_id=f"{run_id}-{i}",
                deployment=deployment,
                features=row,
                entity_key=None,
                sent_at=None,
            ),
            f"{deployment}-{i % 5000}".encode(),
        )
        for i, row in enumerate(rows)
    ]


def iris_requests(deployment: str) -> MakeRequests:
    """Features as a list in the model's order (4 numbers, 3 decimals)."""

    def make(n: int, run_id: str) -> list[SentRequest]:
        x, _ = model_kinds.iris_requests(n, seed=3)
        return _requests(deployment, np.round(x.astype(np.float64), 3).tolist(), run_id)

    return make


def digits_requests(deployment: str) -> MakeRequests:
    """``{"image": 8 rows of 8 numbers}`` (2 decimals)."""

    def make(n: int, run_id: str) -> list[SentRequest]:
        images, _ = model_kinds.digits_requests(n, seed=3)
        rows = np.round(images.astype(np.float64), 2).tolist()
        return _requests(deployment, [{"image": image} for image in rows], run_id)

    return make


def kinds() -> list[Kind]:
    """Train both models, publish each as version 1 of its deployment in a temporary store,
    and load them (the sessions stay in memory once the store is gone)."""
    with tempfile.TemporaryDirectory(prefix="rollout-bench-kinds-") as tmp:
        root = Path(tmp)
        store = ModelStore(root / "store")
        found = []
        for line, name, build, make in (
            (MULTI_CLASS, "iris", model_kinds.iris_like, iris_requests),
            (TENSOR, "digits", model_kinds.digits, digits_requests),
        ):
            deployment = f"bench-{name}"
            create(store, deployment, build(root / "onnx", name).path)
            table = fixed_table(store, Mode.MANUAL, deployment)
            found.append(Kind(line, deployment, f"bench.requests.{name}", make(deployment), table))
        return found
