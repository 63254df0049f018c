"""Topic names are declared once (``app.core.topics.Topic``): no other module of ``app/`` or
``tests/`` writes one as a string literal, and ``topics.yaml`` declares exactly those topics."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from app.adapters.topics import desired_topics, load_topics_file
from app.core.batch_result import Topics
from app.core.topics import Topic, TopicNames
from app.settings import Settings

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


# Where a bare logical name may stand: inside an f-string (prose such as a metric's help).
def unresolved_topics(source: str) -> list[tuple[int, str]]:
    """(line, ``Topic.X``) of every use of a logical topic that is not resolved to its cluster
    name: each ``Topic.X`` must be the argument of a ``.name(...)`` call (``TopicNames.name``,
    e.g. ``settings.topics.name(Topic.REQUESTS)``); a bare one handed to aiokafka or faust would
    ignore ``ROLLOUT_TOPIC_PREFIX``."""
    tree = ast.parse(source)
    allowed: set[int] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "name"
        ):
            allowed.update(id(arg) for arg in node.args)
        elif isinstance(node, ast.FormattedValue):
            allowed.add(id(node.value))
    return [
        (node.lineno, f"Topic.{node.attr}")
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "Topic"
        and node.attr.isupper()
        and id(node) not in allowed
    ]


# Every module that talks to Kafka; app/core/topics.py declares the names.
RESOLVED = [
    path
    for folder in ("app", "tests/integration")
    for path in sorted((REPO / folder).rglob("*.py"))
    if path != DECLARED_IN
]


def test_every_topic_a_client_uses_is_resolved_to_its_cluster_name() -> None:
    found = [
        f"{path.relative_to(REPO)}:{line}: {text}"
        for path in RESOLVED
        for line, text in unresolved_topics(path.read_text())
    ]
    assert found == []


@pytest.mark.parametrize(
    "source",
    [
        "consumer.subscribe([Topic.REQUESTS])\n",
        "await producer.send(Topic.CONTROL, value)\n",
        "tp = TopicPartition(Topic.FEEDBACK, 0)\n",
        "def f(topic: str = Topic.STATE) -> None: ...\n",
        "if record.topic == Topic.FEEDBACK:\n    pass\n",
        "app.topic(Topic.CONTROL, key_type=bytes)\n",
        "names.name(Topic.REQUESTS) + str(Topic.DLQ)\n",
    ],
)
def test_the_check_finds_a_bare_topic(source: str) -> None:
    assert unresolved_topics(source)


@pytest.mark.parametrize(
    "source",
    [
        "consumer.subscribe([settings.topics.name(Topic.REQUESTS)])\n",
        "tp = TopicPartition(self._settings.topics.name(Topic.FEEDBACK), 0)\n",
        'help = f"Records consumed from {Topic.REQUESTS}"\n',
        "Topics.of(TopicNames())\n",
    ],
)
def test_the_check_leaves_resolved_topics_alone(source: str) -> None:
    assert unresolved_topics(source) == []


@pytest.mark.parametrize(
    ("prefix", "topic", "cluster_name"),
    [
        ("", Topic.REQUESTS, Topic.REQUESTS.value),
        ("staging.", Topic.REQUESTS, "staging." + Topic.REQUESTS.value),
        ("team-a_", Topic.CONTROL, "team-a_" + Topic.CONTROL.value),
        ("x" * 200, Topic.ANALYSIS, "x" * 200 + Topic.ANALYSIS.value),
    ],
)
def test_the_resolver_puts_the_prefix_in_front_and_maps_back(
    prefix: str, topic: Topic, cluster_name: str
) -> None:
    names = TopicNames(prefix)
    assert names.name(topic) == cluster_name
    assert names.logical(cluster_name) is topic
    assert len(cluster_name) <= 249  # Kafka's longest topic name


@pytest.mark.parametrize(
    ("prefix", "name"),
    [
        ("staging.", Topic.REQUESTS.value),  # another environment's (unprefixed) topic
        ("", "staging." + Topic.REQUESTS.value),  # the unprefixed environment sees no staging
        ("staging.", "staging.unknown"),
        ("staging.", "prod." + Topic.REQUESTS.value),
    ],
)
def test_a_name_of_another_environment_is_not_ours(prefix: str, name: str) -> None:
    assert TopicNames(prefix).logical(name) is None


@pytest.mark.parametrize("prefix", ["staging/", "a b", "é.", "x" * 201, "prod:"])
def test_a_prefix_kafka_cannot_name_a_topic_with_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="topic prefix"):
        TopicNames(prefix)
    with pytest.raises(ValidationError):
        Settings(topic_prefix=prefix)


def test_the_setting_reads_rollout_topic_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROLLOUT_TOPIC_PREFIX", "staging.")
    assert Settings().topics.name(Topic.STATE) == "staging." + Topic.STATE.value
    monkeypatch.delenv("ROLLOUT_TOPIC_PREFIX")
    assert Settings().topics == TopicNames("")


def test_topics_apply_declares_every_topic_and_group_under_its_prefixed_name() -> None:
    desired = desired_topics(Settings(topic_prefix="staging.", topics_file=REPO / "topics.yaml"))
    assert sorted(t.name for t in desired.topics) == sorted("staging." + t.value for t in Topic)
    declared = load_topics_file(REPO / "topics.yaml")
    assert [tuple("staging." + n for n in g) for g in declared.co_partitioned] == list(
        desired.co_partitioned
    )


def test_the_data_plane_topics_of_a_worker_are_prefixed() -> None:
    topics = Topics.of(TopicNames("staging."))
    assert {topics.requests, topics.predictions, topics.comparisons, topics.dlq} == {
        "staging." + t.value
        for t in (Topic.REQUESTS, Topic.PREDICTIONS, Topic.COMPARISONS, Topic.DLQ)
    }
