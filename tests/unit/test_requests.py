"""Raw record → InferenceRequest or the reason it is not one (a table)."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from app.core.events import DeadLetterCode, InferenceRequest
from app.core.requests import (
    ParsedRequest,
    RawRecord,
    Rejection,
    dead_letter,
    entity_key,
    parse_request,
)
from app.core.topics import Topic

KNOWN = frozenset({"fraud"})
OK = b'{"request_id": "r1", "deployment": "fraud", "features": [1, 2]}'


def parse(value: bytes | None, max_bytes: int = 4096) -> InferenceRequest | Rejection:
    return parse_request(RawRecord(Topic.REQUESTS, 3, 42, b"k", value), KNOWN, max_bytes)


CASES: list[tuple[str, bytes | None, DeadLetterCode | None]] = [
    ("valid", OK, None),
    ("tombstone", None, DeadLetterCode.INVALID_REQUEST),
    ("too large", OK + b" " * 5000, DeadLetterCode.PAYLOAD_TOO_LARGE),
    ("invalid utf-8", b'{"request_id": "\xc3\x28"}', DeadLetterCode.INVALID_UTF8),
    ("truncated json", b'{"request_id": "r1"', DeadLetterCode.INVALID_JSON),
    ("garbage", b"\x00\x01hello", DeadLetterCode.INVALID_JSON),
    ("json array", b"[1, 2, 3]", DeadLetterCode.INVALID_REQUEST),
    ("json string", b'"hello"', DeadLetterCode.INVALID_REQUEST),
    (
        "deep nesting",
        b'{"request_id": "r", "x": ' + b"[" * 40 + b"]" * 40 + b"}",
        DeadLetterCode.INVALID_REQUEST,
    ),
    (
        "missing request_id",
        b'{"deployment": "fraud", "features": []}',
        DeadLetterCode.MISSING_REQUEST_ID,
    ),
    (
        "empty request_id",
        b'{"request_id": "", "deployment": "fraud", "features": []}',
        DeadLetterCode.MISSING_REQUEST_ID,
    ),
    (
        "numeric request_id",
        b'{"request_id": 7, "deployment": "fraud", "features": []}',
        DeadLetterCode.MISSING_REQUEST_ID,
    ),
    ("no features", b'{"request_id": "r", "deployment": "fraud"}', DeadLetterCode.INVALID_REQUEST),
    (
        "unknown field",
        b'{"request_id": "r", "deployment": "fraud", "features": [], "x": 1}',
        DeadLetterCode.INVALID_REQUEST,
    ),
    (
        "unknown deployment",
        b'{"request_id": "r", "deployment": "nope", "features": []}',
        DeadLetterCode.UNKNOWN_DEPLOYMENT,
    ),
    # Not strict JSON, but what Python's json.dumps writes: parsed, so features can say why.
    ("python NaN", b'{"request_id": "r", "deployment": "fraud", "features": [NaN]}', None),
    (
        "overflowing number",
        b'{"request_id": "r", "deployment": "fraud", "features": [1e999]}',
        None,
    ),
]


@pytest.mark.parametrize(("name", "value", "code"), CASES, ids=[c[0] for c in CASES])
def test_parse_table(name: str, value: bytes | None, code: DeadLetterCode | None) -> None:
    result = parse(value)
    if code is None:
        assert isinstance(result, ParsedRequest)
    else:
        assert isinstance(result, Rejection)
        assert result.code is code
        assert result.message


@pytest.mark.parametrize(
    ("body", "key", "expected"),
    [
        (
            b'{"request_id": "r", "deployment": "fraud", "features": [], "entity_key": "e"}',
            b"k",
            "e",
        ),
        (OK, b"card-9", "card-9"),
        (OK, None, "r1"),
        (OK, b"\xff\xfe", base64.b64encode(b"\xff\xfe").decode()),
    ],
)
def test_entity_key_prefers_request_then_kafka_key_then_request_id(
    body: bytes, key: bytes | None, expected: str
) -> None:
    request = parse(body)
    assert isinstance(request, ParsedRequest)
    assert entity_key(request, key) == expected


def test_dead_letter_keeps_the_payload_and_its_source() -> None:
    record = RawRecord(Topic.REQUESTS, 3, 42, b"k", b"\xff\x00garbage")
    rejection = parse_request(record, KNOWN, 4096)
    assert isinstance(rejection, Rejection)
    letter = dead_letter(record, rejection, now=123)
    assert letter.payload_encoding == "base64"
    assert base64.b64decode(letter.payload) == b"\xff\x00garbage"
    assert (letter.source.partition, letter.source.offset) == (3, 42)
    text = dead_letter(RawRecord("t", 0, 1, None, b"{oops"), rejection, now=1)
    assert (text.payload, text.payload_encoding) == ("{oops", "utf-8")


_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
_FIELD_VALUES = {
    "request_id": st.text(min_size=1, max_size=140) | _JSON_VALUES,
    "deployment": st.text(max_size=140) | _JSON_VALUES,
    "features": _JSON_VALUES,
    "entity_key": st.none() | st.text(max_size=5) | _JSON_VALUES,
    "sent_at": st.none() | st.integers(-(2**63), 2**63 - 1) | _JSON_VALUES,
    "extra": _JSON_VALUES,
}


@given(
    st.fixed_dictionaries(
        {},
        optional={name: values for name, values in _FIELD_VALUES.items()},
    )
)
@settings(max_examples=400, deadline=None)
def test_the_hand_checked_fast_path_agrees_with_the_contract(body: dict[str, Any]) -> None:
    # parse_request skips pydantic for requests whose fields have exactly the contract's
    # types; whatever it builds that way must be what pydantic would have built, and whatever
    # pydantic refuses it must refuse too.
    record = RawRecord(Topic.REQUESTS, 0, 0, None, orjson.dumps(body))
    got = parse_request(record, frozenset({"fraud"} | {str(body.get("deployment"))}), 1 << 20)
    try:
        expected: InferenceRequest | None = InferenceRequest.model_validate(body)
    except ValidationError:
        expected = None
    if isinstance(got, ParsedRequest):
        assert expected is not None and got == ParsedRequest.of(expected)
    elif expected is not None:  # refused although the contract accepts it: only for the id
        assert isinstance(got, Rejection) and got.code is DeadLetterCode.MISSING_REQUEST_ID
