"""Process settings, read from the environment (``KAFKA_BOOTSTRAP_SERVERS``, ``ROLLOUT_*``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.core.topics import TOPIC_PREFIX_PATTERN, TopicNames


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ROLLOUT_", extra="ignore", populate_by_name=True)

    bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "ROLLOUT_BOOTSTRAP_SERVERS"),
    )
    # Where the local broker's jars, data and logs live (git-ignored).
    home: Path = Path(".rollout")
    model_store: Path = Path("models")
    # Where a worker or controller installs the versions it fetches from models.artifacts
    # (None: <home>/artifacts). `model_store` is then only read: a seed, never written.
    artifact_cache: Path | None = None
    topics_file: Path = Path("topics.yaml")
    acls_file: Path = Path("acls.yaml")
    # Every topic's replication factor when `rollout topics apply` creates it (None: as
    # topics.yaml says); 3 on a production cluster.
    topic_replication_factor: int | None = Field(default=None, ge=1)
    # Put in front of every topic's name (e.g. "staging."), so several environments share one
    # cluster; every client resolves names through `topics` (app.core.topics.TopicNames).
    topic_prefix: str = Field(default="", pattern=TOPIC_PREFIX_PATTERN)

    # Artifacts (app.controller.retirement): how long a version no state refers to stays on
    # models.artifacts before the controller tombstones it.
    artifact_grace_s: float = Field(default=6 * 3600.0, ge=0)

    # Worker batching.
    group_id: str = "rollout-workers"
    batch_max_records: int = Field(default=500, ge=1)
    batch_max_wait_ms: int = Field(default=20, ge=0)
    max_request_bytes: int = Field(default=64 * 1024, ge=256)
    transaction_timeout_ms: int = Field(default=60_000, ge=1000)
    # How the worker's and controller's transactional producers compress what they write
    # (predictions, comparisons, dead letters, the controller's records). zstd makes a
    # prediction 41 bytes on the wire instead of 426, a shadow request's two records 115
    # instead of 1,225; on a single local broker it cost the 1,000/s line's Produce about
    # 0.3 ms (README, "Performance"), so it is for clusters where bytes cost: networks,
    # replication, disks.
    output_compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "none"
    # How long the broker may hold a fetch that found nothing (see kafka_clients._fetching).
    fetch_max_wait_ms: int = Field(default=10, ge=0, le=500)
    # Past this many records of lag, a worker sheds shadow scoring (production goes on).
    shadow_shed_lag: int = Field(default=10_000, ge=0)

    # Worker: how soon a dead (kill -9) worker's partitions move to the others (aiokafka's
    # default is 10 s; heartbeats go every sixth of it).
    worker_session_timeout_ms: int = Field(default=6000, ge=1000)
    # Controller: how soon a dead controller's partitions move to another one.
    controller_session_timeout_s: float = Field(default=6.0, ge=1.0)
    # Controller: each rollout keeps the compared requests awaiting ground truth for the
    # policy's feedback horizon, sized for this many per second (the most it keeps: horizon
    # x rate, at least 10,000; or ``pending_limit`` when set), in chunks of this many rows
    # (app.core.pending; a chunk is the unit of the analysis snapshot).
    pending_rate: float = Field(default=100.0, gt=0)
    pending_limit: int = Field(default=0, ge=0)
    pending_chunk_rows: int = Field(default=4096, ge=16, le=16384)

    # HTTP: a worker's /metrics port; the controller's dashboard, JSON API and /metrics port
    # (0 = no server); the address both bind to (0.0.0.0 in containers).
    metrics_port: int = Field(default=0, ge=0, le=65535)
    dashboard_port: int = Field(default=8080, ge=0, le=65535)
    http_host: str = "127.0.0.1"
    # Health probes (/healthz, /readyz): a worker whose loop has not gone round for this long
    # is not alive; one lagging more than this many records is not ready.
    health_stale_s: float = Field(default=60.0, gt=0)
    ready_max_lag: int = Field(default=50_000, ge=0)
    # The controller's API tokens (app.controller.access): "name:role:token,..." and/or a
    # file of "name role token|sha256:<hex>" lines. None at all: loopback only.
    api_tokens: SecretStr | None = None
    api_tokens_file: Path | None = None

    # Kafka security (every client: app.adapters.kafka_security). The password is a SecretStr:
    # it prints as '**********' and is only unwrapped where a client is built.
    security_protocol: Literal["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"] = "SCRAM-SHA-256"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None  # CA bundle for SSL / SASL_SSL (default: the system's)

    @property
    def topics(self) -> TopicNames:
        """The cluster names of the topics: ``settings.topics.name(Topic.REQUESTS)``."""
        return TopicNames(self.topic_prefix)

    @property
    def artifact_cache_dir(self) -> Path:
        """``artifact_cache``, or one folder per cluster and environment under
        ``<home>/artifacts`` (two clusters may hold different files under one version)."""
        if self.artifact_cache is not None:
            return self.artifact_cache
        where = re.sub(r"[^A-Za-z0-9._-]", "_", f"{self.bootstrap_servers}.{self.topic_prefix}")
        return self.home / "artifacts" / where.strip("._")[:200]

    def bootstrap_is_default(self) -> bool:
        return self.bootstrap_servers == "127.0.0.1:9092"


def load_settings() -> Settings:
    return Settings()
