"""``ROLLOUT_TOPIC_REPLICATION_FACTOR`` sets every topic's replication factor at creation."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.adapters.topics import load_topics_file
from app.core.topic_spec import with_replication
from app.settings import Settings

TOPICS = load_topics_file(Path(__file__).resolve().parents[2] / "topics.yaml")


@pytest.mark.parametrize("factor", [None, 1, 3])
def test_the_setting_overrides_the_file(factor: int | None) -> None:
    result = with_replication(TOPICS, factor)
    expected = [t.replication_factor for t in TOPICS.topics] if factor is None else None
    got = [t.replication_factor for t in result.topics]
    assert got == (expected or [factor] * len(TOPICS.topics))
    assert [t.configs for t in result.topics] == [t.configs for t in TOPICS.topics]


def test_the_setting_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROLLOUT_TOPIC_REPLICATION_FACTOR", "3")
    assert Settings().topic_replication_factor == 3
    monkeypatch.setenv("ROLLOUT_TOPIC_REPLICATION_FACTOR", "0")
    with pytest.raises(ValueError):
        Settings()
