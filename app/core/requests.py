"""Turning one raw Kafka record into a request (``ParsedRequest``: an ``InferenceRequest`` that
passed the contract), or into the reason it is not one.

Pure: bytes in, a request or a ``Rejection`` out. The order of checks fixes which code a
record gets when several things are wrong with it: size, UTF-8, JSON, schema, deployment.
Feature checks need the model's signature and happen later (``app.core.features``).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson
from pydantic import ValidationError

from app.core.events import (
    MAX_DEPLOYMENT_CHARS,
    MAX_REQUEST_ID_CHARS,
    DeadLetter,
    DeadLetterCode,
    DeadLetterError,
    InferenceRequest,
    PayloadEncoding,
    SourceOffset,
)
from app.core.oip import OipError, from_oip, is_oip


class RawRecord(NamedTuple):
    """One consumed record, as the Kafka adapter hands it over (a tuple: one per record)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int = 0
    headers: Sequence[tuple[str, bytes]] = ()

    @property
    def source(self) -> SourceOffset:
        return SourceOffset(topic=self.topic, partition=self.partition, offset=self.offset)


class ParsedRequest(NamedTuple):
    """An ``InferenceRequest`` that passed the contract, as the data plane carries it (a
    tuple: building a pydantic model per record cost a quarter of scoring)."""

    request_id: str
    deployment: str
    features: dict[str, Any] | list[Any]
    entity_key: str | None = None
    sent_at: int | None = None
    # An Open Inference Protocol request: each input's datatype (checked against the model's).
    datatypes: dict[str, str] | None = None

    @classmethod
    def of(cls, request: InferenceRequest) -> ParsedRequest:
        return cls(
            request.request_id,
            request.deployment,
            request.features,
            request.entity_key,
            request.sent_at,
        )


@dataclass(frozen=True, slots=True)
class Rejection:
    code: DeadLetterCode
    message: str
    request_id: str | None = None  # when the record had a readable one
    deployment: str | None = None  # the deployment an unknown_deployment rejection named


def parse_request(
    record: RawRecord, known_deployments: frozenset[str], max_bytes: int
) -> ParsedRequest | Rejection:
    value = record.value
    if value is None:
        return Rejection(DeadLetterCode.INVALID_REQUEST, "record has no value (tombstone)")
    if len(value) > max_bytes:
        return Rejection(
            DeadLetterCode.PAYLOAD_TOO_LARGE,
            f"payload is {len(value)} bytes, the limit is {max_bytes}",
        )
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        body = _after_failed_parse(value, exc)
        if isinstance(body, Rejection):
            return body
    if not isinstance(body, dict):
        return Rejection(
            DeadLetterCode.INVALID_REQUEST,
            f"request must be a JSON object, got {type(body).__name__}",
        )
    request_id = body.get("request_id")
    if not isinstance(request_id, str) or not request_id:
        return _without_request_id(body, record, known_deployments)
    request = _well_formed(body, request_id)
    if request is None:  # pydantic judges the rest, and names what is wrong
        try:
            request = ParsedRequest.of(InferenceRequest.model_validate(body))
        except ValidationError as exc:
            return Rejection(
                DeadLetterCode.INVALID_REQUEST, _first_error(exc), _readable(request_id)
            )
    if request.deployment not in known_deployments:
        return Rejection(
            DeadLetterCode.UNKNOWN_DEPLOYMENT,
            f"no deployment named {request.deployment!r}",
            request.request_id,
            request.deployment,
        )
    return request


def _without_request_id(
    body: dict[str, Any], record: RawRecord, known: frozenset[str]
) -> ParsedRequest | Rejection:
    """A body with no usable ``request_id``: an OIP v2 request (its ``id``), or a rejection."""
    if is_oip(body):
        return _oip_request(body, record.headers, known)
    return Rejection(
        DeadLetterCode.MISSING_REQUEST_ID, "request_id is missing, empty or not a string"
    )


def _readable(request_id: str) -> str | None:
    return request_id if len(request_id) <= MAX_REQUEST_ID_CHARS else None


def _oip_request(
    body: dict[str, Any], headers: Sequence[tuple[str, bytes]], known: frozenset[str]
) -> ParsedRequest | Rejection:
    """An Open Inference Protocol v2 request (``app.core.oip``) as a native one."""
    oip_id = body.get("id")
    readable = oip_id if isinstance(oip_id, str) and oip_id else None
    try:
        request_id, deployment, features, datatypes = from_oip(body, headers)
    except OipError as exc:
        return Rejection(exc.code, exc.message, readable and _readable(readable))
    if deployment not in known:
        return Rejection(
            DeadLetterCode.UNKNOWN_DEPLOYMENT,
            f"no deployment named {deployment!r}",
            request_id,
            deployment,
        )
    return ParsedRequest(request_id, deployment, features, None, None, datatypes)


def _after_failed_parse(value: bytes, exc: orjson.JSONDecodeError) -> Any:
    """What a payload orjson refused is: the body a lenient parse still finds, or the
    rejection that names why. Only a failed parse pays for these slower checks."""
    if str(exc).startswith("depth limit exceeded"):  # never handed to a recursive parser
        return Rejection(DeadLetterCode.INVALID_JSON, f"payload nests too deeply: {exc}")
    lenient = _lenient_json(value)
    if isinstance(lenient, Rejection) and not lenient.message:
        return Rejection(lenient.code, f"payload is not JSON: {exc}")
    return lenient


_FIELDS = frozenset(InferenceRequest.model_fields)


def _well_formed(body: dict[str, Any], request_id: str) -> ParsedRequest | None:
    """The request when every field has exactly the type the contract wants, checked by hand
    (the hot path: pydantic validation was an eighth of the worker's scoring time); None for
    anything else, which ``InferenceRequest.model_validate`` then accepts (coercing) or
    rejects. Only accepts what the model would accept unchanged."""
    if not _FIELDS.issuperset(body) or len(request_id) > MAX_REQUEST_ID_CHARS:
        return None
    deployment = body.get("deployment")
    features = body.get("features")
    entity = body.get("entity_key")
    sent_at = body.get("sent_at")
    if (
        type(deployment) is not str
        or not 0 < len(deployment) <= MAX_DEPLOYMENT_CHARS
        or (type(features) is not dict and type(features) is not list)
        or (entity is not None and type(entity) is not str)
        or (sent_at is not None and type(sent_at) is not int)
    ):
        return None
    return ParsedRequest(request_id, deployment, features, entity, sent_at)


def _lenient_json(value: bytes) -> Any:
    """Parse what strict JSON refuses but producers do write (``NaN``, ``Infinity``, ``1e999``),
    so the feature check can name the non-finite value; a ``Rejection`` for the rest."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection(DeadLetterCode.INVALID_UTF8, f"payload is not UTF-8: {exc.reason}")
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return Rejection(DeadLetterCode.INVALID_JSON, "")


def entity_key(request: ParsedRequest, kafka_key: bytes | None) -> str:
    """The routing key: the request's own, else the Kafka key, else the request id."""
    if request.entity_key is not None:
        return request.entity_key
    if kafka_key is not None:
        try:
            return kafka_key.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(kafka_key).decode("ascii")
    return request.request_id


def dead_letter(record: RawRecord, rejection: Rejection, now: int) -> DeadLetter:
    """The dead letter for ``record``; keeps the original payload, as text when it is UTF-8."""
    payload, encoding = _payload_text(record.value or b"")
    return DeadLetter(
        error=DeadLetterError(code=rejection.code, message=rejection.message),
        request_id=rejection.request_id,
        source=record.source,
        payload=payload,
        payload_encoding=encoding,
        rejected_at=now,
    )


def _payload_text(value: bytes) -> tuple[str, PayloadEncoding]:
    try:
        return value.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(value).decode("ascii"), "base64"


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "request"
    return f"{where}: {err['msg']}"
