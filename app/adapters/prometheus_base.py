"""What every metric module of Rollout builds on: its Prometheus conventions and bucket sets,
and ``BulkHistogram``, a histogram fed a whole batch at once.

Names follow Prometheus conventions: ``_total`` counters, base units (seconds, ratios 0..1);
no ``_created`` series (they would double the exposition for nothing: switched off here,
before any metric is made, as every metric module imports this one). Latency histograms take
a whole batch at once (``BulkHistogram``): per-row observations would cost the hot path a
Python call per record.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
from prometheus_client import REGISTRY, CollectorRegistry, disable_created_metrics
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

# No ``_created`` series: they would double the exposition for nothing.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Seconds: 10 µs .. 10 s, for inference per row (tens of µs) and end-to-end latency.
LATENCY_BUCKETS = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)


class BulkHistogram(Collector):
    """A Prometheus histogram fed many observations per call (numpy), by label values."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._edges = np.asarray(buckets, dtype=np.float64)
        self._series: dict[tuple[str, ...], tuple[np.ndarray, list[float]]] = {}
        self._lock = threading.Lock()  # a scrape may run on another thread
        if registry is not None:
            registry.register(self)

    def _slot(self, labels: tuple[str, ...]) -> tuple[np.ndarray, list[float]]:
        slot = self._series.get(labels)
        if slot is None:
            slot = (np.zeros(len(self._edges) + 1, dtype=np.int64), [0.0])
            self._series[labels] = slot
        return slot

    def observe_many(self, values: np.ndarray, *labels: str) -> None:
        if not len(values):
            return
        # Bucket i counts values <= edges[i]; the last slot is +Inf.
        index = np.searchsorted(self._edges, values, side="left")
        counts = np.bincount(index, minlength=len(self._edges) + 1)
        with self._lock:
            slot = self._slot(labels)
            slot[0][:] += counts
            slot[1][0] += float(values.sum())

    def observe_n(self, value: float, n: int, *labels: str) -> None:
        """``n`` observations of ``value`` (rows of one model call share its per-row time)."""
        if n <= 0:
            return
        index = int(np.searchsorted(self._edges, value, side="left"))
        with self._lock:
            slot = self._slot(labels)
            slot[0][index] += n
            slot[1][0] += value * n

    def forget(self, gone: Callable[[tuple[str, ...]], bool]) -> None:
        """Drop the series whose label values ``gone`` says are gone."""
        with self._lock:
            for labels in [k for k in self._series if gone(k)]:
                del self._series[labels]

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self._lock:
            series = [(k, c.copy(), s[0]) for k, (c, s) in self._series.items()]
        les = [f"{edge:g}" for edge in self._edges] + ["+Inf"]
        for labels, counts, total in series:
            cumulative = np.cumsum(counts).tolist()
            family.add_metric(list(labels), list(zip(les, cumulative, strict=True)), total)
        yield family

    def describe(self) -> Iterable[Metric]:
        return []
