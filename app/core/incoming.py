"""Reading a record the controller must answer even when it is malformed (a command on
``deployments.control``, a publication on ``models.published``): the event, or why not; the
key as text; and the string fields a refusal can echo so that its sender finds the answer.
Pure: no I/O."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

import orjson
from pydantic import BaseModel, ValidationError

E = TypeVar("E", bound=BaseModel)

MAX_ECHOED_CHARS = 128


def parse(kind: type[E], value: bytes | None, what: str) -> tuple[E | None, str | None]:
    """``(event, None)``, or ``(None, why)`` naming ``what`` was wrong with it."""
    if value is None:
        return None, f"empty {what} (tombstone)"
    try:
        return kind.model_validate_json(value), None
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or what
        if err["type"] == "json_invalid":
            return None, f"{what} is not valid JSON: {err['msg']}"
        return None, f"invalid {what}: {where}: {err['msg']}"


def key_text(key: bytes | None) -> str | None:
    """The record's key as UTF-8 text (None: no key, or not UTF-8)."""
    if key is None:
        return None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return None


def loose_fields(value: bytes | None, names: Iterable[str]) -> dict[str, str]:
    """Those of ``names`` that the value, read as a JSON object, holds as short strings."""
    try:
        body = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(body, dict):
        return {}
    return {
        name: body[name]
        for name in names
        if isinstance(body.get(name), str) and 0 < len(body[name]) <= MAX_ECHOED_CHARS
    }
