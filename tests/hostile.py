"""Hostile input for property tests: hypothesis strategies of raw request records, each with
the outcome the worker owes it (a prediction, or a dead letter with a specific code).

Shared by ``tests/unit/test_hostile_input.py`` (pure scoring) and the integration property
run through a real worker."""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from hypothesis import strategies as st

from app.core.events import DeadLetterCode
from app.training.stream import FEATURE_NAMES

MAX_BYTES = 4096  # the tests' request size limit (ROLLOUT_MAX_REQUEST_BYTES)


@dataclass(frozen=True)
class Case:
    """One record and what it is owed: ``code`` None means a prediction."""

    value: bytes
    code: DeadLetterCode | None
    request_id: str | None = None


_finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
_int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
_features = st.fixed_dictionaries({n: _finite for n in FEATURE_NAMES})


def _body(rid: str, features: object, deployment: str = "fraud", **extra: object) -> bytes:
    return orjson.dumps(
        {"request_id": rid, "deployment": deployment, "features": features, **extra}
    )


@st.composite
def valid(draw: st.DrawFn, rid: str) -> Case:
    features = draw(_features)
    as_list = draw(st.booleans())
    body = _body(rid, [features[n] for n in FEATURE_NAMES] if as_list else features)
    return Case(body, None, rid)


@st.composite
def invalid(draw: st.DrawFn, rid: str) -> Case:
    good = draw(_features)
    name = draw(st.sampled_from(FEATURE_NAMES))
    kind = draw(
        st.sampled_from(
            [
                "utf8", "garbage", "deep", "deep_feature", "too_large", "nan", "inf", "huge",
                "wrong_type", "bool", "null", "missing", "extra", "unknown_deployment",
                "empty_id", "no_id", "id_not_string", "not_object", "count", "features_type",
            ]
        )
    )  # fmt: skip
    C = DeadLetterCode
    if kind == "utf8":
        prefix = draw(st.binary(max_size=20))
        return Case(prefix + b"\xff\xfe" + _body(rid, good), C.INVALID_UTF8)
    if kind == "garbage":
        text = draw(st.text(min_size=1, max_size=60)).encode()
        return Case(b"{" + text + b"\x00<<", C.INVALID_JSON)
    if kind == "deep":  # past the JSON parser's nesting limit (1024), at the top or inside
        depth = draw(st.integers(min_value=1025, max_value=1800))
        nest = b"[" * depth + b"]" * depth
        inside = draw(st.booleans())
        raw = _body(rid, {**good, name: 0.5}).replace(
            f'"{name}":0.5'.encode(), f'"{name}":'.encode() + nest
        )
        return Case(raw if inside else nest, C.INVALID_JSON)
    if kind == "deep_feature":  # parses, but a feature is a deeply nested list
        depth = draw(st.integers(min_value=2, max_value=200))
        nested = orjson.loads(b"[" * depth + b"1" + b"]" * depth)
        return Case(_body(rid, {**good, name: nested}), C.WRONG_TYPE, rid)
    if kind == "too_large":
        pad = "x" * draw(st.integers(min_value=MAX_BYTES, max_value=MAX_BYTES * 3))
        return Case(_body(rid, good, padding=pad), C.PAYLOAD_TOO_LARGE, rid)
    if kind in ("nan", "inf"):
        token = b"NaN" if kind == "nan" else draw(st.sampled_from([b"Infinity", b"-Infinity"]))
        raw = _body(rid, {**good, name: 0.5}).replace(
            f'"{name}":0.5'.encode(), f'"{name}":'.encode() + token
        )
        return Case(raw, C.NON_FINITE, rid)
    if kind == "huge":  # finite JSON, beyond float32 (or float64: 1e999 parses to inf)
        value = draw(st.sampled_from(["1e39", "-3.5e38", "1e999", "123456789" * 40]))
        raw = _body(rid, {**good, name: 0.5}).replace(
            f'"{name}":0.5'.encode(), f'"{name}":{value}'.encode()
        )
        return Case(raw, C.NON_FINITE, rid)
    if kind == "wrong_type":
        value = draw(
            st.one_of(
                st.text(max_size=10), st.dictionaries(st.text(max_size=3), _int64, max_size=2)
            )
        )
        return Case(_body(rid, {**good, name: value}), C.WRONG_TYPE, rid)
    if kind == "bool":
        return Case(_body(rid, {**good, name: draw(st.booleans())}), C.WRONG_TYPE, rid)
    if kind == "null":
        return Case(_body(rid, {**good, name: None}), C.WRONG_TYPE, rid)
    if kind == "missing":
        return Case(
            _body(rid, {k: v for k, v in good.items() if k != name}), C.MISSING_FEATURE, rid
        )
    if kind == "extra":
        extra = draw(st.text(min_size=1, max_size=12).filter(lambda k: k not in FEATURE_NAMES))
        return Case(_body(rid, {**good, extra: 1.0}), C.EXTRA_FEATURE, rid)
    if kind == "unknown_deployment":
        dep = draw(st.text(min_size=1, max_size=20).filter(lambda d: d != "fraud"))
        return Case(_body(rid, good, deployment=dep), C.UNKNOWN_DEPLOYMENT, rid)
    if kind == "empty_id":
        return Case(_body("", good), C.MISSING_REQUEST_ID)
    if kind == "no_id":
        return Case(orjson.dumps({"deployment": "fraud", "features": good}), C.MISSING_REQUEST_ID)
    if kind == "id_not_string":
        return Case(_body(draw(_int64), good), C.MISSING_REQUEST_ID)  # type: ignore[arg-type]
    if kind == "not_object":
        return Case(orjson.dumps(draw(st.lists(_int64, max_size=3))), C.INVALID_REQUEST)
    if kind == "count":
        n = draw(st.integers(min_value=0, max_value=20).filter(lambda k: k != len(FEATURE_NAMES)))
        return Case(_body(rid, [1.0] * n), C.WRONG_FEATURE_COUNT, rid)
    features = draw(st.one_of(st.text(max_size=5), _int64))  # neither object nor list
    return Case(_body(rid, features), C.INVALID_REQUEST, rid)


@st.composite
def batches(draw: st.DrawFn, prefix: str = "h", max_size: int = 25) -> list[Case]:
    """A mix of valid and invalid records, with some request ids used twice."""
    n = draw(st.integers(min_value=1, max_value=max_size))
    tag = draw(st.uuids()).hex[:8]  # ids of one example never meet another example's
    cases: list[Case] = []
    for i in range(n):
        rid = f"{prefix}-{tag}-{i}"
        if cases and draw(st.integers(0, 9)) == 0:  # a duplicated request id
            earlier = draw(st.sampled_from(cases))
            rid = earlier.request_id or rid
        strategy = valid(rid) if draw(st.booleans()) else invalid(rid)
        cases.append(draw(strategy))
    return cases
