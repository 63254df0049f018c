"""The local KRaft broker: idempotent start, status, stop of only our own broker, fresh data.

Tests that stop a broker use their own home (tmp_path) and free ports, never the session's."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from app.adapters import kafka_local
from app.adapters.kafka_local import BrokerConfig
from app.core.topics import Topic
from app.settings import Settings

pytestmark = pytest.mark.kafka


def _session_config(config: BrokerConfig | None) -> BrokerConfig:
    if config is None:
        pytest.skip("an external cluster is used (KAFKA_BOOTSTRAP_SERVERS)")
    return config


def test_start_is_idempotent(kafka_local_config: BrokerConfig | None) -> None:
    config = _session_config(kafka_local_config)
    before = kafka_local.status(config)
    t0 = time.monotonic()
    result = kafka_local.start(config)
    assert time.monotonic() - t0 < 5.0
    assert result.action in ("already_running", "external")
    assert result.status.pid == before.pid


def test_status_reports_running(kafka_local_config: BrokerConfig | None) -> None:
    config = _session_config(kafka_local_config)
    status = kafka_local.status(config)
    assert status.running
    assert status.bootstrap == config.bootstrap
    assert status.data_dir == config.data_dir
    if status.managed:
        assert status.pid is not None
        assert "kafka.Kafka" in kafka_local._cmdline(status.pid)


async def test_broker_answers_metadata(kafka_bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
        assert len(cluster["brokers"]) >= 1
        assert Settings().topics.name(Topic.REQUESTS) in await admin.list_topics()
    finally:
        await admin.close()
    assert kafka_local.answers(kafka_bootstrap)  # also from inside a running loop


def test_start_does_not_start_a_second_broker_on_a_busy_port(
    kafka_local_config: BrokerConfig | None, tmp_path: Path
) -> None:
    session = _session_config(kafka_local_config)
    other = BrokerConfig(home=tmp_path, port=session.port, controller_port=session.port + 1)
    result = kafka_local.start(other)
    assert result.action == "external"
    assert not result.status.managed
    assert not other.pid_file.exists()
    assert kafka_local.stop(other) is False  # never stops someone else's broker
    assert kafka_local.status(session).running


def test_own_broker_lifecycle(tmp_path: Path) -> None:
    port = kafka_local.free_port_pair()
    config = BrokerConfig(home=tmp_path, port=port, controller_port=port + 1)
    assert not kafka_local.status(config).running
    started = kafka_local.start(config)
    try:
        assert started.action == "started"
        pid = started.status.pid
        assert pid is not None and started.status.managed
        again = kafka_local.start(config)
        assert again.action == "already_running"
        assert again.status.pid == pid
        assert again.seconds < 5.0

        config.pid_file.unlink()  # a lost pidfile does not orphan the broker
        adopted = kafka_local.status(config)
        assert adopted.managed and adopted.pid == pid
        assert config.pid_file.read_text().strip() == str(pid)

        kafka_local.run_sync(_create_topic(config.bootstrap, "scratch"))
        fresh = kafka_local.start(config, fresh=True)
        assert fresh.action == "started"
        assert fresh.status.pid != pid
        assert "scratch" not in kafka_local.run_sync(_list_topics(config.bootstrap))
    finally:
        assert kafka_local.stop(config) is True
    assert not config.pid_file.exists()
    assert not kafka_local.status(config).running
    assert kafka_local.stop(config) is False


async def _create_topic(bootstrap: str, name: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 1, 1)])
    finally:
        await admin.close()


async def _list_topics(bootstrap: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return list(await admin.list_topics())
    finally:
        await admin.close()
