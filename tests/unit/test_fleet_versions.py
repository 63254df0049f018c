"""The fleet's versions are what they claim: measured qualities, picked by band, and faulty
artifacts that are faulty in the way intended (read by the same graph reader the publisher
uses)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from app.adapters.onnx_graph import GraphError, read_graph
from app.harness.fleet_tally import Bands
from app.harness.fleet_versions import (
    FEATURES,
    Draw,
    Kind,
    broken_bytes,
    held_out,
    incompatible,
    make_truth,
    model_pool,
    pick,
    quality,
    slow,
    tampered,
)


@pytest.fixture(scope="module", params=list(Kind))
def pool(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    return model_pool(make_truth(request.param, 11), 14, 11)


def _outputs(data: bytes, x: np.ndarray) -> list[np.ndarray]:  # type: ignore[type-arg]
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return [np.asarray(o) for o in session.run(None, {session.get_inputs()[0].name: x})]


def test_a_smaller_angle_gives_a_better_model_on_held_out_data(pool) -> None:  # type: ignore[no-untyped-def]
    by_angle = sorted(pool.models, key=lambda m: m.angle)
    assert by_angle[0].quality > by_angle[-1].quality + 0.1


@pytest.mark.parametrize("draw", [Draw.BETTER, Draw.EQUAL, Draw.WORSE_BEYOND, Draw.MUCH_WORSE])
def test_pick_returns_a_model_in_the_band_when_the_pool_has_one(pool, draw: Draw) -> None:  # type: ignore[no-untyped-def]
    bands = Bands(margin=0.03)
    production = pool.models[0].quality
    free = [m for i, m in enumerate(pool.models) if i not in pool.used]
    fits = [m for m in free if bands.classify(m.quality - production) == draw.value]
    chosen = pool.models[pick(pool, production, draw, bands)]
    if fits:
        assert bands.classify(chosen.quality - production) == draw.value


def test_slow_model_gives_the_same_outputs(pool) -> None:  # type: ignore[no-untyped-def]
    x, _ = held_out(pool.truth, 3)
    base = pool.models[0].onnx
    for a, b in zip(_outputs(base, x[:50]), _outputs(slow(base), x[:50]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_faulty_artifacts(pool, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(broken_bytes(1))
    with pytest.raises(GraphError):
        read_graph(broken)
    other = tmp_path / "other.onnx"
    other.write_bytes(incompatible(pool.truth, 1))
    assert read_graph(other).inputs[0].shape == (FEATURES + 1,)
    good = pool.models[0]
    assert hashlib.sha256(tampered(good.onnx)).hexdigest() != good.sha256
    x, y = held_out(pool.truth, 3)
    assert quality(pool.truth, good.onnx, x, y) == pytest.approx(good.quality, abs=0.03)
