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

import functools
import math
import operator
from collections.abc import Callable, Sequence
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
    fast = _fast_row(features, names)
    if fast is not None:
        return fast
    return np.asarray(_values(features, names), dtype=np.float32)


def _fast_row(features: Any, names: Sequence[str]) -> npt.NDArray[np.float32] | None:
    """The row when nothing is wrong with it, else None (the careful path names the problem)."""
    values = _plain_values(features, names, _getter(tuple(names)))
    if values is None:
        return None
    try:
        row = np.array(values, dtype=np.float64)
    except OverflowError:
        return None
    if not np.all(np.abs(row) <= _FLOAT32_MAX):  # also False for NaN
        return None
    return row.astype(np.float32)


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
    """Check every row and stack the valid ones into one ``(n_valid, f)`` float32 matrix.

    Rows whose shape and types are right are converted and range-checked together (one
    numpy array for the batch); only the rest, and rows out of range, take the careful
    per-value path that names the problem."""
    width = len(names)
    candidates: list[Sequence[Any]] = []
    positions: list[int] = []
    slow: list[int] = []
    getter = _getter(tuple(names))
    for i, features in enumerate(rows):
        values = _plain_values(features, names, getter)
        if values is None:
            slow.append(i)
        else:
            candidates.append(values)
            positions.append(i)
    checked = np.empty((0, width), dtype=np.float64)
    if candidates:
        try:
            checked = np.array(candidates, dtype=np.float64).reshape(len(candidates), width)
        except (OverflowError, ValueError):  # an int beyond float64: find it row by row
            slow.extend(positions)
            positions, checked = [], checked[:0]
    in_range = np.all(np.abs(checked) <= _FLOAT32_MAX, axis=1)  # False for NaN and inf
    good = {p: n for n, p in enumerate(positions) if in_range[n]}
    slow.extend(p for n, p in enumerate(positions) if not in_range[n])
    errors: list[tuple[int, FeatureError]] = []
    late: dict[int, list[float]] = {}  # rows that only the careful path could convert
    for i in slow:
        try:
            late[i] = _values(rows[i], names)
        except FeatureError as error:
            errors.append((i, error))
    # A good row lands here when another row of the batch made the fast conversion fail (an
    # int beyond float64 aborts the whole array): it is served, never failed with the batch.
    valid = sorted([*good, *late])
    if len(good) == len(checked) and not late:  # the usual batch: every row took the fast path
        return FeatureBatch(matrix=checked.astype(np.float32), valid=valid, errors=errors)
    matrix = np.empty((len(valid), width), dtype=np.float32)
    for n, i in enumerate(valid):
        matrix[n] = checked[good[i]] if i in good else late[i]
    return FeatureBatch(matrix=matrix, valid=valid, errors=sorted(errors, key=lambda e: e[0]))


_NUMBER_TYPE_SET = frozenset({int, float})  # exactly: bool is an int subclass, and is refused


@functools.lru_cache(maxsize=64)
def _getter(names: tuple[str, ...]) -> Callable[[dict[str, Any]], Any]:
    return operator.itemgetter(*names)


def _plain_values(
    features: Any, names: Sequence[str], getter: Callable[[dict[str, Any]], Any]
) -> Sequence[Any] | None:
    """The values in model order when the shape is right and every value is a JSON number
    (not bool); else None. (C-level lookups and type checks: this runs for every request.)"""
    if type(features) is dict:
        if len(features) != len(names):
            return None
        try:
            got = getter(features)
        except KeyError:
            return None
        values: Sequence[Any] = got if len(names) != 1 else (got,)
    elif type(features) is list and len(features) == len(names):
        values = features
    else:
        return None
    return values if _NUMBER_TYPE_SET.issuperset(map(type, values)) else None
