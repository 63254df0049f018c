"""Security settings → client options: nothing added for PLAINTEXT, SCRAM for SASL, a clear
error when a credential is missing, and the password never in a repr or a summary."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from app.adapters import kafka_security
from app.adapters.kafka_broker_files import BrokerConfig, server_properties_text
from app.adapters.kafka_clients import connection
from app.settings import Settings

PASSWORD = "s3cret-Pa55"


def _sasl(**over: object) -> Settings:
    base: dict[str, object] = {
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9192",
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_username": "svc",
        "sasl_password": SecretStr(PASSWORD),
    }
    return Settings.model_validate({**base, **over})


def test_plaintext_adds_nothing() -> None:
    settings = Settings.model_validate({"KAFKA_BOOTSTRAP_SERVERS": "b:1"})
    assert kafka_security.client_options(settings) == {}
    assert connection(settings) == {"bootstrap_servers": "b:1"}
    assert kafka_security.faust_credentials(settings) is None


def test_sasl_scram_options_for_aiokafka_and_faust() -> None:
    settings = _sasl(sasl_mechanism="SCRAM-SHA-512")
    assert connection(settings) == {
        "bootstrap_servers": "127.0.0.1:9192",
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "svc",
        "sasl_plain_password": PASSWORD,
    }
    creds = kafka_security.faust_credentials(settings)
    assert (creds.username, creds.password, creds.mechanism.value) == (
        "svc",
        PASSWORD,
        "SCRAM-SHA-512",
    )
    assert creds.protocol.value == "SASL_PLAINTEXT"
    assert PASSWORD not in repr(creds)


def test_sasl_ssl_carries_an_ssl_context() -> None:
    options = kafka_security.client_options(_sasl(security_protocol="SASL_SSL"))
    assert options["security_protocol"] == "SASL_SSL"
    assert options["ssl_context"] is not None
    creds = kafka_security.faust_credentials(_sasl(security_protocol="SASL_SSL"))
    assert creds.protocol.value == "SASL_SSL"


@pytest.mark.parametrize(
    ("over", "missing"),
    [
        ({"sasl_password": None}, "ROLLOUT_SASL_PASSWORD"),
        ({"sasl_username": None}, "ROLLOUT_SASL_USERNAME"),
    ],
)
def test_a_missing_credential_is_named(over: dict[str, object], missing: str) -> None:
    with pytest.raises(kafka_security.SecurityConfigError, match=missing):
        kafka_security.client_options(_sasl(**over))


def test_the_password_is_in_no_repr_or_summary() -> None:
    settings = _sasl()
    assert PASSWORD not in repr(settings)
    assert PASSWORD not in str(settings.model_dump())
    assert PASSWORD not in kafka_security.describe(settings)
    assert kafka_security.describe(settings) == "SASL_PLAINTEXT SCRAM-SHA-256 as svc"
    config = BrokerConfig.from_settings(settings)
    assert PASSWORD not in repr(config)


def test_local_broker_config_follows_the_settings() -> None:
    plain = Settings.model_validate({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9192"})
    assert BrokerConfig.from_settings(plain).scram is None
    config = BrokerConfig.from_settings(_sasl())
    assert config.scram is not None and config.port == 9192
    props = server_properties_text(config)
    assert "listeners=SASL_PLAINTEXT://127.0.0.1:9192,CONTROLLER://127.0.0.1:9193" in props
    assert "sasl.enabled.mechanisms=SCRAM-SHA-256" in props
    assert "PLAINTEXT://127.0.0.1:9192" not in props.replace("SASL_PLAINTEXT", "")
    assert config.client_options()["sasl_plain_password"] == PASSWORD
