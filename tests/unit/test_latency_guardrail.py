"""The latency guardrail's paired test compares the models' CPU time, not the host's stalls.

A request's two model calls run one after the other on the worker's scoring thread. On a busy
host the scheduler preempts some calls: their wall time grows by milliseconds, whichever arm
they belong to, while the CPU time the model spent stays what it was. The guardrail's
"within ``ratio`` x production's (+slack) on 99% of paired requests" is judged on the CPU
times when both arms report them (``ArmResult.cpu_ms``), on the wall times otherwise.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from app.adapters.model_store import LoadedModel, ModelStore
from app.core.analysis import RolloutAnalysis
from app.core.arm_stats import latency_exceeds
from app.core.events import (
    ArmResult,
    Comparison,
    Mode,
    ModelOutput,
    ModelRef,
    Role,
    SourceOffset,
)
from app.core.manifest import Signature
from app.core.model_calls import run_model
from app.core.tensors import InputBatch
from app.core.topics import Topic


def arm(version: str, wall: float | None, cpu: float | None) -> ArmResult:
    return ArmResult(
        version=version,
        sha256=version * 64,
        output=ModelOutput(label="legit", scores=[0.7, 0.3]),
        latency_ms=wall,
        cpu_ms=cpu,
    )


@pytest.mark.parametrize(
    ("prod", "cand", "exceeds"),
    [
        # (wall, cpu) of each arm; ratio 2, slack 1 ms
        ((0.1, 0.1), (0.15, 0.15), False),
        ((0.1, 0.1), (9.0, 0.1), False),  # the candidate's call was preempted: CPU says equal
        ((0.1, 0.1), (3.5, 3.4), True),  # really slower: both clocks say so
        ((0.1, 0.1), (0.3, 1.5), True),  # CPU decides even when the wall looks fine
        ((0.1, None), (9.0, 0.1), True),  # one arm without CPU time: the wall times decide
        ((0.1, 0.1), (9.0, None), True),
        ((0.1, None), (0.15, None), False),  # an older worker's record: walls, as before
        ((None, None), (0.15, 0.15), None),  # a failed arm: no latency evidence
        ((0.1, 0.1), (0.15, float("nan")), None),  # not a number: no evidence
    ],
)
def test_the_cpu_times_decide_when_both_arms_have_them(
    prod: tuple[float | None, float | None],
    cand: tuple[float | None, float | None],
    exceeds: bool | None,
) -> None:
    assert latency_exceeds(arm("1", *prod), arm("2", *cand), 2.0, 1.0) is exceeds


def analysis() -> RolloutAnalysis:
    return RolloutAnalysis(
        deployment="fraud",
        candidate="2",
        start_epoch=1,
        alpha=0.05,
        margin=0.02,
        disagreement_ceiling=0.2,
        error_ceiling=0.05,
        latency_ratio_limit=2.0,
        latency_slack_ms=1.0,
    )


def fed(pairs: int, stalls: float, cand_cpu: float, with_cpu: bool, seed: int = 7) -> bool:
    """Whether ``pairs`` comparisons show the latency guardrail met, when ``stalls`` of the
    calls (either arm, at random) are preempted for 5-20 ms of wall time."""
    rng = random.Random(seed)
    a = analysis()
    for i in range(pairs):
        walls = [0.1, cand_cpu]
        for k in (0, 1):
            if rng.random() < stalls:
                walls[k] += rng.uniform(5.0, 20.0)
        c = Comparison(
            request_id=f"r{i}",
            deployment="fraud",
            mode=Mode.SHADOW,
            epoch=1,
            source=SourceOffset(topic=Topic.REQUESTS, partition=0, offset=i),
            served_by=Role.PRODUCTION,
            production=arm("1", walls[0], 0.1 if with_cpu else None),
            candidate=arm("2", walls[1], cand_cpu if with_cpu else None),
            agree=True,
            score_delta=0.0,
        )
        assert a.add_comparison(c)
    return a.latency_under.rejected


@pytest.mark.parametrize(
    ("stalls", "cand_cpu", "with_cpu", "shown"),
    [
        (0.0, 0.1, True, True),  # a quiet host: shown either way
        (0.0, 0.1, False, True),
        (0.03, 0.1, True, True),  # 3% of calls stalled: the CPU times still show it
        (0.03, 0.1, False, False),  # ... the wall times never can (3% > the 1% tail)
        (0.0, 3.0, True, False),  # a model 30x slower is never shown within 2x
        (0.03, 3.0, True, False),
    ],
)
def test_stalls_of_the_host_do_not_hold_an_equal_candidate(
    stalls: float, cand_cpu: float, with_cpu: bool, shown: bool
) -> None:
    assert fed(1500, stalls, cand_cpu, with_cpu) is shown


@dataclass
class Waiting:
    """The fraud model, whose every call first waits 20 ms without computing, as a call the
    scheduler preempted does."""

    inner: LoadedModel

    @property
    def ref(self) -> ModelRef:
        return self.inner.ref

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.inner.feature_names

    @property
    def signature(self) -> Signature:
        return self.inner.signature

    def predict(self, x: InputBatch) -> tuple[list[str] | None, np.ndarray]:
        time.sleep(0.02)
        return self.inner.predict(x)


def test_a_model_call_reports_its_cpu_time_apart_from_its_wall_time() -> None:
    store = ModelStore(Path("models"))
    model = store.load(store.ref("fraud", "1"))
    rows = np.zeros((4, len(model.feature_names)), dtype=np.float32)
    plain = run_model(model, rows, [0, 1, 2, 3])
    waited = run_model(Waiting(model), rows, [0, 1, 2, 3])
    assert plain.encoded == waited.encoded and plain.error is waited.error is None
    assert waited.latency_ms >= 20.0 / 4  # per row
    assert waited.cpu_ms < 1.0  # the wait is not the model's CPU time
    assert 0.0 < plain.cpu_ms <= plain.latency_ms * 1.5 + 0.05
