"""What a model version and a deployment declare about themselves.

- ``Signature`` is the contract every version of a deployment serves: its ``kind``
  (``classifier`` or ``regressor``), its named input tensors (``TensorSpec``: element type
  and the shape of one request's value, the batch dimension left out), the column names of
  a single 1-D input (``feature_names``, optional), and its outputs: class ``labels`` (a
  classifier: index ``i`` of the scores is ``labels[i]``) or the names of the ``targets`` (a
  regressor: one value per target).
- ``ModelManifest`` is ``models/<deployment>/<version>/model.json``: a version's signature,
  the ONNX names of its outputs (``OutputNames``), the class values its graph emits, the
  sha256 of ``model.onnx``, and free-form training and evaluation metadata (optional).
- ``DeploymentSpec`` is ``models/<deployment>/deployment.yaml``: the deployment's
  ``Signature``, its initial production version, its default ``Policy``, and for regressors
  ``RegressionSpec`` (the agreement tolerance and the error cap).
- ``differences(signature, manifest)`` lists every way a version does not fit a deployment;
  ``compatible`` joins them into one reason (``None`` when it fits).

The first form of these files (one float32 ``input_name``/``dtype`` with ``feature_names``)
is still read: it is the flat input it describes.

Pure: no I/O; callers parse JSON/YAML and pass the resulting dicts to ``model_validate``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.core.policy import Policy

SHA256_PATTERN = r"^[0-9a-f]{64}$"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"

ElementType = Literal["float32", "float64", "int64", "int32", "string", "bool"]
ModelKind = Literal["classifier", "regressor"]

# Open Inference Protocol v2 datatype of each element type.
OIP_DATATYPES: dict[str, str] = {
    "float32": "FP32",
    "float64": "FP64",
    "int64": "INT64",
    "int32": "INT32",
    "string": "BYTES",
    "bool": "BOOL",
}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TensorSpec(_Frozen):
    """One named input: its element type and the shape of one request's value (the batch
    dimension left out: ``[10]`` is a row of ten, ``[8, 8]`` an 8 by 8 matrix, ``[1]`` one
    value, which a request may also give as a bare scalar)."""

    name: str = Field(min_length=1)
    dtype: ElementType
    shape: tuple[int, ...] = ()

    @field_validator("shape")
    @classmethod
    def _positive(cls, shape: tuple[int, ...]) -> tuple[int, ...]:
        if any(d < 1 for d in shape):
            raise ValueError("dimensions must be positive (only the batch dimension is dynamic)")
        return shape

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def _unique(names: tuple[str, ...]) -> tuple[str, ...]:
    if len(set(names)) != len(names):
        raise ValueError("names must be unique")
    return names


def _legacy_inputs(data: Any) -> Any:
    """The first form (``input_name``, ``dtype``/``input_dtype``, ``feature_names``) as
    ``inputs``: one float32 row of the named features."""
    if not isinstance(data, dict) or "inputs" in data:
        return data
    if "input_name" not in data and "dtype" not in data and "input_dtype" not in data:
        return data
    data = dict(data)
    name = data.pop("input_name", "features")
    dtype = data.pop("dtype", None) or data.pop("input_dtype", "float32")
    data.pop("input_dtype", None)
    width = len(data.get("feature_names") or ())
    data["inputs"] = [{"name": name, "dtype": dtype, "shape": [width]}]
    return data


class _Declares(_Frozen):
    """What a signature and a manifest both declare (see the module docstring)."""

    kind: ModelKind = "classifier"
    inputs: tuple[TensorSpec, ...] = Field(min_length=1)
    feature_names: tuple[str, ...] | None = None
    labels: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _first_form(cls, data: Any) -> Any:
        return _legacy_inputs(data)

    @model_validator(mode="after")
    def _consistent(self) -> _Declares:
        _unique(tuple(i.name for i in self.inputs))
        _unique(self.labels)
        _unique(self.targets)
        if self.feature_names is not None:
            _unique(self.feature_names)
            if len(self.inputs) != 1 or self.inputs[0].shape != (len(self.feature_names),):
                raise ValueError("feature_names name the columns of one input of shape [n]")
        if self.kind == "classifier" and (len(self.labels) < 2 or self.targets):
            raise ValueError("a classifier has at least two labels and no targets")
        if self.kind == "regressor" and (not self.targets or self.labels):
            raise ValueError("a regressor has at least one target and no labels")
        return self

    @property
    def flat(self) -> bool:
        """One float32 row of named features: the fast path of the data plane."""
        return (
            self.feature_names is not None
            and len(self.inputs) == 1
            and self.inputs[0].dtype == "float32"
        )


class Signature(_Declares):
    """The input and output contract of a deployment; every version must declare it."""


class OutputNames(_Frozen):
    """ONNX output names. A classifier: ``label`` (the predicted class, per row) and
    ``scores`` (per-class probabilities: an ``(n, k)`` tensor, or a sequence of maps when
    ``zipmap``). A regressor: ``values``, one or more tensors whose columns, in order, are
    the deployment's targets."""

    label: str | None = "label"
    scores: str | None = "probabilities"
    zipmap: bool = False
    values: tuple[str, ...] = ()


class ModelManifest(_Declares):
    name: str = Field(pattern=NAME_PATTERN)
    version: str = Field(pattern=NAME_PATTERN)
    outputs: OutputNames = Field(default_factory=OutputNames)
    # What the graph emits for each label, in label order (int64 class ids or strings);
    # None: the label output is the label's index.
    class_values: tuple[int, ...] | tuple[str, ...] | None = None
    sha256: str = Field(pattern=SHA256_PATTERN)
    description: str = ""
    training: dict[str, Any] | None = None  # free-form
    evaluation: dict[str, Any] | None = None  # free-form
    metrics: dict[str, Any] = Field(default_factory=dict)
    window_metrics: dict[str, dict[str, float]] = Field(default_factory=dict)
    created_by: str = "rollout publish"
    libraries: dict[str, str] = Field(default_factory=dict)
    target_opset: dict[str, int] = Field(default_factory=dict)

    @property
    def signature(self) -> Signature:
        return Signature(
            kind=self.kind,
            inputs=self.inputs,
            feature_names=self.feature_names,
            labels=self.labels,
            targets=self.targets,
        )


class RegressionSpec(_Frozen):
    """How a regressor's versions are compared (the units are the targets').

    - Two outputs agree when every target differs by at most
      ``absolute_tolerance + relative_tolerance * |production's value|``.
    - ``error_cap`` bounds the absolute error against feedback: each labelled request's
      loss is ``min(|value - truth|, error_cap) / error_cap``, in [0, 1], so that the
      paired difference of the two arms' losses is bounded as the sequential test needs;
      ``None`` leaves regressors without a feedback criterion."""

    absolute_tolerance: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    relative_tolerance: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    error_cap: float | None = Field(default=None, gt=0.0, allow_inf_nan=False)


class DeploymentSpec(_Frozen):
    model_config = ConfigDict(frozen=True, extra="forbid", coerce_numbers_to_str=True)

    name: str = Field(pattern=NAME_PATTERN)
    signature: Signature
    initial_production: str = Field(pattern=NAME_PATTERN)
    policy: Policy = Field(default_factory=Policy)
    regression: RegressionSpec | None = None
    description: str = ""


def differences(signature: Signature, declared: _Declares) -> list[str]:
    """Every way ``declared`` (a version's manifest or derived signature) does not fit a
    deployment with ``signature``; empty when it fits."""
    found: list[str] = []
    if declared.kind != signature.kind:
        found.append(f"kind {declared.kind} != deployment's {signature.kind}")
    found.extend(_input_differences(signature.inputs, declared.inputs))
    if (
        declared.feature_names is not None
        and signature.feature_names is not None
        and declared.feature_names != signature.feature_names
    ):
        found.append(_feature_difference(signature.feature_names, declared.feature_names))
    if declared.labels != signature.labels:
        found.append(f"labels {list(declared.labels)} != deployment's {list(signature.labels)}")
    if declared.targets != signature.targets:
        found.append(f"targets {list(declared.targets)} != deployment's {list(signature.targets)}")
    return found


def compatible(signature: Signature, manifest: _Declares) -> str | None:
    """``None`` if ``manifest`` can serve a deployment with ``signature``, else the reasons."""
    found = differences(signature, manifest)
    return "; ".join(found) if found else None


def _input_differences(
    expected: tuple[TensorSpec, ...], actual: tuple[TensorSpec, ...]
) -> list[str]:
    found: list[str] = []
    theirs = {i.name: i for i in actual}
    ours = {i.name: i for i in expected}
    for spec in expected:
        other = theirs.get(spec.name)
        if other is None:
            found.append(f"input {spec.name!r} is missing")
            continue
        if other.dtype != spec.dtype:
            found.append(f"input {spec.name!r} is {other.dtype}, deployment's is {spec.dtype}")
        if other.shape != spec.shape:
            found.append(
                f"input {spec.name!r} has shape {list(other.shape)}, "
                f"deployment's is {list(spec.shape)}"
            )
    found.extend(
        f"input {i.name!r} is unknown to the deployment" for i in actual if i.name not in ours
    )
    return found


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
