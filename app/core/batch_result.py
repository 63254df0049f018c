"""What scoring a batch yields: the records to publish, on which topics, and the counts.

``Outgoing`` is one record to publish (topic, key, value, headers) on the data plane's
``Topics``; ``BatchResult`` holds a batch's outgoing records and what the metrics count of
it; ``BatchScorer`` is what the worker's loop calls on each batch (``app.core.scoring``
builds it). ``SHED_HEADERS`` marks a ``ShedReport`` among the comparisons.

Pure: no I/O.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from app.core.requests import RawRecord
from app.core.topics import Topic, TopicNames


class Outgoing(NamedTuple):  # a tuple: built for every output record
    topic: str
    key: bytes | None
    value: bytes
    headers: Sequence[tuple[str, bytes]] = ()


# ``Outgoing(...)`` runs a Python-level ``__new__``; the data plane, which makes one or two per
# request, makes them as ``outgoing((topic, key, value, headers))``: the same tuple, faster.
outgoing: Callable[[tuple[str, bytes | None, bytes, Sequence[tuple[str, bytes]]]], Outgoing] = (
    functools.partial(tuple.__new__, Outgoing)
)


@dataclass(frozen=True)
class Topics:
    """The cluster names of the data plane's topics (``Topics.of(settings.topics)``)."""

    requests: str
    predictions: str
    comparisons: str
    dlq: str

    @classmethod
    def of(cls, names: TopicNames) -> Topics:
        return cls(
            requests=names.name(Topic.REQUESTS),
            predictions=names.name(Topic.PREDICTIONS),
            comparisons=names.name(Topic.COMPARISONS),
            dlq=names.name(Topic.DLQ),
        )


# Unprefixed: for pure uses (tests, the simulation); a worker uses its settings' names.
DEFAULT_TOPICS = Topics.of(TopicNames())


@dataclass
class BatchResult:
    outgoing: list[Outgoing] = field(default_factory=list)
    predictions: int = 0
    comparisons: int = 0
    dead_letters: int = 0
    candidate_errors: int = 0
    # Per deployment: requests shadow mode sampled for comparison, and how many were shed.
    shadow_sampled: dict[str, int] = field(default_factory=dict)
    shadow_shed: dict[str, int] = field(default_factory=dict)
    # For metrics: requests by deployment (those naming a known one), predictions by
    # (deployment, version, role), dead letters by (deployment or "", code), and each model
    # call as (deployment, version, role, rows, per-row ms).
    requests: dict[str, int] = field(default_factory=dict)
    served: dict[tuple[str, str, str], int] = field(default_factory=dict)
    rejected: dict[tuple[str, str], int] = field(default_factory=dict)
    model_calls: list[tuple[str, str, str, int, float]] = field(default_factory=list)
    # ShedReports (published with SHED_HEADERS among the comparisons) for the deployments
    # whose shadow scoring was shed.
    shed_reports: list[Outgoing] = field(default_factory=list)


# Marks a ShedReport among the Comparisons of inference.comparisons.
SHED_HEADERS = [("kind", b"shed")]

# What a worker's loop calls on each batch: the raw records and the worker's lag (records
# behind the log end) in, what to publish out. ``table_scorer`` builds the production one.
BatchScorer = Callable[[Sequence[RawRecord], int], BatchResult]
