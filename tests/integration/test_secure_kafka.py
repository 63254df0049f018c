"""Secured Kafka: a broker of its own (free ports, a tmp home) whose only client listener is
SASL_PLAINTEXT with SCRAM; the CLI, a worker and a controller connect to it with the
``ROLLOUT_SECURITY_PROTOCOL`` / ``ROLLOUT_SASL_*`` settings, a client without them is refused,
and the password appears in no log."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from app.adapters import kafka_local
from app.adapters.kafka_clients import plain_producer
from app.adapters.kafka_local import BrokerConfig, ScramUser
from app.harness.processes import CONTROLLER_READY
from app.harness.traffic import make_requests, send
from app.settings import Settings
from tests.builders import controller_process, running_workers
from tests.integration.control import cli
from tests.integration.outputs import predictions

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[2]
USER = "rollout-test"


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerConfig]:
    home = tmp_path_factory.mktemp("secure-kafka")
    shared_libs = (REPO / Settings().home / "kafka" / "libs").resolve()
    if (shared_libs / ".fetched").is_file():  # reuse the jars rather than fetch them again
        (home / "kafka").mkdir()
        (home / "kafka" / "libs").symlink_to(shared_libs)
    port = kafka_local.free_port_pair()
    password = SecretStr(f"pw-{secrets.token_hex(12)}")
    config = BrokerConfig(
        home=home, port=port, controller_port=port + 1, scram=ScramUser(USER, password)
    )
    kafka_local.start(config)
    try:
        yield config
    finally:
        kafka_local.stop(config)


def _env(config: BrokerConfig) -> dict[str, str]:
    assert config.scram is not None
    return {
        "KAFKA_BOOTSTRAP_SERVERS": config.bootstrap,
        "ROLLOUT_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "ROLLOUT_SASL_MECHANISM": config.scram.mechanism,
        "ROLLOUT_SASL_USERNAME": config.scram.username,
        "ROLLOUT_SASL_PASSWORD": config.scram.password.get_secret_value(),
    }


def test_a_client_without_credentials_is_refused(secure_broker: BrokerConfig) -> None:
    assert kafka_local.answers(secure_broker.bootstrap, security=secure_broker.client_options())
    assert not kafka_local.answers(secure_broker.bootstrap, timeout=3.0)
    wrong = {**secure_broker.client_options(), "sasl_plain_password": "not-the-password"}
    assert not kafka_local.answers(secure_broker.bootstrap, timeout=3.0, security=wrong)


async def test_cli_worker_and_controller_serve_over_scram(
    secure_broker: BrokerConfig, tmp_path: Path
) -> None:
    env = _env(secure_broker)
    password = env["ROLLOUT_SASL_PASSWORD"]
    applied = cli(secure_broker.bootstrap, "topics", "apply", env=env)
    assert applied.returncode == 0, applied.stderr
    assert "differences on" in applied.stdout
    no_password = cli(
        secure_broker.bootstrap, "topics", "apply", env={**env, "ROLLOUT_SASL_PASSWORD": ""}
    )
    assert no_password.returncode == 64, no_password.stderr  # a usage error: SASL, no password
    wrong = cli(
        secure_broker.bootstrap, "topics", "apply", env={**env, "ROLLOUT_SASL_PASSWORD": "nope"}
    )
    assert wrong.returncode == 4, wrong.stderr  # authentication refused
    assert "authentication refused" in wrong.stderr and "nope" not in wrong.stderr
    # A PLAINTEXT client: the SASL listener closes the connection, which is all it can see.
    plain = cli(secure_broker.bootstrap, "topics", "apply")
    assert plain.returncode == 3, plain.stderr

    settings = Settings().model_copy(
        update={
            "bootstrap_servers": secure_broker.bootstrap,
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_username": USER,
            "sasl_password": SecretStr(password),
        }
    )
    controller = controller_process(
        secure_broker.bootstrap, tmp_path, "secure", ROLLOUT_HOME=str(tmp_path), **env
    ).start()
    try:
        run_id = f"secure-{uuid.uuid4().hex[:8]}"
        sent = make_requests(200, seed=5, run_id=run_id)
        with running_workers(secure_broker.bootstrap, ["sec-1"], tmp_path, **env) as (worker,):
            controller.wait_for(CONTROLLER_READY)
            producer = plain_producer(settings)
            await producer.start()
            try:
                await send(producer, sent)
            finally:
                await producer.stop()
            found = await predictions(settings, f"{run_id}-", len(sent), settle_s=1.0)
            status = cli(secure_broker.bootstrap, "status", "--json", env=env)
        assert {p.request_id for _, p in found} == {s.request.request_id for s in sent}
        assert len(found) == len(sent)
        assert status.returncode == 0, status.stderr
        assert '"fraud"' in status.stdout  # the controller published the initial state
        logs = worker.log() + controller.log() + applied.stdout + applied.stderr
        assert password not in logs
    finally:
        controller.terminate()
