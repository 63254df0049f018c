"""Shared fixtures.

* ``settings`` — :class:`Settings` from the environment (no broker needed).
* ``kafka_bootstrap`` (session) — bootstrap string of a broker with ``topics.yaml`` applied.
  If ``KAFKA_BOOTSTRAP_SERVERS`` is set, that cluster is used and nothing is started or stopped.
  Otherwise the local KRaft broker (``<settings.home>/kafka``, port 9092) is started once per
  session and stopped at the end only if a test session started it and no other live pytest
  session on the same home still uses it (a broker from `rollout kafka start` is left alone).
  ``ROLLOUT_TEST_FRESH_KAFKA=1`` wipes its data first.
* ``kafka_settings`` — ``settings`` pointed at ``kafka_bootstrap``.
* ``kafka_local_config`` (session) — the :class:`BrokerConfig` of the local broker, or None
  when an external cluster is used.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.adapters import kafka_local
from app.adapters.kafka_clients import configure_aiokafka
from app.adapters.topics import apply_topics, desired_topics
from app.settings import Settings

REPO = Path(__file__).resolve().parents[1]

configure_aiokafka()  # as every Rollout entry point does


def _repo_settings() -> Settings:
    settings = Settings()
    updates: dict[str, Path] = {}
    for field in ("home", "topics_file", "model_store"):
        value: Path = getattr(settings, field)
        if not value.is_absolute():
            updates[field] = REPO / value
    return settings.model_copy(update=updates)


@pytest.fixture
def settings() -> Settings:
    """Settings from the environment, relative paths resolved against the repo root."""
    return _repo_settings()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return Path(f"/proc/{pid}/cmdline").exists()


def _other_users(users: Path) -> list[int]:
    others = []
    for entry in users.glob("*"):
        pid = int(entry.name) if entry.name.isdigit() else -1
        if pid == os.getpid():
            continue
        if pid > 0 and _pid_alive(pid):
            others.append(pid)
        else:
            entry.unlink(missing_ok=True)
    return others


@pytest.fixture(scope="session")
def kafka_local_config() -> Iterator[kafka_local.BrokerConfig | None]:
    """Start (or reuse) the local broker for the session; None when an external one is used."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield None
        return
    config = kafka_local.BrokerConfig.from_settings(_repo_settings())
    fresh = os.environ.get("ROLLOUT_TEST_FRESH_KAFKA") == "1"
    users = config.kafka_dir / "users"
    users.mkdir(parents=True, exist_ok=True)
    me = users / str(os.getpid())
    me.touch()  # before start(): a finishing session must see us and leave the broker up
    started_by_tests = config.kafka_dir / "started-by-tests"
    try:
        result = kafka_local.start(config, fresh=fresh)
        if result.action == "started":
            started_by_tests.write_text(str(result.status.pid))
        yield config
    finally:
        me.unlink(missing_ok=True)
        marker = started_by_tests.read_text() if started_by_tests.exists() else None
        if marker == str(kafka_local.status(config).pid) and not _other_users(users):
            kafka_local.stop(config)
        if marker is not None and not _other_users(users):
            started_by_tests.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_local_config: kafka_local.BrokerConfig | None) -> str:
    """Bootstrap servers of a broker that has every topic of ``topics.yaml``."""
    settings = _repo_settings()
    bootstrap = (
        kafka_local_config.bootstrap
        if kafka_local_config is not None
        else settings.bootstrap_servers
    )
    desired = desired_topics(settings)  # under ROLLOUT_TOPIC_PREFIX, when set
    kafka_local.run_sync(apply_topics(bootstrap, desired))
    return bootstrap


@pytest.fixture
def kafka_settings(settings: Settings, kafka_bootstrap: str) -> Settings:
    """``settings`` pointed at the session's broker."""
    return settings.model_copy(update={"bootstrap_servers": kafka_bootstrap})
