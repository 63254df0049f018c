"""What a local broker is, on disk: where it lives and on which ports (``BrokerConfig``), its
``server.properties`` (listeners, SCRAM/JAAS, the settings a single node needs),
``log4j2.properties``, the JVM command line, and the KRaft storage, formatted once.
``app.adapters.kafka_local`` runs the process.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from app.settings import Settings

STORAGE_TOOL = "kafka.tools.StorageTool"


class KafkaLocalError(RuntimeError):
    """The local broker could not be fetched, formatted, started or stopped."""


@dataclass(frozen=True)
class ScramUser:
    """The one SCRAM user of a secured local broker (the broker itself and every client)."""

    username: str
    password: SecretStr
    mechanism: str = "SCRAM-SHA-256"

    def client_options(self) -> dict[str, Any]:
        """aiokafka keyword arguments that authenticate as this user."""
        return {
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": self.mechanism,
            "sasl_plain_username": self.username,
            "sasl_plain_password": self.password.get_secret_value(),
        }


@dataclass(frozen=True)
class BrokerConfig:
    """Where the local broker lives and which ports it listens on (127.0.0.1 only); with
    ``scram``, its client listener requires SASL/SCRAM as that user, and the broker authorizes
    every request with KRaft's ``StandardAuthorizer``: ``scram``'s user is a super user (the
    broker and the admin), ``users`` (more SCRAM users, created at format time: the principals
    of ``acls.yaml`` for tests) may do only what ACLs allow (``rollout acls apply``)."""

    home: Path = Path(".rollout")
    port: int = 9092
    controller_port: int = 9093
    heap: str = "512m"
    scram: ScramUser | None = None
    users: tuple[ScramUser, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> BrokerConfig:
        """Home from ``settings.home``; port from ``settings.bootstrap_servers`` when it is a
        single ``127.0.0.1:PORT`` or ``localhost:PORT`` (controller on PORT + 1), else 9092.
        SCRAM when ``settings.security_protocol`` is ``SASL_PLAINTEXT`` with a SCRAM mechanism
        and both username and password are set."""
        port = 9092
        servers = settings.bootstrap_servers.split(",")
        if len(servers) == 1 and ":" in servers[0]:
            host, _, raw = servers[0].strip().rpartition(":")
            if host in ("127.0.0.1", "localhost") and raw.isdigit():
                port = int(raw)
        scram = None
        if (
            settings.security_protocol == "SASL_PLAINTEXT"
            and settings.sasl_mechanism.startswith("SCRAM-")
            and settings.sasl_username
            and settings.sasl_password is not None
        ):
            scram = ScramUser(
                settings.sasl_username, settings.sasl_password, settings.sasl_mechanism
            )
        return cls(home=settings.home, port=port, controller_port=port + 1, scram=scram)

    def client_options(self) -> dict[str, Any]:
        """aiokafka keyword arguments for talking to this broker."""
        return self.scram.client_options() if self.scram is not None else {}

    @property
    def kafka_dir(self) -> Path:
        return self.home.resolve() / "kafka"

    @property
    def libs_dir(self) -> Path:
        return self.kafka_dir / "libs"

    @property
    def data_dir(self) -> Path:
        return self.kafka_dir / "data"

    @property
    def log_file(self) -> Path:
        return self.kafka_dir / "broker.log"

    @property
    def pid_file(self) -> Path:
        return self.kafka_dir / "broker.pid"

    @property
    def server_properties(self) -> Path:
        return self.kafka_dir / "server.properties"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


def _jaas_quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _listener_properties(config: BrokerConfig) -> dict[str, str]:
    ctl = f"127.0.0.1:{config.controller_port}"
    if config.scram is None:
        return {
            "listeners": f"PLAINTEXT://{config.bootstrap},CONTROLLER://{ctl}",
            "advertised.listeners": f"PLAINTEXT://{config.bootstrap},CONTROLLER://{ctl}",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        }
    user = config.scram
    mechanism = user.mechanism.lower()
    jaas = (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{_jaas_quote(user.username)}" '
        f'password="{_jaas_quote(user.password.get_secret_value())}";'
    )
    return {
        "listeners": f"SASL_PLAINTEXT://{config.bootstrap},CONTROLLER://{ctl}",
        "advertised.listeners": f"SASL_PLAINTEXT://{config.bootstrap},CONTROLLER://{ctl}",
        "inter.broker.listener.name": "SASL_PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT",
        # KRaft's authorizer: the admin user, and the controller listener's (loopback, plaintext)
        # ANONYMOUS principal the broker and its controller use between them, are super users;
        # everyone else gets what ACLs grant, nothing when none match.
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users": f"User:{user.username};User:ANONYMOUS",
        "allow.everyone.if.no.acl.found": "false",
        "sasl.enabled.mechanisms": ",".join(
            sorted({user.mechanism, *(u.mechanism for u in config.users)})
        ),
        "sasl.mechanism.inter.broker.protocol": user.mechanism,
        f"listener.name.sasl_plaintext.{mechanism}.sasl.jaas.config": jaas,
    }


def server_properties_text(config: BrokerConfig) -> str:
    ctl = f"127.0.0.1:{config.controller_port}"
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.bootstrap.servers": ctl,
        **_listener_properties(config),
        "controller.listener.names": "CONTROLLER",
        "log.dirs": str(config.data_dir),
        "num.partitions": "6",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "auto.create.topics.enable": "false",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "12",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "12",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "num.network.threads": "2",
        "num.io.threads": "4",
        "log.retention.check.interval.ms": "60000",
    }
    return "".join(f"{k}={v}\n" for k, v in props.items())


LOG4J2 = """status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
logger.clients.name = org.apache.kafka
logger.clients.level = INFO
"""


def cluster_id() -> str:
    """A KRaft cluster id as Kafka's own ``Uuid.randomUuid`` makes it: base64url of 16 random
    bytes, never starting with ``-`` (the storage tool's argument parser would read that as a
    flag; it failed one CI run in 64)."""
    while True:
        candidate = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not candidate.startswith("-"):
            return candidate


def _classpath(config: BrokerConfig) -> str:
    return str(config.libs_dir / "*")


def jvm_base(config: BrokerConfig) -> list[str]:
    return [
        "java",
        f"-Xmx{config.heap}",
        "-Xms128m",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={config.kafka_dir / 'log4j2.properties'}",
        f"-Dkafka.logs.dir={config.kafka_dir}",
        "-cp",
        _classpath(config),
    ]


def write_configs(config: BrokerConfig) -> None:
    config.kafka_dir.mkdir(parents=True, exist_ok=True)
    config.server_properties.touch(mode=0o600)
    config.server_properties.chmod(0o600)  # it may hold the SCRAM password
    config.server_properties.write_text(server_properties_text(config))
    (config.kafka_dir / "log4j2.properties").write_text(LOG4J2)


def format_storage(config: BrokerConfig) -> None:
    """Format ``data_dir`` once; refuse to reuse it with other ports (the KRaft voter set
    records the controller endpoint)."""
    stamp = config.kafka_dir / "format.json"
    wanted: dict[str, Any] = {"port": config.port, "controller_port": config.controller_port}
    if config.scram is not None:  # a plain broker's stamp stays as it always was
        wanted["scram"] = {"user": config.scram.username, "mechanism": config.scram.mechanism}
        if config.users:
            wanted["users"] = sorted(u.username for u in config.users)
    if (config.data_dir / "meta.properties").is_file():
        if stamp.is_file() and json.loads(stamp.read_text()) != wanted:
            raise KafkaLocalError(
                f"{config.data_dir} was formatted for other ports or security "
                f"({stamp.read_text().strip()}); start with fresh=True "
                "(`rollout kafka start --fresh`) to wipe it"
            )
        return
    shutil.rmtree(config.data_dir, ignore_errors=True)
    cmd = [
        *jvm_base(config), STORAGE_TOOL, "format", "--standalone",
        f"--cluster-id={cluster_id()}", "-c", str(config.server_properties),
    ]  # fmt: skip
    users = (config.scram, *config.users) if config.scram is not None else ()
    for user in users:
        cmd += [
            "--add-scram",
            f"{user.mechanism}=[name={user.username},password={user.password.get_secret_value()}]",
        ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        output = f"{proc.stdout}{proc.stderr}"
        for user in users:
            output = output.replace(user.password.get_secret_value(), "**********")
        raise KafkaLocalError(f"formatting {config.data_dir} failed:\n{output}")
    stamp.write_text(json.dumps(wanted))
