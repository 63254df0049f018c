"""Turn the ``features`` of an InferenceRequest into a model's float32 input row.

Contract:
- ``features`` is either a dict ``{name: number}`` holding exactly the model's feature
  names (any key order), or a list of numbers in the model's feature order.
- A number is a JSON int or float (Python ``int``/``float``, not ``bool``), finite, and
  within float32 range. Anything else raises ``FeatureError`` with a ``DeadLetterCode``:
  ``MISSING_FEATURE``, ``EXTRA_FEATURE``, ``WRONG_TYPE`` (string, bool, null, list, dict...),
  ``NON_FINITE`` (NaN, +/-inf, or overflowing float32: a JSON ``1e400`` parses to inf)
  and ``WRONG_FEATURE_COUNT`` (a list of the wrong length). The message names the feature.
- ``feature_row`` checks one request; ``feature_matrix`` checks many and builds one
  ``(n_valid, f)`` matrix, keeping the errors of the bad rows apart from the good ones.

Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from app.core.events import DeadLetterCode

_FLOAT32_MAX = float(np.finfo(np.float32).max)
_NUMBER_TYPES = (int, float)


class FeatureError(ValueError):
    """A request's features do not fit the model; ``code`` says how, ``message`` where."""

    def __init__(self, code: DeadLetterCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"FeatureError({self.code.value!r}, {self.message!r})"


def _value(name: str, value: Any) -> float:
    # ``type(...) in`` on purpose: bool is a subclass of int and must not pass.
    if type(value) not in _NUMBER_TYPES:
        return _wrong_type(name, value)
    try:
        number = float(value)
    except OverflowError:  # an int beyond float64
        raise FeatureError(
            DeadLetterCode.NON_FINITE, f"feature {name!r} is out of float32 range"
        ) from None
    if not math.isfinite(number):
        raise FeatureError(DeadLetterCode.NON_FINITE, f"feature {name!r} is {number}")
    if abs(number) > _FLOAT32_MAX:
        raise FeatureError(
            DeadLetterCode.NON_FINITE, f"feature {name!r} = {number:g} is out of float32 range"
        )
    return number


def _wrong_type(name: str, value: Any) -> float:
    kind = "null" if value is None else type(value).__name__
    raise FeatureError(DeadLetterCode.WRONG_TYPE, f"feature {name!r} must be a number, got {kind}")


def _values(features: Any, names: Sequence[str]) -> list[float]:
    if isinstance(features, dict):
        return _values_by_name(features, names)
    if isinstance(features, list):
        if len(features) != len(names):
            raise FeatureError(
                DeadLetterCode.WRONG_FEATURE_COUNT,
                f"expected {len(names)} features in model order, got {len(features)}",
            )
        return [_value(n, v) for n, v in zip(names, features, strict=True)]
    raise FeatureError(
        DeadLetterCode.WRONG_TYPE,
        f"features must be an object or a list, got {type(features).__name__}",
    )


def _values_by_name(features: dict[str, Any], names: Sequence[str]) -> list[float]:
    if len(features) != len(names) or any(n not in features for n in names):
        missing = [n for n in names if n not in features]
        expected = set(names)
        extra = [k for k in features if k not in expected]
        if missing:
            also = f" (unexpected: {', '.join(map(repr, extra))})" if extra else ""
            raise FeatureError(
                DeadLetterCode.MISSING_FEATURE,
                f"missing feature(s) {', '.join(map(repr, missing))}{also}",
            )
        raise FeatureError(
            DeadLetterCode.EXTRA_FEATURE, f"unknown feature(s) {', '.join(map(repr, extra))}"
        )
    return [_value(n, features[n]) for n in names]


def feature_row(features: Any, names: Sequence[str]) -> npt.NDArray[np.float32]:
    """One request's features as a ``(len(names),)`` float32 row, or ``FeatureError``."""
    return np.asarray(_values(features, names), dtype=np.float32)


@dataclass(frozen=True)
class FeatureBatch:
    """The result of checking many requests against one model.

    ``matrix[j]`` is the row of input ``valid[j]``; ``errors`` holds ``(input index, error)``
    for every rejected input. Together ``valid`` and ``errors`` cover every input once.
    """

    matrix: npt.NDArray[np.float32]
    valid: list[int] = field(default_factory=list)
    errors: list[tuple[int, FeatureError]] = field(default_factory=list)


def feature_matrix(rows: Sequence[Any], names: Sequence[str]) -> FeatureBatch:
    """Check every row and stack the valid ones into one ``(n_valid, f)`` float32 matrix."""
    values: list[list[float]] = []
    valid: list[int] = []
    errors: list[tuple[int, FeatureError]] = []
    for i, features in enumerate(rows):
        try:
            values.append(_values(features, names))
        except FeatureError as error:
            errors.append((i, error))
        else:
            valid.append(i)
    matrix = np.array(values, dtype=np.float32).reshape(len(values), len(names))
    return FeatureBatch(matrix=matrix, valid=valid, errors=errors)
