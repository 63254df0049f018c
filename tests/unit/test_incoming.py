"""Reading what the controller must answer even when it is malformed (app/core/incoming.py)."""

from __future__ import annotations

import pytest

from app.core.events import ControlCommand, ModelPublished
from app.core.incoming import key_text, loose_fields, parse


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "empty command (tombstone)"),
        (b"{nope", "command is not valid JSON"),
        (b'{"command_id": "c", "deployment": "d"}', "invalid command: action: Field required"),
        (b'{"command_id": "c", "deployment": "d", "action": "fly"}', "invalid command: action"),
    ],
)
def test_a_malformed_command_is_refused_with_what_is_wrong(
    value: bytes | None, reason: str
) -> None:
    event, problem = parse(ControlCommand, value, "command")
    assert event is None and problem is not None and problem.startswith(reason)


def test_a_good_record_parses() -> None:
    body = b'{"command_id": "c", "deployment": "d", "action": "pause"}'
    event, problem = parse(ControlCommand, body, "command")
    assert problem is None and event is not None and event.deployment == "d"
    _, why = parse(ModelPublished, b"[]", "publication")
    assert why is not None and why.startswith("invalid publication")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b'{"publish_id": "p1", "deployment": 3, "published_by": ""}', {"publish_id": "p1"}),
        (b'{"publish_id": "' + b"x" * 129 + b'"}', {}),
        (b"[1, 2]", {}),
        (b"\xff", {}),
        (None, {}),
    ],
)
def test_only_short_strings_are_echoed(value: bytes | None, expected: dict[str, str]) -> None:
    assert loose_fields(value, ("publish_id", "deployment", "published_by")) == expected


@pytest.mark.parametrize(("key", "text"), [(b"fraud", "fraud"), (None, None), (b"\xff", None)])
def test_keys_as_text(key: bytes | None, text: str | None) -> None:
    assert key_text(key) == text
