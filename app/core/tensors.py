"""Named, typed and multi-dimensional inputs: a request's ``features`` → the arrays of every
input of a model, or why not (the general path; one flat float32 row of named features
takes ``app.core.features`` instead, which is faster).

Contract (``Signature.inputs``: a name, an element type and the shape of one request's
value per input):
- ``features`` is an object ``{input name: value}`` naming every input; a model with a
  single input also takes the value itself (a list or nested list). When the signature
  names the columns of its single input (``feature_names``), ``{column: value}`` works too.
- A value has the declared shape: nested lists, outermost dimension first; a shape of
  ``[1]`` or ``[]`` also takes a bare scalar.
- Elements are of the declared type: ``float32``/``float64``, a JSON number (not a bool),
  finite and within range; ``int64``/``int32``, a JSON integer within range; ``string``, a
  string; ``bool``, ``true`` or ``false``.
- A failure is a ``FeatureError`` with ``MISSING_INPUT``, ``UNKNOWN_INPUT``, ``WRONG_SHAPE``,
  ``WRONG_TYPE``, ``NON_FINITE`` or (Open Inference Protocol requests) ``DATATYPE_MISMATCH``;
  the message names the input (and the position inside it).

Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from app.core.events import DeadLetterCode
from app.core.features import FeatureError
from app.core.manifest import OIP_DATATYPES, Signature, TensorSpec

# What a model call takes: one matrix (a model with one input) or every input by name.
InputBatch = npt.NDArray[Any] | Mapping[str, npt.NDArray[Any]]

_NUMPY_TYPES: dict[str, Any] = {
    "float32": np.float32,
    "float64": np.float64,
    "int64": np.int64,
    "int32": np.int32,
    "string": object,
    "bool": np.bool_,
}
_LIMITS = {
    "float32": float(np.finfo(np.float32).max),
    "float64": float(np.finfo(np.float64).max),
    "int64": 2**63,
    "int32": 2**31,
}


def _check_element(spec: TensorSpec, where: str, value: Any) -> None:
    dtype = spec.dtype
    kind = type(value)
    if dtype in ("float32", "float64"):
        _check_float(spec, where, value)
    elif dtype in ("int64", "int32"):
        _check_int(spec, where, value)
    elif dtype == "string":
        if kind is not str:
            _wrong_type(spec, where, value, "a string")
    elif kind is not bool:
        _wrong_type(spec, where, value, "true or false")


def _check_float(spec: TensorSpec, where: str, value: Any) -> None:
    kind = type(value)
    if kind is not int and kind is not float:
        _wrong_type(spec, where, value, "a number")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number) or abs(number) > _LIMITS[spec.dtype]:
        raise FeatureError(
            DeadLetterCode.NON_FINITE,
            f"input {spec.name!r}{where} = {value!r} is not a finite {spec.dtype}",
        )


def _check_int(spec: TensorSpec, where: str, value: Any) -> None:
    if type(value) is not int:
        _wrong_type(spec, where, value, "an integer")
    limit = _LIMITS[spec.dtype]
    if not -limit <= value < limit:
        raise FeatureError(
            DeadLetterCode.WRONG_TYPE,
            f"input {spec.name!r}{where} = {value} overflows {spec.dtype}",
        )


def _wrong_type(spec: TensorSpec, where: str, value: Any, wanted: str) -> None:
    got = "null" if value is None else type(value).__name__
    raise FeatureError(
        DeadLetterCode.WRONG_TYPE,
        f"input {spec.name!r}{where} must be {wanted} ({spec.dtype}), got {got}",
    )


def _check_value(spec: TensorSpec, value: Any) -> Any:
    """``value`` shaped as ``spec.shape`` (a bare scalar wrapped when the shape is [1])."""
    if not spec.shape or spec.shape == (1,):
        if type(value) is list:
            if not spec.shape or len(value) != 1:
                raise _shape_error(spec, "", value)
            _check_element(spec, "[0]", value[0])
            return value
        _check_element(spec, "", value)
        return [value] if spec.shape else value
    _check_nested(spec, value, 0, "")
    return value


def _check_nested(spec: TensorSpec, value: Any, depth: int, where: str) -> None:
    length = spec.shape[depth]
    if type(value) is not list or len(value) != length:
        raise _shape_error(spec, where, value)
    if depth + 1 == len(spec.shape):
        for n, element in enumerate(value):
            if type(element) is list:
                raise _shape_error(spec, where, value)
            _check_element(spec, f"{where}[{n}]", element)
        return
    for n, inner in enumerate(value):
        _check_nested(spec, inner, depth + 1, f"{where}[{n}]")


def _shape_error(spec: TensorSpec, where: str, value: Any) -> FeatureError:
    return FeatureError(
        DeadLetterCode.WRONG_SHAPE,
        f"input {spec.name!r}{where} must have shape {list(spec.shape)}, got {_shape_of(value)}",
    )


def _shape_of(value: Any) -> str:
    if type(value) is not list:
        return "a scalar" if value is not None and type(value) is not dict else "no array"
    dims: list[int] = []
    while type(value) is list:
        dims.append(len(value))
        value = value[0] if value else None
    return str(dims)


def by_input(features: Any, signature: Signature) -> dict[str, Any]:
    """``features`` as ``{input name: value}`` (values not checked yet)."""
    inputs = signature.inputs
    if type(features) is dict:
        if signature.feature_names is not None and set(features) == set(signature.feature_names):
            return {inputs[0].name: [features[n] for n in signature.feature_names]}
        names = [i.name for i in inputs]
        missing = [n for n in names if n not in features]
        unknown = [k for k in features if k not in names]
        if unknown:
            raise FeatureError(
                DeadLetterCode.UNKNOWN_INPUT,
                f"unknown input(s) {', '.join(map(repr, unknown))}; the model takes "
                f"{', '.join(map(repr, names))}",
            )
        if missing:
            raise FeatureError(
                DeadLetterCode.MISSING_INPUT, f"missing input(s) {', '.join(map(repr, missing))}"
            )
        return features
    if len(inputs) == 1:
        return {inputs[0].name: features}
    raise FeatureError(
        DeadLetterCode.WRONG_TYPE,
        f"features must be an object naming the inputs {', '.join(repr(i.name) for i in inputs)}",
    )


def check_datatypes(datatypes: Mapping[str, str], signature: Signature) -> None:
    """An Open Inference Protocol request's ``datatype`` per input against the model's."""
    for spec in signature.inputs:
        given = datatypes.get(spec.name)
        wanted = OIP_DATATYPES[spec.dtype]
        if given is not None and given != wanted:
            raise FeatureError(
                DeadLetterCode.DATATYPE_MISMATCH,
                f"input {spec.name!r} has datatype {given}; "
                f"the model takes {wanted} ({spec.dtype})",
            )


@dataclass(frozen=True)
class TensorBatch:
    """``inputs[name][j]`` is the value of input ``valid[j]``; ``errors`` holds
    ``(input index, error)`` of every rejected one. ``valid`` and ``errors`` cover every
    input once."""

    inputs: dict[str, npt.NDArray[Any]]
    valid: list[int] = field(default_factory=list)
    errors: list[tuple[int, FeatureError]] = field(default_factory=list)

    @property
    def matrix(self) -> InputBatch:
        return self.inputs


def tensor_row(features: Any, signature: Signature) -> dict[str, Any]:
    """One request's checked values by input name, or ``FeatureError``."""
    named = by_input(features, signature)
    return {spec.name: _check_value(spec, named[spec.name]) for spec in signature.inputs}


def tensor_batch(
    rows: Sequence[Any],
    signature: Signature,
    datatypes: Sequence[Mapping[str, str] | None] | None = None,
) -> TensorBatch:
    """Check every row and stack the valid ones into one array per input."""
    checked: list[dict[str, Any]] = []
    valid: list[int] = []
    errors: list[tuple[int, FeatureError]] = []
    for i, features in enumerate(rows):
        try:
            if datatypes is not None and datatypes[i] is not None:
                check_datatypes(datatypes[i] or {}, signature)
            checked.append(tensor_row(features, signature))
            valid.append(i)
        except FeatureError as error:
            errors.append((i, error))
    return TensorBatch(stack(checked, signature), valid, errors)


def stack(rows: Sequence[Mapping[str, Any]], signature: Signature) -> dict[str, npt.NDArray[Any]]:
    """Checked rows → one ``(n, *shape)`` array per input, of the input's element type."""
    arrays: dict[str, npt.NDArray[Any]] = {}
    for spec in signature.inputs:
        dtype = _NUMPY_TYPES[spec.dtype]
        array = np.array([row[spec.name] for row in rows], dtype=dtype)
        arrays[spec.name] = array.reshape((len(rows), *spec.shape))
    return arrays


def zero_inputs(signature: Signature, rows: int) -> dict[str, npt.NDArray[Any]]:
    """Inputs of ``rows`` rows made from the signature alone (zeros, empty strings, false):
    what a smoke inference runs."""
    arrays: dict[str, npt.NDArray[Any]] = {}
    for spec in signature.inputs:
        shape = (rows, *spec.shape)
        if spec.dtype == "string":
            arrays[spec.name] = np.full(shape, "", dtype=object)
        else:
            arrays[spec.name] = np.zeros(shape, dtype=_NUMPY_TYPES[spec.dtype])
    return arrays


def select(batch: InputBatch, indices: list[int]) -> InputBatch:
    """Rows ``indices`` of ``batch``."""
    if isinstance(batch, np.ndarray):
        return batch if len(indices) == len(batch) else batch[indices]
    return {name: array[indices] for name, array in batch.items()}


def rows_of(batch: InputBatch) -> int:
    if isinstance(batch, np.ndarray):
        return len(batch)
    return len(next(iter(batch.values())))


def oip_features(
    features: dict[str, Any], datatypes: Mapping[str, str], signature: Signature
) -> Any:
    """An Open Inference Protocol request's inputs as native ``features`` for ``signature``,
    its datatypes checked: one OIP input per named column (each of one value) becomes
    ``{column: value}``; the single input of a flat signature becomes its list."""
    names = signature.feature_names
    if names is not None and set(features) == set(names):
        spec = signature.inputs[0]
        wanted = OIP_DATATYPES[spec.dtype]
        by_column: dict[str, Any] = {}
        for name in names:
            if datatypes.get(name, wanted) != wanted:
                raise FeatureError(
                    DeadLetterCode.DATATYPE_MISMATCH,
                    f"input {name!r} has datatype {datatypes[name]}; the model takes {wanted}",
                )
            value = features[name]
            if type(value) is list and len(value) == 1:
                value = value[0]
            by_column[name] = value
        return by_column
    check_datatypes(datatypes, signature)
    if signature.flat:
        return by_input(features, signature)[signature.inputs[0].name]
    return features
