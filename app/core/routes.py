"""What a worker routes by: each deployment's state with its loaded models.

A ``DeploymentRoute`` is a deployment's state together with the models that serve it
(``Scorer``s: what the data plane needs of a loaded model), keyed by deployment in a
``RoutingTable``; ``RoutedRow`` is one valid request of a batch as routed (its record,
parsed request, entity key and assignment). The data plane (``app.core.scoring``) scores by
them; the worker's follower (``app.worker.follower``) keeps the table in step with the states.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from app.core.events import DeploymentState, ModelRef
from app.core.manifest import RegressionSpec, Signature
from app.core.requests import ParsedRequest, RawRecord
from app.core.routing import Assignment
from app.core.tensors import InputBatch


class Scorer(Protocol):
    """What the data plane needs of a loaded model (``app.adapters.model_store.LoadedModel``):
    ``predict`` gives a classifier's labels and ``(n, k)`` scores, or a regressor's ``None``
    and ``(n, t)`` values."""

    @property
    def ref(self) -> ModelRef: ...
    @property
    def feature_names(self) -> tuple[str, ...]: ...
    @property
    def signature(self) -> Signature: ...
    def predict(self, x: InputBatch) -> tuple[list[str] | None, np.ndarray]: ...


@dataclass(frozen=True)
class DeploymentRoute:
    """A deployment's state together with its loaded models: what a worker routes by.
    ``regression``: how a regressor's two outputs are compared (``deployment.yaml``)."""

    state: DeploymentState
    production: Scorer
    candidate: Scorer | None = None
    # The previous production while a promotion is watched (``state.watch``): it scores the
    # audit sample beside production (``watch: true`` comparisons).
    previous: Scorer | None = None
    regression: RegressionSpec | None = None


RoutingTable = Mapping[str, DeploymentRoute]


@dataclass(slots=True)
class RoutedRow:
    """One valid request of a batch, as routed (``app.core.routing.assign``)."""

    record: RawRecord
    request: ParsedRequest
    entity: str
    assignment: Assignment
