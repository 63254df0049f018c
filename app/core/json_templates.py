"""A record's JSON encoded once with holes for what varies per row, then filled per row.

The data plane writes one or two records per request whose fields mostly repeat across a
batch: deployment, mode, epoch, each model's name, version and sha256, an arm's latency.
A ``Template`` is orjson's encoding of such a record with ``HOLE`` in each per-row field
(``INT_HOLE`` for an integer), kept as a bytes format; ``fill`` puts a row's values into the
holes in order: JSON for a ``HOLE`` (``orjson.dumps`` of the value, or ``JSON_BOOL[b]``), an
``int`` for an ``INT_HOLE``. The result is the bytes
``orjson.dumps`` gives for the record with those values (same key order, same number
format), without building and walking a dict per row. The contract tests
(``tests/unit/test_record_bytes.py``) hold the records built this way against
``app.core.events``.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

# What marks a hole in the record given to ``Template``: never in a contract's constant parts
# (names, versions and topic names are restricted to printable characters, hashes are hex).
HOLE = "\x00hole\x00"
INT_HOLE = "\x00int\x00"
_HOLE_JSON = orjson.dumps(HOLE)
_INT_HOLE_JSON = orjson.dumps(INT_HOLE)

JSON_BOOL = (b"false", b"true")  # JSON_BOOL[flag]
JSON_NULL = b"null"


class Template:
    """``record`` (a dict of the contract, a hole where a row's value goes) as a format."""

    __slots__ = ("_format", "holes")

    def __init__(self, record: Mapping[str, Any]) -> None:
        encoded = orjson.dumps(record)
        self.holes = encoded.count(_HOLE_JSON) + encoded.count(_INT_HOLE_JSON)
        # ``bytes % tuple`` joins the fragments and values in one call (faster than a join;
        # ``%d`` writes an int as orjson does).
        self._format = (
            encoded.replace(b"%", b"%%").replace(_HOLE_JSON, b"%s").replace(_INT_HOLE_JSON, b"%d")
        )

    def fill(self, values: tuple[bytes | int, ...]) -> bytes:
        """The record with ``values`` (one per hole, in order) in its holes."""
        return self._format % values
