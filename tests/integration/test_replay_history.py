"""The replay gate's reading kept between gates (``controller.replay_history``) gives what a
gate reading the topics back gives: the deployment's last N requests of the shared requests
topic, and its labels since a time, also after more traffic, and after its labels were
pushed out of what is kept."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from app.controller import replay_gate
from app.controller.replay_gate import feedback_since, recent_requests
from app.controller.replay_history import ReplayHistory
from app.core.events import Feedback
from app.core.requests import RawRecord
from app.harness.traffic import make_requests, send, send_feedback
from app.settings import Settings


def ids(records: list[RawRecord]) -> list[tuple[int, int]]:
    return [(r.partition, r.offset) for r in records]


def labels(feedback: list[Feedback]) -> set[str]:
    return {f.request_id for f in feedback}


async def traffic(producer: AIOKafkaProducer, deployments: list[str], n: int, seed: int) -> int:
    """``n`` requests to each of ``deployments`` (interleaved on the shared topic) and their
    labels; the first request's timestamp bound: now."""
    sent = [
        r
        for i, name in enumerate(deployments)
        for r in make_requests(n, seed=seed + i, run_id=f"{name}-{seed}", deployment=name)
    ]
    sent.sort(key=lambda r: r.request.request_id[-4:])  # mix the deployments' records
    await send(producer, sent)
    await send_feedback(producer, sent, audit_rate=1.0)
    await producer.flush()
    return len(sent)


async def test_kept_reading_gives_what_reading_back_gives(
    settings_: Settings, producer: AIOKafkaProducer, monkeypatch: pytest.MonkeyPatch
) -> None:
    read_back: list[str] = []  # the history's own reads back, by what they read
    for name in ("recent_requests", "feedback_records"):
        original = getattr(replay_gate, name)

        def counted(*args: Any, _f: Any = original, _n: str = name, **kwargs: Any) -> Any:
            if "ends" in kwargs or "until" in kwargs:  # the history's, not this test's
                read_back.append(_n)
            return _f(*args, **kwargs)

        monkeypatch.setattr(replay_gate, name, counted)
    run = uuid.uuid4().hex[:6]
    a, b = f"hist-a-{run}", f"hist-b-{run}"
    history = ReplayHistory(settings_)
    try:
        await traffic(producer, [a, b], 300, seed=1)
        first = await history.requests(a, 100)  # a first gate: read back
        assert len(first) == 100
        assert ids(first) == ids(await recent_requests(settings_, a, 100))
        assert read_back == ["recent_requests"]
        assert all(a.encode() in r.value for r in first if r.value is not None)

        await traffic(producer, [a, b], 150, seed=2)  # more traffic, then a second gate
        second = await history.requests(a, 100)  # read forward: only the new records
        assert ids(second) == ids(await recent_requests(settings_, a, 100))
        assert set(ids(second)).isdisjoint(ids(first))  # the 150 newer ones are the last 100
        assert read_back == ["recent_requests"]  # forward only

        since = min(r.timestamp for r in second) - 1
        kept = await history.feedback(a, since, 100)
        direct = await feedback_since(settings_, a, since)
        assert labels(kept) == labels(direct) and len(kept) == len(direct) >= 100
        assert all(f.deployment == a for f in kept)
        assert labels(await history.feedback(a, since, 100)) == labels(kept)
        assert read_back == ["recent_requests", "feedback_records"]  # once, then kept

        # More labels than are kept for a (LABELS_PER_REQUEST a request): the oldest wanted
        # ones are pushed out, and the next gate reads them back.
        await traffic(producer, [a], 400, seed=3)
        again = await history.feedback(a, since, 100)
        assert labels(again) == labels(await feedback_since(settings_, a, since))
        assert len(again) >= 100 + 400
        assert read_back[-1] == "feedback_records" and len(read_back) == 3

        # B's first gate after A's: read back up to where the forward reading stands.
        assert ids(await history.requests(b, 50)) == ids(await recent_requests(settings_, b, 50))
    finally:
        await history.stop()
