"""``topics.yaml`` applied to a real broker: creates what is missing with the declared partitions
and configs, is idempotent, and reports (never alters) differences."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from app.adapters.topics import apply_topics, describe_topics, desired_topics, load_topics_file
from app.core.topic_spec import Difference, TopicsFile, TopicSpec
from app.core.topics import Topic
from app.settings import Settings

pytestmark = pytest.mark.kafka


@pytest.fixture
async def admin(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaAdminClient]:
    client = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await client.start()
    try:
        yield client
    finally:
        await client.close()


def _renamed(desired: TopicsFile, prefix: str) -> TopicsFile:
    return TopicsFile(
        topics=tuple(t.model_copy(update={"name": prefix + t.name}) for t in desired.topics)
    )


async def test_repo_topics_are_applied(
    kafka_bootstrap: str, settings: Settings, admin: AIOKafkaAdminClient
) -> None:
    desired = desired_topics(settings)
    result = await apply_topics(kafka_bootstrap, desired)  # the session fixture applied it once
    assert result.created == ()
    assert set(result.present) == set(desired.by_name())
    assert result.differences == ()
    live = await describe_topics(admin, desired.by_name())
    assert live[settings.topics.name(Topic.STATE)].configs["cleanup.policy"] == "compact"
    assert live[settings.topics.name(Topic.EVENTS)].configs["retention.ms"] == "-1"


async def test_apply_creates_declared_topics_then_nothing(
    kafka_bootstrap: str, settings: Settings, admin: AIOKafkaAdminClient
) -> None:
    prefix = f"test.{uuid.uuid4().hex[:8]}."
    desired = _renamed(load_topics_file(settings.topics_file), prefix)
    names = [t.name for t in desired.topics]
    try:
        first = await apply_topics(kafka_bootstrap, desired)
        assert sorted(first.created) == sorted(names)
        assert first.present == () and first.differences == ()

        live = await describe_topics(admin, names)
        for spec in desired.topics:
            topic = live[spec.name]
            assert topic.partitions == spec.partitions
            assert topic.replication_factor == spec.replication_factor
            for key, value in spec.configs.items():
                assert topic.configs[key] == value, (spec.name, key)

        second = await apply_topics(kafka_bootstrap, desired)
        assert second.created == ()
        assert sorted(second.present) == sorted(names)
        assert second.differences == ()
    finally:
        await admin.delete_topics(names)


async def test_differences_are_reported_not_altered(
    kafka_bootstrap: str, admin: AIOKafkaAdminClient
) -> None:
    name = f"test.{uuid.uuid4().hex[:8]}.by-hand"
    await admin.create_topics([NewTopic(name, 2, 1, topic_configs={"cleanup.policy": "delete"})])
    try:
        desired = TopicsFile(
            topics=(TopicSpec(name=name, partitions=4, configs={"cleanup.policy": "compact"}),)
        )
        result = await apply_topics(kafka_bootstrap, desired)
        assert result.created == ()
        assert result.present == (name,)
        assert result.differences == (
            Difference(topic=name, field="partitions", desired="4", actual="2"),
            Difference(
                topic=name, field="config:cleanup.policy", desired="compact", actual="delete"
            ),
        )
        live = (await describe_topics(admin, [name]))[name]
        assert live.partitions == 2
        assert live.configs["cleanup.policy"] == "delete"
    finally:
        await admin.delete_topics([name])
