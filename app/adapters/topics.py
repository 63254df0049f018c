"""Apply ``topics.yaml`` to a cluster with aiokafka's admin client.

Contract: :func:`apply_topics` creates the declared topics that are missing (and waits until
every partition of them has a leader), and reports — never alters or deletes — differences on
the ones that exist. Running it twice creates nothing the second time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from app.core.topic_spec import (
    Difference,
    ExistingTopic,
    TopicsFile,
    TopicSpec,
    diff_topic,
    parse_topics,
    plan,
    with_names,
    with_replication,
)
from app.settings import Settings

_TOPIC_ALREADY_EXISTS = 36


class TopicsError(RuntimeError):
    """The topics file is invalid, or the cluster refused to create a topic."""


@dataclass(frozen=True)
class ApplyResult:
    """``created``: topics this call created; ``present``: declared topics that already
    existed; ``differences``: declared values the existing topics do not have (not altered)."""

    created: tuple[str, ...]
    present: tuple[str, ...]
    differences: tuple[Difference, ...]


def desired_topics(settings: Settings, path: Path | None = None) -> TopicsFile:
    """The topics ``path`` (default: ``settings.topics_file``) declares, as this environment
    creates them: under their cluster names (``ROLLOUT_TOPIC_PREFIX``) and at
    ``ROLLOUT_TOPIC_REPLICATION_FACTOR``."""
    declared = load_topics_file(path or settings.topics_file)
    return with_names(
        with_replication(declared, settings.topic_replication_factor), settings.topics
    )


def load_topics_file(path: Path) -> TopicsFile:
    """Parse and validate a topics YAML file; :class:`TopicsError` on a bad file."""
    try:
        data = yaml.safe_load(path.read_text())
        return parse_topics(data or {})
    except (OSError, yaml.YAMLError, ValueError) as exc:
        raise TopicsError(f"{path}: {exc}") from exc


async def describe_topics(
    admin: AIOKafkaAdminClient, names: Iterable[str]
) -> dict[str, ExistingTopic]:
    """Describe those of ``names`` that exist: partition count, replication factor, and the
    topic's effective configs."""
    existing = set(await admin.list_topics())
    wanted = sorted(set(names) & existing)
    if not wanted:
        return {}
    meta = await admin.describe_topics(wanted)
    resources = [ConfigResource(ConfigResourceType.TOPIC, name, None) for name in wanted]
    responses = await admin.describe_configs(resources)
    configs: dict[str, dict[str, str]] = {}
    for response in responses:
        for res in response.to_object()["resources"]:
            if res["error_code"] == 0:
                configs[res["resource_name"]] = {
                    e["config_names"]: e["config_value"] for e in res["config_entries"]
                }
    out: dict[str, ExistingTopic] = {}
    for topic in meta:
        if topic["error_code"] != 0:
            continue
        partitions: list[dict[str, Any]] = topic["partitions"]
        rf = max((len(p["replicas"]) for p in partitions), default=0)
        out[topic["topic"]] = ExistingTopic(
            name=topic["topic"],
            partitions=len(partitions),
            replication_factor=rf,
            configs=configs.get(topic["topic"], {}),
        )
    return out


async def _create(admin: AIOKafkaAdminClient, specs: tuple[TopicSpec, ...]) -> list[str]:
    new = [
        NewTopic(s.name, s.partitions, s.replication_factor, topic_configs=s.configs) for s in specs
    ]
    response = await admin.create_topics(new)
    created: list[str] = []
    errors: list[str] = []
    for err in response.to_object()["topic_errors"]:
        if err["error_code"] == 0:
            created.append(err["topic"])
        elif err["error_code"] != _TOPIC_ALREADY_EXISTS:  # lost a race: someone created it
            errors.append(f"{err['topic']}: {err['error_message']} (code {err['error_code']})")
    if errors:
        raise TopicsError("could not create topics:\n" + "\n".join(errors))
    return created


async def _wait_for_leaders(admin: AIOKafkaAdminClient, names: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = set(names)
    while pending:
        for topic in await admin.describe_topics(sorted(pending)):
            parts = topic["partitions"]
            if topic["error_code"] == 0 and parts and all(p["leader"] >= 0 for p in parts):
                pending.discard(topic["topic"])
        if not pending:
            return
        if time.monotonic() > deadline:
            raise TopicsError(f"topics without leaders after {timeout:.0f}s: {sorted(pending)}")
        await asyncio.sleep(0.2)


async def apply_topics(
    bootstrap_servers: str,
    desired: TopicsFile,
    *,
    timeout: float = 30.0,
    security: Mapping[str, Any] | None = None,
) -> ApplyResult:
    """Create the missing topics of ``desired`` on the cluster and report differences.
    ``security``: aiokafka keyword arguments (``kafka_security.client_options``)."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers,
        request_timeout_ms=int(timeout * 1000),
        **(security or {}),
    )
    await admin.start()
    try:
        existing = await describe_topics(admin, desired.by_name())
        topic_plan = plan(desired, existing)
        created = await _create(admin, topic_plan.to_create) if topic_plan.to_create else []
        # Topics someone else created meanwhile (or not yet in our metadata) are diffed too.
        raced = [s for s in topic_plan.to_create if s.name not in created]
        await _wait_for_leaders(admin, [*created, *(s.name for s in raced)], timeout)
        live = await describe_topics(admin, [s.name for s in raced]) if raced else {}
    finally:
        await admin.close()
    differences = list(topic_plan.differences)
    for spec in raced:
        if spec.name in live:
            differences.extend(diff_topic(spec, live[spec.name]))
    return ApplyResult(
        created=tuple(created),
        present=(*topic_plan.present, *(s.name for s in raced)),
        differences=tuple(differences),
    )
