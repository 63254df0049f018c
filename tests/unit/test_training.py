"""The fraud models: ONNX parity with scikit-learn, bit-for-bit reproducibility, and the
drift story they exist to tell (v2 beats v1 on current traffic, v3 is clearly worse)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.pipeline import Pipeline

from app.adapters.model_store import LoadedModel, ModelStore
from app.training import stream, train

MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.fixture(scope="module")
def pipelines() -> dict[str, Pipeline]:
    return {recipe.version: train.fit(recipe)[0] for recipe in train.RECIPES}


@pytest.fixture(scope="module")
def loaded() -> dict[str, LoadedModel]:
    store = ModelStore(MODELS)
    return {v: store.load(store.ref("fraud", v)) for v in store.versions("fraud")}


@pytest.fixture(scope="module")
def current() -> stream.Transactions:
    return stream.current_traffic(5000, seed=424242)  # not the manifests' evaluation set


def fraud_probability(model: LoadedModel, data: stream.Transactions) -> np.ndarray:
    _, scores = model.predict(data.features)
    return scores[:, model.labels.index("fraud")].astype(np.float64)


def accuracy(model: LoadedModel, data: stream.Transactions) -> float:
    labels, _ = model.predict(data.features)
    truth = [stream.LABELS[y] for y in data.labels.tolist()]
    return float(np.mean([a == b for a, b in zip(labels, truth, strict=True)]))


def log_loss(model: LoadedModel, data: stream.Transactions) -> float:
    return train.metrics(data.labels, fraud_probability(model, data))["log_loss"]


def auc(model: LoadedModel, data: stream.Transactions) -> float:
    return train.metrics(data.labels, fraud_probability(model, data))["auc"]


@pytest.mark.parametrize("version", ["1", "2", "3"])
def test_onnx_matches_sklearn(
    version: str,
    pipelines: dict[str, Pipeline],
    loaded: dict[str, LoadedModel],
    current: stream.Transactions,
) -> None:
    expected = pipelines[version].predict_proba(current.features)
    labels, scores = loaded[version].predict(current.features)
    np.testing.assert_allclose(scores, expected, atol=1e-5, rtol=0)
    clear = np.abs(expected[:, 1] - 0.5) > 1e-5
    sk_labels = pipelines[version].predict(current.features)
    assert clear.mean() > 0.99
    assert [label for label, c in zip(labels, clear, strict=True) if c] == [
        stream.LABELS[y] for y, c in zip(sk_labels.tolist(), clear, strict=True) if c
    ]


def test_training_is_reproducible_bit_for_bit(tmp_path: Path) -> None:
    first = train.train_all(tmp_path / "a")
    second = train.train_all(tmp_path / "b")
    committed = {v: ModelStore(MODELS).manifest("fraud", v).sha256 for v in ("1", "2", "3")}
    assert {v.version: v.sha256 for v in first.versions} == committed
    assert {v.version: v.sha256 for v in second.versions} == committed
    for name in ("deployment.yaml", "1/model.json", "2/model.json", "3/model.json"):
        committed_bytes = (MODELS / "fraud" / name).read_bytes()
        assert (tmp_path / "a" / "fraud" / name).read_bytes() == committed_bytes
        assert (tmp_path / "b" / "fraud" / name).read_bytes() == committed_bytes
    again = train.train_all(tmp_path / "a")
    assert not again.spec_changed
    assert not any(v.changed for v in again.versions)


def test_v2_beats_v1_on_current_traffic(
    loaded: dict[str, LoadedModel], current: stream.Transactions
) -> None:
    v1, v2 = loaded["1"], loaded["2"]
    assert auc(v2, current) > auc(v1, current) + 0.15
    assert accuracy(v2, current) > accuracy(v1, current) + 0.02
    assert log_loss(v2, current) < log_loss(v1, current) - 0.1


def test_v3_is_clearly_worse_than_v1_and_v2(
    loaded: dict[str, LoadedModel], current: stream.Transactions
) -> None:
    v1, v2, v3 = loaded["1"], loaded["2"], loaded["3"]
    for better in (v1, v2):
        assert accuracy(v3, current) < accuracy(better, current) - 0.2
        assert log_loss(v3, current) > log_loss(better, current) + 0.2
    assert auc(v3, current) < auc(v2, current) - 0.2
    labels1, _ = v1.predict(current.features)
    labels3, _ = v3.predict(current.features)
    disagreement = np.mean([a != b for a, b in zip(labels1, labels3, strict=True)])
    assert disagreement > 0.3  # far past the default canary guardrail (0.2)


def test_drift_makes_v1_worse_on_recent_than_on_old_data(loaded: dict[str, LoadedModel]) -> None:
    v1 = loaded["1"]
    old = stream.window(stream.OLD_DAYS, 5000, seed=7)
    recent = stream.current_traffic(5000, seed=8)
    assert auc(v1, old) > auc(v1, recent) + 0.2
    assert log_loss(v1, old) < log_loss(v1, recent) - 0.2


def test_stream_is_deterministic_and_shaped() -> None:
    a = stream.generate(1000, start_day=80, seed=3, days=10)
    b = stream.generate(1000, start_day=80, seed=3, days=10)
    c = stream.generate(1000, start_day=80, seed=4, days=10)
    assert a.features.dtype == np.float32
    assert a.features.shape == (1000, len(stream.FEATURE_NAMES))
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.card_ids == b.card_ids
    assert not np.array_equal(a.features, c.features)
    assert a.day.min() == 80 and a.day.max() == 89
    assert 0.05 <= a.labels.mean() <= 0.2
    assert np.all(np.isfinite(a.features))
    row = a.feature_dicts()[0]
    assert list(row) == list(stream.FEATURE_NAMES)
