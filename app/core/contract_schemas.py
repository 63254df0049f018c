"""JSON Schema of every event Rollout reads or writes on Kafka, generated from the pydantic
models of ``app.core.events`` (the one source of truth for the wire contract).

Pure: ``schemas()`` returns ``{file name: schema}`` and ``render`` gives a schema's canonical
text (sorted keys, two-space indent, newline at the end), so the committed files in
``schemas/`` can be compared byte for byte. ``rollout schemas`` writes them;
``tests/unit/test_contract_schemas.py`` fails when they drift from the models.

The schemas describe what ``decode`` accepts (validation mode: a field with a default may be
omitted); Rollout itself always writes every field. Nested types (``ModelRef``,
``ArmResult``, ``Policy`` ...) are under each schema's ``$defs``.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from app.core.events import (
    Comparison,
    ControlCommand,
    DeadLetter,
    DecisionEvent,
    DeploymentState,
    Feedback,
    InferenceRequest,
    ModelPublished,
    Prediction,
    ShedReport,
)

DIALECT = "https://json-schema.org/draft/2020-12/schema"

# Every record value on a topic, in the order the docs present them.
EVENTS: tuple[type[BaseModel], ...] = (
    InferenceRequest,
    Prediction,
    Comparison,
    ShedReport,
    Feedback,
    DeadLetter,
    ControlCommand,
    DeploymentState,
    DecisionEvent,
    ModelPublished,
)


def schema(event: type[BaseModel]) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``event``'s wire form (contract field names)."""
    return {"$schema": DIALECT, **event.model_json_schema(by_alias=True, mode="validation")}


def file_name(event: type[BaseModel]) -> str:
    return f"{event.__name__}.json"


def schemas() -> dict[str, dict[str, Any]]:
    """``{"<EventName>.json": schema}`` for every event of ``EVENTS``."""
    return {file_name(event): schema(event) for event in EVENTS}


def render(document: dict[str, Any]) -> str:
    """The canonical text of a schema file: stable across runs and platforms."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
