"""Structured logs: one JSON object a line off a terminal, context fields, secrets redacted."""

from __future__ import annotations

import io
import logging

import orjson
import pytest

from app.adapters.logs import JsonFormatter, log_context, redact_text, setup_logging


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def restore_root() -> object:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_context_and_extra_fields(restore_root: object) -> None:
    out = io.StringIO()
    setup_logging(logging.INFO, stream=out)
    log = logging.getLogger("rollout.test")
    with log_context(worker_id="w1"):
        log.info("decided %s", "advance", extra={"deployment": "fraud", "epoch": 4})
        with log_context(request_id="r-9"):
            log.warning("bad record")
    log.debug("not at info level")
    first, second = lines(out)
    assert first["message"] == "decided advance" and first["level"] == "info"
    assert (first["deployment"], first["epoch"], first["worker_id"]) == ("fraud", 4, "w1")
    assert second["request_id"] == "r-9" and second["worker_id"] == "w1"
    assert "request_id" not in first


def test_a_terminal_gets_readable_lines(restore_root: object) -> None:
    out = Tty()
    setup_logging("INFO", stream=out)
    logging.getLogger("rollout.test").info("hello", extra={"deployment": "fraud"})
    text = out.getvalue()
    assert "hello deployment=fraud" in text and not text.startswith("{")


@pytest.mark.parametrize(
    ("message", "leaked"),
    [
        ("connecting with sasl_password=hunter2 to kafka", "hunter2"),
        ('config {"ROLLOUT_SASL_PASSWORD": "hunter2"}', "hunter2"),
        ("secret: s3cr3t-value, next", "s3cr3t-value"),
        ("api_key=abc123", "abc123"),
    ],
)
def test_secrets_in_messages_are_redacted(message: str, leaked: str) -> None:
    clean = redact_text(message)
    assert leaked not in clean and "***" in clean


def test_secret_named_fields_are_redacted_and_others_kept() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "login as %s", ("bob",), None)
    record.sasl_password = "hunter2"
    record.settings = {"bootstrap": "k:9092", "token": "t0k"}
    entry = orjson.loads(JsonFormatter().format(record))
    assert entry["message"] == "login as bob"
    assert entry["sasl_password"] == "***"
    assert entry["settings"] == {"bootstrap": "k:9092", "token": "***"}
