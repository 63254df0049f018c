"""Table tests for the pure topics-file model and planner."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from app.core.topic_spec import (
    Difference,
    ExistingTopic,
    TopicsFile,
    TopicSpec,
    config_value,
    parse_topics,
    plan,
)
from app.core.topics import Topic

REPO = Path(__file__).resolve().parents[2]

# topics.yaml declares what app.core.topics.Topic names (the design's topics and the
# controller's evidence snapshots, see app/controller/partition_snapshot.py).
DESIGN_TOPICS = {t.value for t in Topic}


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, "true"), (False, "false"), (-1, "-1"), (604800000, "604800000"), (0.1, "0.1"),
     (2.0, "2"), ("compact", "compact")],
)  # fmt: skip
def test_config_value(value: Any, expected: str) -> None:
    assert config_value(value) == expected


def test_repo_topics_yaml_declares_every_design_topic() -> None:
    spec = parse_topics(yaml.safe_load((REPO / "topics.yaml").read_text()))
    by_name = spec.by_name()
    assert set(by_name) == DESIGN_TOPICS
    assert by_name[Topic.STATE].configs["cleanup.policy"] == "compact"
    assert by_name[Topic.EVENTS].configs["cleanup.policy"] == "delete"
    assert by_name[Topic.EVENTS].configs["retention.ms"] == "-1"
    assert by_name[Topic.REQUESTS].partitions == 6
    group = spec.co_partitioned[0]
    assert {by_name[n].partitions for n in group} == {3}
    assert len(group) == 7  # the control plane and the publications keyed by deployment
    assert Topic.PUBLISHED in group and Topic.ARTIFACTS not in group
    assert by_name[Topic.ARTIFACTS].configs["cleanup.policy"] == "compact"
    assert by_name[Topic.ANALYSIS].configs["cleanup.policy"] == "compact"
    assert all(t.replication_factor == 1 for t in spec.topics)


def test_defaults_are_merged_key_by_key() -> None:
    spec = parse_topics(
        {
            "defaults": {"replication_factor": 3, "configs": {"a": 1, "b": "x"}},
            "topics": [{"name": "t", "partitions": 2, "configs": {"b": "y"}}],
        }
    )
    assert spec.topics[0] == TopicSpec(
        name="t", partitions=2, replication_factor=3, configs={"a": "1", "b": "y"}
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"topics": [{"name": "a", "partitions": 1}, {"name": "a", "partitions": 1}]},
         "more than once"),
        ({"topics": [{"name": "a", "partitions": 0}]}, "greater than or equal"),
        ({"topics": [{"name": "bad name", "partitions": 1}]}, "pattern"),
        ({"topics": [{"name": "a", "partitions": 1, "extra": 1}]}, "Extra inputs"),
        ({"topics": [{"name": "a", "partitions": 1}, {"name": "b", "partitions": 2}],
          "co_partitioned": [["a", "b"]]}, "differ in partitions"),
        ({"topics": [{"name": "a", "partitions": 1}], "co_partitioned": [["a", "zz"]]},
         "undeclared"),
    ],
)  # fmt: skip
def test_invalid_files_are_rejected(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        parse_topics(data)


_A = TopicSpec(name="a", partitions=3, configs={"cleanup.policy": "compact", "segment.ms": "10"})
_B = TopicSpec(name="b", partitions=6)
_DESIRED = TopicsFile(topics=(_A, _B))


def _live(name: str, partitions: int, rf: int = 1, /, **configs: str) -> ExistingTopic:
    return ExistingTopic(name=name, partitions=partitions, replication_factor=rf, configs=configs)


@pytest.mark.parametrize(
    ("existing", "create", "present", "diffs"),
    [
        pytest.param({}, ["a", "b"], [], [], id="empty cluster: create all"),
        pytest.param(
            {"a": _live("a", 3, **{"cleanup.policy": "compact", "segment.ms": "10"}),
             "b": _live("b", 6), "other": _live("other", 1)},
            [], ["a", "b"], [], id="all present and equal; undeclared ignored"),
        pytest.param(
            {"a": _live("a", 3, **{"cleanup.policy": "compact", "segment.ms": "10"})},
            ["b"], ["a"], [], id="one missing"),
        pytest.param(
            {"a": _live("a", 5, 2, **{"cleanup.policy": "delete"}), "b": _live("b", 6)},
            [], ["a", "b"],
            [("a", "partitions", "3", "5"), ("a", "replication_factor", "1", "2"),
             ("a", "config:cleanup.policy", "compact", "delete"),
             ("a", "config:segment.ms", "10", None)],
            id="differences reported in stable order"),
    ],
)  # fmt: skip
def test_plan(
    existing: dict[str, ExistingTopic],
    create: list[str],
    present: list[str],
    diffs: list[tuple[str, str, str, str | None]],
) -> None:
    result = plan(_DESIRED, existing)
    assert [t.name for t in result.to_create] == create
    assert list(result.present) == present
    assert list(result.differences) == [
        Difference(topic=t, field=f, desired=d, actual=a) for t, f, d, a in diffs
    ]


def test_plan_is_idempotent_after_creation() -> None:
    first = plan(_DESIRED, {})
    live = {
        t.name: _live(t.name, t.partitions, t.replication_factor, **t.configs)
        for t in first.to_create
    }
    second = plan(_DESIRED, live)
    assert second.to_create == ()
    assert second.differences == ()


def test_difference_reads_well() -> None:
    diff = Difference(topic="a", field="partitions", desired="3", actual="5")
    assert str(diff) == "a: partitions is '5', declared '3'"
