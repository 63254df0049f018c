"""Table tests for app.core.features: request features -> float32 rows, or a coded error."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from app.core.events import DeadLetterCode, InferenceRequest, decode
from app.core.features import FeatureError, feature_matrix, feature_row

NAMES = ("amount", "hour", "online")
GOOD_DICT = {"amount": 12.5, "hour": 3, "online": 1}
GOOD_ROW = [12.5, 3.0, 1.0]


@pytest.mark.parametrize(
    ("features", "expected"),
    [
        (GOOD_DICT, GOOD_ROW),
        ({"online": 1, "amount": 12.5, "hour": 3}, GOOD_ROW),  # any key order
        ([12.5, 3, 1], GOOD_ROW),
        ([0, -1.5, 1e30], [0.0, -1.5, 1e30]),
        ([2**40, 0, 0], [float(2**40), 0.0, 0.0]),
    ],
)
def test_valid_features_become_float32_rows(features: Any, expected: list[float]) -> None:
    row = feature_row(features, NAMES)
    assert row.dtype == np.float32
    assert row.shape == (3,)
    np.testing.assert_array_equal(row, np.asarray(expected, dtype=np.float32))


@pytest.mark.parametrize(
    ("features", "code", "named"),
    [
        ({"amount": 1.0, "hour": 2.0}, DeadLetterCode.MISSING_FEATURE, "online"),
        ({"amount": 1.0, "hour": 2.0, "onlin": 1}, DeadLetterCode.MISSING_FEATURE, "online"),
        ({**GOOD_DICT, "extra": 1.0}, DeadLetterCode.EXTRA_FEATURE, "extra"),
        ({}, DeadLetterCode.MISSING_FEATURE, "amount"),
        ({**GOOD_DICT, "amount": "12.5"}, DeadLetterCode.WRONG_TYPE, "amount"),
        ({**GOOD_DICT, "online": True}, DeadLetterCode.WRONG_TYPE, "online"),
        ({**GOOD_DICT, "online": False}, DeadLetterCode.WRONG_TYPE, "online"),
        ({**GOOD_DICT, "hour": None}, DeadLetterCode.WRONG_TYPE, "hour"),
        ({**GOOD_DICT, "hour": [3]}, DeadLetterCode.WRONG_TYPE, "hour"),
        ({**GOOD_DICT, "hour": {"v": 3}}, DeadLetterCode.WRONG_TYPE, "hour"),
        ({**GOOD_DICT, "amount": float("nan")}, DeadLetterCode.NON_FINITE, "amount"),
        ({**GOOD_DICT, "amount": float("inf")}, DeadLetterCode.NON_FINITE, "amount"),
        ({**GOOD_DICT, "amount": float("-inf")}, DeadLetterCode.NON_FINITE, "amount"),
        ({**GOOD_DICT, "amount": 1e39}, DeadLetterCode.NON_FINITE, "amount"),  # > float32 max
        ({**GOOD_DICT, "amount": 10**400}, DeadLetterCode.NON_FINITE, "amount"),
        ([1.0, 2.0], DeadLetterCode.WRONG_FEATURE_COUNT, "3"),
        ([1.0, 2.0, 3.0, 4.0], DeadLetterCode.WRONG_FEATURE_COUNT, "3"),
        ([], DeadLetterCode.WRONG_FEATURE_COUNT, "3"),
        ([1.0, "2", 3.0], DeadLetterCode.WRONG_TYPE, "hour"),
        ([1.0, 2.0, True], DeadLetterCode.WRONG_TYPE, "online"),
        ([1.0, 2.0, float("nan")], DeadLetterCode.NON_FINITE, "online"),
        ("12.5,3,1", DeadLetterCode.WRONG_TYPE, "features"),
        (None, DeadLetterCode.WRONG_TYPE, "features"),
    ],
)
def test_invalid_features_raise_a_coded_error_naming_the_feature(
    features: Any, code: DeadLetterCode, named: str
) -> None:
    with pytest.raises(FeatureError) as caught:
        feature_row(features, NAMES)
    assert caught.value.code is code
    assert named in caught.value.message


@pytest.mark.parametrize("literal", [b"1e400", b"-1e400", b"NaN", b"Infinity"])
def test_non_finite_json_numbers_that_decode_are_rejected(literal: bytes) -> None:
    """The request decoder (pydantic's JSON parser) turns these literals into floats."""
    wire = (
        b'{"request_id": "r", "deployment": "fraud",'
        b' "features": {"amount": %b, "hour": 1, "online": 0}}'
    )
    request = decode(InferenceRequest, wire % literal)
    with pytest.raises(FeatureError) as caught:
        feature_row(request.features, NAMES)
    assert caught.value.code is DeadLetterCode.NON_FINITE
    assert "amount" in caught.value.message


def test_missing_names_the_unexpected_key_too() -> None:
    with pytest.raises(FeatureError) as caught:
        feature_row({"amount": 1.0, "hour": 2.0, "onlin": 1}, NAMES)
    assert "'onlin'" in caught.value.message


def test_matrix_keeps_valid_rows_and_reports_bad_ones_by_index() -> None:
    rows: list[Any] = [
        GOOD_DICT,
        {"amount": 1.0},
        [1.0, 2.0, 3.0],
        [1.0, 2.0, float("inf")],
        {"amount": 4.0, "hour": 5.0, "online": 0},
    ]
    batch = feature_matrix(rows, NAMES)
    assert batch.valid == [0, 2, 4]
    assert [(i, e.code) for i, e in batch.errors] == [
        (1, DeadLetterCode.MISSING_FEATURE),
        (3, DeadLetterCode.NON_FINITE),
    ]
    assert batch.matrix.dtype == np.float32
    np.testing.assert_array_equal(
        batch.matrix,
        np.asarray([GOOD_ROW, [1.0, 2.0, 3.0], [4.0, 5.0, 0.0]], dtype=np.float32),
    )


@pytest.mark.parametrize("rows", [[], [None], [{"amount": 1.0}, [1.0]]])
def test_matrix_with_no_valid_rows_has_shape_zero_by_f(rows: list[Any]) -> None:
    batch = feature_matrix(rows, NAMES)
    assert batch.matrix.shape == (0, 3)
    assert batch.valid == []
    assert len(batch.errors) == len(rows)
