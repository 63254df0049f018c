"""``acls.yaml`` as data: what each role may do, and the plan against a cluster's ACLs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from app.core.acl_spec import (
    AclBinding,
    Operation,
    PatternType,
    ResourceType,
    bindings,
    declared_topics,
    parse_acls,
    plan,
)
from app.core.topics import Topic, TopicNames

REPO = Path(__file__).resolve().parents[2]
ACLS = parse_acls(yaml.safe_load((REPO / "acls.yaml").read_text()))


def topic_acl(principal: str, topic: str, op: Operation) -> AclBinding:
    return AclBinding(principal, ResourceType.TOPIC, topic, PatternType.LITERAL, op)


def writers(topic: str) -> set[str]:
    return {
        b.principal
        for b in bindings(ACLS)
        if b.resource_name == topic and b.operation is Operation.WRITE
    }


def test_the_file_names_only_rollout_topics() -> None:
    assert declared_topics(ACLS) <= {t.value for t in Topic}


@pytest.mark.parametrize(
    ("topic", "principals"),
    [
        (Topic.CONTROL, {"User:rollout-operator", "User:rollout-controller"}),  # + dashboard
        (Topic.REQUESTS, {"User:rollout-producer"}),
        (Topic.FEEDBACK, {"User:rollout-producer"}),
        (Topic.PREDICTIONS, {"User:rollout-worker"}),
        (Topic.STATE, {"User:rollout-controller"}),
        (Topic.EVENTS, {"User:rollout-controller"}),
    ],
)
def test_who_writes_each_topic(topic: Topic, principals: set[str]) -> None:
    assert writers(topic) == principals


def test_only_the_operator_role_and_the_dashboard_write_the_control_topic() -> None:
    roles = {name for name, role in ACLS.roles.items() if Topic.CONTROL in role.topics.write}
    assert roles == {"operator", "dashboard"}


def test_transactional_ids_and_groups_are_prefixes_or_names() -> None:
    worker = {b for b in bindings(ACLS) if b.principal == "User:rollout-worker"}
    assert (
        AclBinding(
            "User:rollout-worker",
            ResourceType.TRANSACTIONAL_ID,
            "rollout-worker-",
            PatternType.PREFIXED,
            Operation.WRITE,
        )
        in worker
    )
    assert (
        AclBinding(
            "User:rollout-worker",
            ResourceType.GROUP,
            "rollout-workers",
            PatternType.LITERAL,
            Operation.READ,
        )
        in worker
    )


def test_an_environment_prefix_applies_to_topics_groups_and_transactional_ids() -> None:
    names = TopicNames("staging.")
    prefixed = bindings(ACLS, names.declared)
    assert len(prefixed) == len(bindings(ACLS))
    assert all(b.resource_name.startswith("staging.") for b in prefixed)
    worker = {(b.resource_type, b.resource_name, b.pattern_type) for b in prefixed}
    assert (ResourceType.GROUP, "staging.rollout-workers", PatternType.LITERAL) in worker
    assert (
        ResourceType.TRANSACTIONAL_ID,
        names.scoped("rollout-worker-"),
        PatternType.PREFIXED,
    ) in worker


def test_the_plan_creates_what_is_missing_and_reports_what_is_not_declared() -> None:
    a = topic_acl("User:a", "t", Operation.READ)
    b = topic_acl("User:a", "t", Operation.WRITE)
    extra = topic_acl("User:a", "u", Operation.WRITE)
    stranger = topic_acl("User:z", "t", Operation.WRITE)
    result = plan({a, b}, [b, extra, stranger])
    assert result.to_create == (a,)
    assert result.present == (b,)
    assert result.undeclared == (extra,)  # another principal's ACLs are not ours to report


@pytest.mark.parametrize(
    "data",
    [
        {"roles": {"x": {"principals": []}}},
        {"roles": {"x": {"principals": ["alice"]}}},
        {"roles": {"x": {"principals": ["User:a"], "topics": {"delete": ["t"]}}}},
        {"roles": {"x": {"principals": ["User:a"], "colour": "red"}}},
    ],
)
def test_a_bad_file_is_refused(data: object) -> None:
    with pytest.raises(ValueError):
        parse_acls(data)
