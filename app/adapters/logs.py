"""Process logging: one JSON object a line when stderr is not a terminal, readable lines on one.

Every entry point calls ``setup_logging`` once. Context that applies to a log line goes in
``extra`` under the names of ``CONTEXT_FIELDS`` (``log.info("...", extra={"deployment": d,
"epoch": e})``), or for a whole block in ``log_context(deployment=..., request_id=...)``; both
end up as top-level fields of the JSON object. Secrets are never printed: any field whose name
says password, secret, token or credential is replaced by ``***``, and so is the value after
``password=`` (and the like) inside a message.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import re
import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TextIO

import orjson

CONTEXT_FIELDS = ("deployment", "epoch", "request_id", "command_id", "worker_id", "partition")
REDACTED = "***"

_SECRET_NAME = re.compile(r"pass(word|wd)?|secret|token|credential|api_?key", re.IGNORECASE)
_SECRET_IN_TEXT = re.compile(
    r"(?P<name>\b[\w.-]*(?:pass(?:word|wd)?|secret|token|credential|api_?key)[\w.-]*)"
    r"(?P<sep>['\"]?\s*[=:]\s*['\"]?)(?P<value>[^\s'\",;)}]+)",
    re.IGNORECASE,
)
# Attributes every LogRecord has: anything else on a record came from ``extra``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}
_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "log_context", default=MappingProxyType({})
)


def redact_text(text: str) -> str:
    """``text`` with the value of every ``password=...``-like assignment replaced."""
    return _SECRET_IN_TEXT.sub(lambda m: f"{m['name']}{m['sep']}{REDACTED}", text)


def redact_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` with secret-named values replaced (nested mappings too)."""
    clean: dict[str, Any] = {}
    for key, value in fields.items():
        if _SECRET_NAME.search(key):
            clean[key] = REDACTED
        elif isinstance(value, dict):
            clean[key] = redact_fields(value)
        elif isinstance(value, str):
            clean[key] = redact_text(value)
        else:
            clean[key] = value
    return clean


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add ``fields`` to every line logged inside the block (this task/thread only)."""
    token = _context.set({**_context.get(), **fields})
    try:
        yield
    finally:
        _context.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts``, ``level``, ``logger``, ``message``, then the
    context (``log_context`` and ``extra`` fields), then ``exc`` if an exception is attached."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_context.get())
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        clean = redact_fields(entry)
        return orjson.dumps(clean, default=str).decode()


class TextFormatter(logging.Formatter):
    """A readable line for terminals, with the context fields appended as ``key=value``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = redact_text(super().format(record))
        fields = {**_context.get()}
        fields.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if fields:
            line += " " + " ".join(f"{k}={v}" for k, v in redact_fields(fields).items())
        return line


def setup_logging(level: int | str = logging.INFO, stream: TextIO | None = None) -> None:
    """Route the root logger to ``stream`` (stderr): JSON lines unless it is a terminal."""
    out = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(out)
    handler.setFormatter(TextFormatter() if out.isatty() else JsonFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
