"""Settings: the environment, and keyword arguments that win over it."""

from __future__ import annotations

import pytest

from app.settings import Settings


def test_bootstrap_servers_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "10.0.0.1:9092")
    assert Settings().bootstrap_servers == "10.0.0.1:9092"


def test_a_bootstrap_given_by_name_wins_over_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Tests and tools build Settings(bootstrap_servers=...) for a broker of their own; before,
    # the field's alias swallowed the argument and the client reached the environment's broker.
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "10.0.0.1:9092")
    assert Settings(bootstrap_servers="127.0.0.1:19092").bootstrap_servers == "127.0.0.1:19092"
