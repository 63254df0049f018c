"""Raw record → InferenceRequest or the reason it is not one (a table)."""

from __future__ import annotations

import base64

import pytest

from app.core.events import DeadLetterCode, InferenceRequest
from app.core.requests import RawRecord, Rejection, dead_letter, entity_key, parse_request

KNOWN = frozenset({"fraud"})
OK = b'{"request_id": "r1", "deployment": "fraud", "features": [1, 2]}'


def parse(value: bytes | None, max_bytes: int = 4096) -> InferenceRequest | Rejection:
    return parse_request(RawRecord("inference.requests", 3, 42, b"k", value), KNOWN, max_bytes)


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
        assert isinstance(result, InferenceRequest)
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
    assert isinstance(request, InferenceRequest)
    assert entity_key(request, key) == expected


def test_dead_letter_keeps_the_payload_and_its_source() -> None:
    record = RawRecord("inference.requests", 3, 42, b"k", b"\xff\x00garbage")
    rejection = parse_request(record, KNOWN, 4096)
    assert isinstance(rejection, Rejection)
    letter = dead_letter(record, rejection, now=123)
    assert letter.payload_encoding == "base64"
    assert base64.b64decode(letter.payload) == b"\xff\x00garbage"
    assert (letter.source.partition, letter.source.offset) == (3, 42)
    text = dead_letter(RawRecord("t", 0, 1, None, b"{oops"), rejection, now=1)
    assert (text.payload, text.payload_encoding) == ("{oops", "utf-8")
