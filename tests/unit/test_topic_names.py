"""Topic names are declared once (``app.core.topics.Topic``): no other module of ``app/`` or
``tests/`` writes one as a string literal, and ``topics.yaml`` declares exactly those topics."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from app.core.topics import Topic

REPO = Path(__file__).resolve().parents[2]
DECLARED_IN = REPO / "app" / "core" / "topics.py"
NAME = re.compile(r"(?<![\w.-])(" + "|".join(re.escape(t.value) for t in Topic) + r")(?![\w-])")


def docstrings(tree: ast.AST) -> set[int]:
    """``id`` of every docstring node: prose about a topic is not a use of its name."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def topic_literals(source: str) -> list[tuple[int, str]]:
    """(line, text) of every string constant, f-string part included, that holds a topic's
    name; docstrings and comments aside."""
    tree = ast.parse(source)
    skip = docstrings(tree)
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in skip
        and NAME.search(node.value)
    ]


def test_no_topic_name_is_written_outside_its_declaration() -> None:
    found = [
        f"{path.relative_to(REPO)}:{line}: {text!r}"
        for folder in ("app", "tests")
        for path in sorted((REPO / folder).rglob("*.py"))
        if path != DECLARED_IN
        for line, text in topic_literals(path.read_text())
    ]
    assert found == []


# The samples are built from the enum, so that this module holds no topic name itself.
@pytest.mark.parametrize(
    "source",
    [
        f'consumer.subscribe(["{Topic.REQUESTS}"])\n',
        f'TOPIC = "{Topic.STATE}"\n',
        'message = f"lagging on ' + Topic.DLQ + ' by {n}"\n',
        f'def f() -> str:\n    """Reads {Topic.EVENTS}."""\n    return "{Topic.EVENTS}"\n',
    ],
)
def test_the_check_finds_a_topic_name_in_code(source: str) -> None:
    assert topic_literals(source)


@pytest.mark.parametrize(
    "source",
    [
        f'"""Reads ``{Topic.REQUESTS}``."""\n',
        f"# writes to {Topic.PREDICTIONS}\nx = 1\n",
        f'TOPIC = Topic.REQUESTS\nother = "{Topic.REQUESTS}x"\n',
        f'class C:\n    """Owns {Topic.STATE}."""\n',
    ],
)
def test_the_check_leaves_prose_and_the_enum_alone(source: str) -> None:
    assert topic_literals(source) == []


def test_topics_yaml_declares_exactly_the_topics_of_the_enum() -> None:
    data = yaml.safe_load((REPO / "topics.yaml").read_text())
    assert sorted(t["name"] for t in data["topics"]) == sorted(t.value for t in Topic)
    for group in data.get("co_partitioned", []):
        assert set(group) <= {t.value for t in Topic}
