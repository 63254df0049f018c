"""Event contracts: symmetric encode/decode and the records they refuse."""

from __future__ import annotations

import orjson
import pytest
from pydantic import BaseModel, ValidationError

from app.core.events import (
    Action,
    ArmResult,
    Comparison,
    ControlCommand,
    DeadLetter,
    DeadLetterCode,
    DeadLetterError,
    DecisionEvent,
    DeploymentState,
    Evidence,
    Feedback,
    InferenceRequest,
    Mode,
    ModelIdentity,
    ModelOutput,
    ModelRef,
    Phase,
    Prediction,
    Role,
    SourceOffset,
    StateSummary,
    decode,
    encode,
)
from app.core.topics import Topic

SHA = "ab" * 32
REF = ModelRef(name="fraud", version="2", uri="fraud/2/model.onnx", sha256=SHA)
OUT = ModelOutput(label="fraud", scores=[0.25, 0.75])

EXAMPLES: list[BaseModel] = [
    InferenceRequest(request_id="r1", deployment="fraud", features={"amount": 1.5}),
    InferenceRequest(
        request_id="r2", deployment="fraud", features=[1, 2.5], entity_key="c", sent_at=5
    ),
    Prediction(
        request_id="r1",
        deployment="fraud",
        entity_key="card-1",
        model=ModelIdentity(name="fraud", version="2", sha256=SHA),
        role=Role.CANDIDATE,
        mode=Mode.CANARY,
        epoch=3,
        output=OUT,
        latency_ms=0.02,
        served_at=1,
    ),
    Comparison(
        request_id="r1",
        deployment="fraud",
        mode=Mode.SHADOW,
        epoch=4,
        source=SourceOffset(topic=Topic.REQUESTS, partition=2, offset=99),
        served_by=Role.PRODUCTION,
        production=ArmResult(version="1", sha256=SHA, output=OUT, latency_ms=0.01),
        candidate=ArmResult(version="2", sha256=SHA, output=None, latency_ms=None, error="boom"),
        agree=False,
        score_delta=0.0,
    ),
    Feedback(request_id="r1", deployment="fraud", label="legit", observed_at=7),
    DeadLetter(
        error=DeadLetterError(code=DeadLetterCode.INVALID_JSON, message="bad"),
        source=SourceOffset(topic=Topic.REQUESTS, partition=0, offset=1),
        payload="e30=",
        payload_encoding="base64",
        rejected_at=9,
    ),
    ControlCommand(
        command_id="c1",
        deployment="fraud",
        action=Action.DEPLOY,
        version="2",
        mode=Mode.CANARY,
        weight=0.1,
        policy={"alpha": 0.01},
        issued_by="me",
    ),
    DeploymentState(
        deployment="fraud",
        epoch=2,
        mode=Mode.CANARY,
        phase=Phase.PROGRESSING,
        production=REF,
        candidate=REF,
        canary_weight=0.25,
        history=[REF],
    ),
    DecisionEvent(
        deployment="fraud",
        epoch=2,
        action="promote",
        command_id=None,
        accepted=True,
        reason="evidence",
        decided_by="controller",
        **{"from": StateSummary(mode=Mode.CANARY, phase=Phase.PROGRESSING, weight=0.5)},
        to=StateSummary(mode=Mode.CANARY, phase=Phase.STABLE, weight=0.0),
        evidence=Evidence(samples={"candidate": 500}, metrics={"agree": 0.9}),
    ),
]


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: type(e).__name__)
def test_encode_then_decode_gives_the_same_event(event: BaseModel) -> None:
    wire = encode(event)
    assert decode(type(event), wire) == event
    assert encode(decode(type(event), wire)) == wire


def test_decision_event_uses_the_contract_field_name_from() -> None:
    wire = orjson.loads(encode(EXAMPLES[-1]))
    assert "from" in wire and "from_" not in wire
    assert wire["from"]["weight"] == 0.5


REJECTED: list[tuple[type[BaseModel], bytes, str]] = [
    (InferenceRequest, b'{"deployment": "fraud", "features": []}', "request_id"),
    (InferenceRequest, b'{"request_id": "", "deployment": "fraud", "features": []}', "request_id"),
    (
        InferenceRequest,
        b'{"request_id": "' + b"x" * 129 + b'", "deployment": "f", "features": []}',
        "request_id",
    ),
    (InferenceRequest, b'{"request_id": "a", "deployment": "f", "features": "x"}', "features"),
    (InferenceRequest, b'{"request_id": "a", "deployment": "f", "features": [], "zz": 1}', "zz"),
    (InferenceRequest, b'{"request_id": 5, "deployment": "f", "features": []}', "request_id"),
    (InferenceRequest, b"[1, 2]", "InferenceRequest"),
    (InferenceRequest, b"not json", "json"),
    (ControlCommand, b'{"command_id": "c", "deployment": "f", "action": "explode"}', "action"),
    (
        ControlCommand,
        b'{"command_id": "c", "deployment": "f", "action": "set_weight", "weight": 1.5}',
        "weight",
    ),
    (
        ControlCommand,
        b'{"command_id": "c", "deployment": "f", "action": "set_weight", "weight": -0.1}',
        "weight",
    ),
    (
        ControlCommand,
        b'{"command_id": "c", "deployment": "f", "action": "deploy", "mode": "yolo"}',
        "mode",
    ),
    (Prediction, b'{"request_id": "r"}', "deployment"),
    (DeadLetter, b'{"error": {"code": "nope", "message": ""}}', "code"),
]


@pytest.mark.parametrize(("kind", "wire", "field"), REJECTED)
def test_decode_rejects_records_that_break_the_contract(
    kind: type[BaseModel], wire: bytes, field: str
) -> None:
    with pytest.raises(ValidationError) as info:
        decode(kind, wire)
    assert field.lower() in str(info.value).lower()
