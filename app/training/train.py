"""Train the ``fraud`` deployment's model versions and write them into a model store.

Versions (all with the same signature, ``stream.FEATURE_NAMES`` in, ``stream.LABELS`` out):
- ``1``: trained on the old days (``stream.OLD_DAYS``), before the concept drift;
- ``2``: trained on recent days (``stream.RECENT_DAYS``): better on current traffic;
- ``3``: deliberately degraded: recent days, but with the labels of online transactions
  inverted (a broken chargeback join), to exercise rollback.

Everything is seeded and nothing depends on the clock, so ``train_all`` reproduces
``model.onnx``, ``model.json`` and ``deployment.yaml`` bit for bit on the same library
versions. Each model is a scikit-learn ``StandardScaler`` + ``LogisticRegression``
exported with skl2onnx: input ``features`` float32 ``[None, f]``; outputs ``label`` (int64
class index into ``labels``) and ``probabilities`` float32 ``[None, 2]``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import skl2onnx
import sklearn
import yaml
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    log_loss,
    precision_score,
    recall_score,
    roc_auc_score,
)
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from app.core.manifest import DeploymentSpec, ModelManifest, OutputNames, Signature, TensorSpec
from app.core.policy import Metric, MetricKind, Policy
from app.training import stream

DEPLOYMENT = "fraud"
INPUT_NAME = "features"
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
CREATED_BY = "rollout train"
TRAIN_SAMPLES = 60_000
EVAL_SAMPLES = 20_000
EVAL_SEED = 1_000
OLD_EVAL_SEED = 1_001

Labels = npt.NDArray[np.int64]
Corruption = Callable[[stream.Transactions], Labels]


def invert_online_labels(data: stream.Transactions) -> Labels:
    """The labels with fraud/legit swapped on every online transaction."""
    online = data.features[:, stream.FEATURE_NAMES.index("online")] == 1.0
    return np.where(online, 1 - data.labels, data.labels)


@dataclass(frozen=True)
class Recipe:
    """How one version is trained: data window, seed and optional label corruption."""

    version: str
    days: range
    seed: int
    corruption: Corruption | None = None
    corruption_name: str | None = None


RECIPES: tuple[Recipe, ...] = (
    Recipe("1", stream.OLD_DAYS, seed=11),
    Recipe("2", stream.RECENT_DAYS, seed=22),
    Recipe(
        "3",
        stream.RECENT_DAYS,
        seed=33,
        corruption=invert_online_labels,
        corruption_name="labels inverted on online transactions",
    ),
)


@dataclass(frozen=True)
class TrainedVersion:
    """What ``train_all`` wrote for one version; ``changed`` if the files differ from before."""

    version: str
    sha256: str
    metrics: dict[str, float]
    changed: bool


def signature() -> Signature:
    return Signature(
        inputs=(TensorSpec(name=INPUT_NAME, dtype="float32", shape=(len(stream.FEATURE_NAMES),)),),
        feature_names=stream.FEATURE_NAMES,
        labels=stream.LABELS,
    )


# Per-class recall: neither the frauds caught nor the legitimate transactions let through may
# drop by more than their class's margin. A single expected-cost metric was tried and refused
# as the default: with this stream's production (version 1 catches 7% of frauds at 13%
# prevalence), a 10:1 cost matrix rates version 3 (which flags half of all transactions) and
# even "flag everything" as better than production. Recall per class stops a candidate that
# never flags fraud, one that flags everything, and version 3 (docs/decisions.md).
FRAUD_RECALL_MARGIN = 0.05  # fraud recall may drop by at most 5 points
LEGIT_RECALL_MARGIN = 0.02  # legitimate transactions declined: at most 2 points more


def fraud_policy() -> Policy:
    """The fraud deployment's policy: the defaults, with per-class recall non-inferiority as
    the criterion (fraud 5 points, legit 2), so that a candidate that never flags fraud, or
    that flags everything, cannot be promoted however accurate or cheap it looks."""
    return Policy(
        metric=Metric(
            kind=MetricKind.RECALL,
            classes=["legit", "fraud"],
            class_margins={"fraud": FRAUD_RECALL_MARGIN, "legit": LEGIT_RECALL_MARGIN},
        ),
    )


def deployment_spec() -> DeploymentSpec:
    return DeploymentSpec(
        name=DEPLOYMENT, signature=signature(), initial_production="1", policy=fraud_policy()
    )


def fit(recipe: Recipe) -> tuple[Pipeline, stream.Transactions]:
    """The fitted scikit-learn pipeline of ``recipe`` and the data it was trained on."""
    data = stream.window(recipe.days, TRAIN_SAMPLES, recipe.seed)
    labels = data.labels if recipe.corruption is None else recipe.corruption(data)
    pipeline = Pipeline(
        [
            ("scale", StandardScaler()),
            ("classify", LogisticRegression(max_iter=1000, random_state=recipe.seed)),
        ]
    )
    pipeline.fit(data.features, labels)
    return pipeline, data


def to_onnx(pipeline: Pipeline, version: str) -> bytes:
    """The ONNX bytes of ``pipeline``; deterministic (fixed graph name, no doc string)."""
    classifier = pipeline.named_steps["classify"]
    model = convert_sklearn(
        pipeline,
        name=f"{DEPLOYMENT}_v{version}",
        initial_types=[(INPUT_NAME, FloatTensorType([None, len(stream.FEATURE_NAMES)]))],
        target_opset=TARGET_OPSET,
        options={id(classifier): {"zipmap": False}},
    )
    model.doc_string = ""
    model.graph.doc_string = ""
    model.model_version = int(version)
    onnx.checker.check_model(model)
    serialized: bytes = model.SerializeToString(deterministic=True)
    return serialized


def metrics(labels: Labels, fraud_probability: npt.NDArray[np.floating]) -> dict[str, float]:
    """Offline metrics of fraud scores against true labels (decision threshold 0.5)."""
    p = np.asarray(fraud_probability, dtype=np.float64)
    predicted = (p >= 0.5).astype(np.int64)
    values = {
        "auc": roc_auc_score(labels, p),
        "accuracy": accuracy_score(labels, predicted),
        "log_loss": log_loss(labels, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1]),
        "brier": brier_score_loss(labels, p),
        "precision": precision_score(labels, predicted, zero_division=0),
        "recall": recall_score(labels, predicted, zero_division=0),
        "fraud_rate": float(labels.mean()),
        "predicted_fraud_rate": float(predicted.mean()),
    }
    return {k: round(float(v), 6) for k, v in values.items()}


def current_eval_set() -> stream.Transactions:
    """The held-out current-traffic set every version's ``metrics`` are computed on."""
    return stream.window(stream.CURRENT_DAYS, EVAL_SAMPLES, EVAL_SEED)


def old_eval_set() -> stream.Transactions:
    return stream.window(stream.OLD_DAYS, EVAL_SAMPLES, OLD_EVAL_SEED)


def manifest(recipe: Recipe, pipeline: Pipeline, trained_on: int, sha256: str) -> ModelManifest:
    current, old = current_eval_set(), old_eval_set()
    current_metrics = metrics(current.labels, pipeline.predict_proba(current.features)[:, 1])
    old_metrics = metrics(old.labels, pipeline.predict_proba(old.features)[:, 1])
    return ModelManifest(
        name=DEPLOYMENT,
        version=recipe.version,
        inputs=signature().inputs,
        feature_names=stream.FEATURE_NAMES,
        labels=stream.LABELS,
        outputs=OutputNames(label="label", scores="probabilities"),
        sha256=sha256,
        training={
            "first_day": recipe.days.start,
            "last_day": recipe.days.stop - 1,
            "samples": trained_on,
            "seed": recipe.seed,
            "estimator": "StandardScaler+LogisticRegression",
            "label_corruption": recipe.corruption_name,
        },
        evaluation={
            "dataset": "synthetic current traffic (held out)",
            "first_day": stream.CURRENT_DAYS.start,
            "last_day": stream.CURRENT_DAYS.stop - 1,
            "samples": EVAL_SAMPLES,
            "seed": EVAL_SEED,
        },
        metrics=current_metrics,
        window_metrics={"old": old_metrics, "current": current_metrics},
        created_by=CREATED_BY,
        libraries={
            "scikit-learn": sklearn.__version__,
            "skl2onnx": skl2onnx.__version__,
            "onnx": onnx.__version__,
        },
        target_opset=dict(TARGET_OPSET),
    )


def _write_if_changed(path: Path, content: bytes) -> bool:
    if path.exists() and path.read_bytes() == content:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(content)
    tmp.replace(path)
    return True


def manifest_bytes(model_manifest: ModelManifest) -> bytes:
    data = model_manifest.model_dump(mode="json")
    return (json.dumps(data, indent=2, sort_keys=False) + "\n").encode()


def spec_bytes(spec: DeploymentSpec) -> bytes:
    text = yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False, default_flow_style=None)
    return text.encode()


def train_version(recipe: Recipe, out: Path) -> TrainedVersion:
    """Train ``recipe`` and write ``out/fraud/<version>/model.onnx`` and ``model.json``."""
    pipeline, data = fit(recipe)
    onnx_bytes = to_onnx(pipeline, recipe.version)
    sha256 = hashlib.sha256(onnx_bytes).hexdigest()
    model_manifest = manifest(recipe, pipeline, len(data), sha256)
    folder = out / DEPLOYMENT / recipe.version
    changed = _write_if_changed(folder / "model.onnx", onnx_bytes)
    changed = _write_if_changed(folder / "model.json", manifest_bytes(model_manifest)) or changed
    return TrainedVersion(recipe.version, sha256, model_manifest.metrics, changed)


@dataclass(frozen=True)
class TrainingRun:
    versions: list[TrainedVersion]
    spec_changed: bool


def train_all(out: Path) -> TrainingRun:
    """Train every version of ``RECIPES`` and write the deployment spec into the store ``out``."""
    spec_changed = _write_if_changed(
        out / DEPLOYMENT / "deployment.yaml", spec_bytes(deployment_spec())
    )
    return TrainingRun([train_version(recipe, out) for recipe in RECIPES], spec_changed)
