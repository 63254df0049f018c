"""Kafka ACLs on a real broker: a broker of its own (free ports, a tmp home) with SCRAM and
KRaft's ``StandardAuthorizer``, the principals of ``acls.yaml`` as SCRAM users, and the ACLs
applied by the real ``rollout acls apply``. A producer principal that writes to
``deployments.control`` is refused by the broker, and so is a worker principal (it may not
steer); none but an operator may write ``models.published`` or ``models.artifacts`` (publish a
model; the controller only tombstones artifacts); an operator's command goes through. A
worker and a controller running as their own principals serve a producer principal's
requests, so the declared rights suffice."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import TopicAuthorizationFailedError
from pydantic import SecretStr

from app.adapters import kafka_local
from app.adapters.kafka_clients import plain_producer
from app.adapters.kafka_local import BrokerConfig, ScramUser
from app.cli.failures import ExitCode
from app.core.topics import Topic
from app.harness.traffic import make_requests, send
from app.settings import Settings
from tests.builders import controller_process, running_workers
from tests.integration.control import cli
from tests.integration.outputs import predictions

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[2]
ROLES = ("producer", "worker", "controller", "operator")


@pytest.fixture(scope="module")
def acl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerConfig]:
    home = tmp_path_factory.mktemp("acl-kafka")
    shared_libs = (REPO / Settings().home / "kafka" / "libs").resolve()
    if (shared_libs / ".fetched").is_file():  # reuse the jars rather than fetch them again
        (home / "kafka").mkdir()
        (home / "kafka" / "libs").symlink_to(shared_libs)
    port = kafka_local.free_port_pair()
    config = BrokerConfig(
        home=home,
        port=port,
        controller_port=port + 1,
        scram=ScramUser("rollout-admin", SecretStr(secrets.token_hex(12))),
        users=tuple(
            ScramUser(f"rollout-{role}", SecretStr(secrets.token_hex(12))) for role in ROLES
        ),
    )
    kafka_local.start(config)
    try:
        admin = env_of(config, "rollout-admin")
        assert cli(config.bootstrap, "topics", "apply", env=admin).returncode == 0
        yield config
    finally:
        kafka_local.stop(config)


def user(config: BrokerConfig, name: str) -> ScramUser:
    every = (config.scram, *config.users)
    return next(u for u in every if u is not None and u.username == name)


def env_of(config: BrokerConfig, name: str) -> dict[str, str]:
    who = user(config, name)
    return {
        "KAFKA_BOOTSTRAP_SERVERS": config.bootstrap,
        "ROLLOUT_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "ROLLOUT_SASL_MECHANISM": who.mechanism,
        "ROLLOUT_SASL_USERNAME": who.username,
        "ROLLOUT_SASL_PASSWORD": who.password.get_secret_value(),
    }


def settings_of(config: BrokerConfig, name: str) -> Settings:
    who = user(config, name)
    return Settings().model_copy(
        update={
            "bootstrap_servers": config.bootstrap,
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_username": who.username,
            "sasl_password": who.password,
        }
    )


@pytest.fixture(scope="module")
def applied(acl_broker: BrokerConfig) -> BrokerConfig:
    admin = env_of(acl_broker, "rollout-admin")
    first = cli(acl_broker.bootstrap, "acls", "apply", "--json", env=admin)
    assert first.returncode == 0, first.stderr
    created = orjson.loads(first.stdout)["created"]
    assert f"User:rollout-operator WRITE on TOPIC {Topic.CONTROL}" in created
    again = cli(acl_broker.bootstrap, "acls", "apply", "--json", env=admin)
    assert again.returncode == 0, again.stderr
    report = orjson.loads(again.stdout)
    assert report["created"] == [] and len(report["present"]) == len(created)
    return acl_broker


async def write_control(settings: Settings, topic: str = "CONTROL") -> None:
    """Write one record to ``Topic[topic]`` (the member's name) as ``settings``' principal."""
    producer: AIOKafkaProducer = plain_producer(settings)
    await producer.start()
    try:
        await producer.send_and_wait(settings.topics.name(Topic[topic]), b"{}", key=b"acl-test")
    finally:
        await producer.stop()


@pytest.mark.parametrize("role", ["producer", "worker"])
async def test_only_operators_write_deployments_control(applied: BrokerConfig, role: str) -> None:
    with pytest.raises(TopicAuthorizationFailedError):
        await write_control(settings_of(applied, f"rollout-{role}"))
    refused = cli(applied.bootstrap, "promote", "fraud", env=env_of(applied, f"rollout-{role}"))
    assert refused.returncode == ExitCode.REFUSED, refused.stderr
    assert "not authorized" in refused.stderr


# The controller writes models.artifacts too (tombstones of retired versions), not publications.
NOT_PUBLISHERS = [
    ("producer", "PUBLISHED"),
    ("producer", "ARTIFACTS"),
    ("worker", "PUBLISHED"),
    ("worker", "ARTIFACTS"),
    ("controller", "PUBLISHED"),
]


@pytest.mark.parametrize(("role", "topic"), NOT_PUBLISHERS)
async def test_only_operators_publish_models(applied: BrokerConfig, role: str, topic: str) -> None:
    with pytest.raises(TopicAuthorizationFailedError):
        await write_control(settings_of(applied, f"rollout-{role}"), topic)
    await write_control(settings_of(applied, "rollout-operator"), topic)


async def test_an_operator_may_steer(applied: BrokerConfig) -> None:
    await write_control(settings_of(applied, "rollout-operator"))
    # Written, and the answer topic readable: only the missing controller keeps it from exit 0.
    ghost = f"ghost-{uuid.uuid4().hex[:8]}"
    sent = cli(
        applied.bootstrap, "pause", ghost, "--wait", "2", env=env_of(applied, "rollout-operator")
    )
    assert sent.returncode == ExitCode.NO_ANSWER, sent.stderr


async def test_services_run_as_their_own_principals(applied: BrokerConfig, tmp_path: Path) -> None:
    controller = controller_process(
        applied.bootstrap, tmp_path, "acl", ROLLOUT_HOME=str(tmp_path),
        **env_of(applied, "rollout-controller"),
    ).start()  # fmt: skip
    port = kafka_local.free_port_pair()
    try:
        with running_workers(
            applied.bootstrap, ["acl-1"], tmp_path, ROLLOUT_METRICS_PORT=str(port),
            **env_of(applied, "rollout-worker"),
        ) as (worker,):  # fmt: skip
            worker.wait_ready(port, timeout_s=90)
            run_id = f"acl-{uuid.uuid4().hex[:8]}"
            sent = make_requests(100, seed=3, run_id=run_id)
            producer = plain_producer(settings_of(applied, "rollout-producer"))
            await producer.start()
            try:
                await send(producer, sent)
            finally:
                await producer.stop()
            found = await predictions(
                settings_of(applied, "rollout-producer"), f"{run_id}-", len(sent), settle_s=0.5
            )
            assert len(found) == len(sent), worker.log()[-3000:]
        status = cli(
            applied.bootstrap, "status", "fraud", "--json", env=env_of(applied, "rollout-operator")
        )
        assert status.returncode == 0, (status.stderr, controller.log()[-3000:])
        assert "Authorization" not in controller.log(), controller.log()[-3000:]
    finally:
        controller.terminate()
