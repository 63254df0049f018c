"""Open-loop load and its latency, measured the same way for the worker and every peer: each
request is handed to a librdkafka producer (confluent-kafka, no linger, idempotent) at a
steady rate whatever the answers do, and a ``read_committed`` librdkafka consumer reads the
outputs; a request's latency runs from the hand-over to the read of its output.

Both clients are synchronous (librdkafka runs its own threads): the load and the reader run
in threads of their own, so that the asyncio loop of the bench does not pace them.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition

from app.adapters.collector import freeze_survivors
from app.bench.breakdown import Sighting, quantile
from app.bench.report import Latency
from app.core.events import encode
from app.harness.traffic import make_requests
from app.settings import Settings


@dataclass
class Observed:
    """One open-loop run: per request id, when it was handed over and read (wall ms) and
    where it was written."""

    name: str
    rate: float
    basis: str = ""  # how the rate was chosen (``report.Latency.basis``)
    half_load: bool = False
    started: float = 0.0  # wall s
    ended: float = 0.0
    sent: dict[str, float] = field(default_factory=dict)
    where: dict[str, tuple[int, int]] = field(default_factory=dict)
    seen: dict[str, float] = field(default_factory=dict)

    def latency(self) -> Latency:
        delays = sorted(self.seen[rid] - t for rid, t in self.sent.items() if rid in self.seen)
        return Latency(
            self.name,
            self.rate,
            len(self.sent),
            len(delays),
            quantile(delays, 0.5),
            quantile(delays, 0.99),
            half_load=self.half_load,
            basis=self.basis,
        )

    def sightings(self) -> list[Sighting]:
        return [
            Sighting(*self.where[rid], sent, self.seen[rid])
            for rid, sent in self.sent.items()
            if rid in self.seen and rid in self.where
        ]


class OpenLoop:
    """Requests to ``requests_topic``, outputs read from ``outputs_topic`` (every partition,
    from its end when started): a record is matched to its request by ``request_id``."""

    def __init__(self, settings: Settings, requests_topic: str, outputs_topic: str) -> None:
        servers = settings.bootstrap_servers
        self._requests_topic = requests_topic
        self._outputs_topic = outputs_topic
        self._producer = Producer(
            {"bootstrap.servers": servers, "linger.ms": 0, "enable.idempotence": True}
        )
        self._consumer = Consumer(
            {
                "bootstrap.servers": servers,
                "group.id": "rollout-bench-reader",  # never joins: partitions are assigned
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "fetch.wait.max.ms": settings.fetch_max_wait_ms,
            }
        )
        self._seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        meta = self._consumer.list_topics(self._outputs_topic, timeout=10)
        partitions = meta.topics[self._outputs_topic].partitions
        self._consumer.assign(
            [TopicPartition(self._outputs_topic, p, OFFSET_END) for p in partitions]
        )
        self._reader = threading.Thread(target=self._read, name="bench-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        # ``poll`` returns at the first message; ``consume(n, timeout)`` would wait for n
        # messages or the whole timeout (up to 50 ms added to every latency).
        while not self._stop.is_set():
            first = self._consumer.poll(0.05)
            now = time.time() * 1000
            if first is None:
                continue
            for m in [first, *self._consumer.consume(1000, timeout=0)]:
                value = m.value()
                if m.error() is None and value:
                    request_id = orjson.loads(value).get("request_id")
                    if isinstance(request_id, str):
                        self._seen.setdefault(request_id, now)

    def wait_ready(self, run_id: str, timeout_s: float = 90.0, alive: Any = None) -> None:
        """Send a probe request a second until its output is read (the system is serving)."""
        probe = make_requests(1, seed=9, run_id=f"{run_id}-probe")[0]
        deadline = time.monotonic() + timeout_s
        while probe.request.request_id not in self._seen:
            if time.monotonic() > deadline or (alive is not None and not alive()):
                raise TimeoutError(f"no answer to a probe on {self._outputs_topic}")
            self._producer.produce(self._requests_topic, encode(probe.request), probe.key)
            self._producer.flush(5)
            time.sleep(1.0)

    def run(self, name: str, rate: float, seconds: float, run_id: str) -> Observed:
        """``rate`` requests a second for ``seconds``; waits (up to 30 s) for their outputs."""
        requests = [
            (r.request.request_id, r.key, encode(r.request))
            for r in make_requests(max(int(rate * seconds), 1), seed=5, run_id=run_id)
        ]
        # The bench keeps every earlier line's observations (gigabytes by the ramps' end):
        # out of the collector's reach, so that no full collection over them stalls this
        # process's load and reader threads mid-line.
        freeze_survivors()
        seen = Observed(name, rate, started=time.time())

        def delivered(request_id: str) -> Any:
            def callback(err: Any, msg: Any) -> None:
                if err is None:
                    seen.where[request_id] = (msg.partition(), msg.offset())

            return callback

        started, i = time.monotonic(), 0
        while i < len(requests):  # each tick sends what is due by now
            due = min(int((time.monotonic() - started) * rate) + 1, len(requests))
            for request_id, key, value in requests[i:due]:
                seen.sent[request_id] = time.time() * 1000
                self._producer.produce(
                    self._requests_topic, value, key, on_delivery=delivered(request_id)
                )
            i = max(i, due)
            self._producer.poll(0)
            time.sleep(0.0005)
        self._producer.flush(10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(rid not in self._seen for rid in seen.sent):
            time.sleep(0.1)
        seen.ended = time.time()
        seen.seen = {rid: self._seen[rid] for rid in seen.sent if rid in self._seen}
        return seen

    def close(self) -> None:
        self._stop.set()
        if self._reader is not None:
            self._reader.join(timeout=5)
        self._consumer.close()
        self._producer.flush(5)
