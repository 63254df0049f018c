"""What a model version and a deployment declare about themselves.

- ``ModelManifest`` is ``models/<deployment>/<version>/model.json``: the model's input
  (name, dtype, feature names in column order), its outputs (ONNX tensor names and the
  class labels, index ``i`` of the scores is ``labels[i]``), the sha256 of ``model.onnx``,
  how it was trained and its offline metrics.
- ``DeploymentSpec`` is ``models/<deployment>/deployment.yaml``: the deployment's
  ``Signature`` (every version must match it), its initial production version and its
  default ``Policy``.
- ``compatible(signature, manifest)`` says why a version cannot serve a deployment, or
  ``None`` when it can.

Pure: no I/O; callers parse JSON/YAML and pass the resulting dicts to ``model_validate``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.core.policy import Policy

SHA256_PATTERN = r"^[0-9a-f]{64}$"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Signature(_Frozen):
    """The input and output contract of a deployment: one float32 row of named features in,
    a label out of ``labels`` with one score per label."""

    input_name: str = "features"
    dtype: Literal["float32"] = "float32"
    feature_names: tuple[str, ...] = Field(min_length=1)
    labels: tuple[str, ...] = Field(min_length=2)

    @field_validator("feature_names", "labels")
    @classmethod
    def _unique(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(names)) != len(names):
            raise ValueError("names must be unique")
        return names


class OutputNames(_Frozen):
    """ONNX output tensor names: the predicted label and the (n, k) class scores."""

    label: str = "label"
    scores: str = "probabilities"


class TrainingInfo(_Frozen):
    """Where a version's training data came from (synthetic stream days, inclusive)."""

    first_day: int
    last_day: int
    samples: int
    seed: int
    estimator: str
    label_corruption: str | None = None


class Evaluation(_Frozen):
    """The held-out data set the offline metrics were computed on."""

    dataset: str
    first_day: int
    last_day: int
    samples: int
    seed: int


class ModelManifest(_Frozen):
    name: str = Field(pattern=NAME_PATTERN)
    version: str = Field(pattern=NAME_PATTERN)
    input_name: str
    input_dtype: Literal["float32"] = "float32"
    feature_names: tuple[str, ...]
    labels: tuple[str, ...]
    outputs: OutputNames = Field(default_factory=OutputNames)
    sha256: str = Field(pattern=SHA256_PATTERN)
    training: TrainingInfo
    evaluation: Evaluation
    metrics: dict[str, float]  # on ``evaluation`` (current traffic)
    window_metrics: dict[str, dict[str, float]] = Field(default_factory=dict)
    created_by: str
    libraries: dict[str, str] = Field(default_factory=dict)
    target_opset: dict[str, int] = Field(default_factory=dict)


class DeploymentSpec(_Frozen):
    model_config = ConfigDict(frozen=True, extra="forbid", coerce_numbers_to_str=True)

    name: str = Field(pattern=NAME_PATTERN)
    signature: Signature
    initial_production: str = Field(pattern=NAME_PATTERN)
    policy: Policy = Field(default_factory=Policy)


def compatible(signature: Signature, manifest: ModelManifest) -> str | None:
    """``None`` if ``manifest`` can serve a deployment with ``signature``, else the reason."""
    if manifest.input_name != signature.input_name:
        return f"input name {manifest.input_name!r} != deployment's {signature.input_name!r}"
    if manifest.input_dtype != signature.dtype:
        return f"input dtype {manifest.input_dtype} != deployment's {signature.dtype}"
    if manifest.feature_names != signature.feature_names:
        return _feature_difference(signature.feature_names, manifest.feature_names)
    if manifest.labels != signature.labels:
        return f"labels {list(manifest.labels)} != deployment's {list(signature.labels)}"
    return None


def _feature_difference(expected: tuple[str, ...], actual: tuple[str, ...]) -> str:
    missing = [n for n in expected if n not in actual]
    if missing:
        return f"model lacks feature(s) {missing}"
    extra = [n for n in actual if n not in expected]
    if extra:
        return f"model has unknown feature(s) {extra}"
    if len(actual) != len(expected):
        return f"model has {len(actual)} feature columns, deployment {len(expected)}"
    first = next(i for i, (a, b) in enumerate(zip(expected, actual, strict=True)) if a != b)
    return (
        f"feature order differs at column {first}: "
        f"model has {actual[first]!r}, deployment {expected[first]!r}"
    )
