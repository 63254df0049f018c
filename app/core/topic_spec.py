"""Topics as code: the model of ``topics.yaml`` and a pure planner (no I/O).

``plan(desired, existing)`` lists the topics to create and the differences between the declared
and the actual partition counts, replication factors and *declared* config values. It never
plans to alter or delete anything: changing a live topic is an operator's decision.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.core.topics import TopicNames

_TOPIC_NAME = r"^[A-Za-z0-9._-]{1,249}$"


def config_value(value: Any) -> str:
    """Kafka's string form of a YAML scalar: booleans lower-case, numbers as written."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class TopicSpec(BaseModel):
    """One declared topic. Config values are normalised to Kafka's strings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=_TOPIC_NAME)
    partitions: int = Field(ge=1)
    replication_factor: int = Field(default=1, ge=1)
    configs: dict[str, str] = Field(default_factory=dict)

    @field_validator("configs", mode="before")
    @classmethod
    def _stringify(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {str(k): config_value(v) for k, v in value.items()}
        return value


def with_replication(desired: TopicsFile, replication_factor: int | None) -> TopicsFile:
    """``desired`` with every topic at ``replication_factor`` (None: as the file says): the
    setting ``ROLLOUT_TOPIC_REPLICATION_FACTOR``, so one file serves a one-broker laptop and a
    three-broker cluster."""
    if replication_factor is None:
        return desired
    topics = tuple(
        t.model_copy(update={"replication_factor": replication_factor}) for t in desired.topics
    )
    return desired.model_copy(update={"topics": topics})


def with_names(desired: TopicsFile, names: TopicNames) -> TopicsFile:
    """``desired`` with every topic (and co-partitioned group) under its cluster name: the
    setting ``ROLLOUT_TOPIC_PREFIX``, so several environments share one cluster."""
    topics = tuple(t.model_copy(update={"name": names.declared(t.name)}) for t in desired.topics)
    groups = tuple(tuple(names.declared(n) for n in g) for g in desired.co_partitioned)
    return TopicsFile(topics=topics, co_partitioned=groups)


class TopicsFile(BaseModel):
    """The whole ``topics.yaml``: topics with unique names, and groups of co-partitioned topics
    (each group's members must be declared and share one partition count)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    topics: tuple[TopicSpec, ...]
    co_partitioned: tuple[tuple[str, ...], ...] = ()

    @model_validator(mode="after")
    def _check(self) -> TopicsFile:
        names = [t.name for t in self.topics]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"topics declared more than once: {', '.join(dupes)}")
        by_name = {t.name: t for t in self.topics}
        for group in self.co_partitioned:
            unknown = [n for n in group if n not in by_name]
            if unknown:
                raise ValueError(f"co_partitioned names undeclared topics: {', '.join(unknown)}")
            counts = {by_name[n].partitions for n in group}
            if len(counts) > 1:
                raise ValueError(f"co-partitioned topics differ in partitions: {', '.join(group)}")
        return self

    def by_name(self) -> dict[str, TopicSpec]:
        return {t.name: t for t in self.topics}


def parse_topics(data: Mapping[str, Any]) -> TopicsFile:
    """Build a :class:`TopicsFile` from the parsed YAML mapping. ``defaults`` (optional) supplies
    ``replication_factor`` and ``configs`` that each topic may override key by key.
    Raises ``pydantic.ValidationError`` (a ``ValueError``) on an invalid file."""
    defaults = dict(data.get("defaults") or {})
    default_configs = dict(defaults.pop("configs", None) or {})
    topics = []
    for raw in data.get("topics") or ():
        entry = {**defaults, **dict(raw)}
        entry["configs"] = {**default_configs, **dict(raw.get("configs") or {})}
        topics.append(entry)
    return TopicsFile.model_validate(
        {"topics": topics, "co_partitioned": data.get("co_partitioned") or ()}
    )


class ExistingTopic(BaseModel):
    """A topic as the cluster describes it; ``configs`` holds at least the declared keys."""

    model_config = ConfigDict(frozen=True)

    name: str
    partitions: int
    replication_factor: int
    configs: dict[str, str] = Field(default_factory=dict)


class Difference(BaseModel):
    """A declared value that the live topic does not have. ``field`` is ``partitions``,
    ``replication_factor`` or ``config:<key>``; ``actual`` is None for an unset config."""

    model_config = ConfigDict(frozen=True)

    topic: str
    field: str
    desired: str
    actual: str | None

    def __str__(self) -> str:
        return f"{self.topic}: {self.field} is {self.actual!r}, declared {self.desired!r}"


class TopicPlan(BaseModel):
    """What applying the file would do: create ``to_create``; ``present`` already exist;
    ``differences`` are reported only, never altered."""

    model_config = ConfigDict(frozen=True)

    to_create: tuple[TopicSpec, ...] = ()
    present: tuple[str, ...] = ()
    differences: tuple[Difference, ...] = ()


def diff_topic(spec: TopicSpec, actual: ExistingTopic) -> list[Difference]:
    """Differences between one declared topic and its live counterpart, in a stable order."""
    out: list[Difference] = []
    if spec.partitions != actual.partitions:
        out.append(
            Difference(
                topic=spec.name,
                field="partitions",
                desired=str(spec.partitions),
                actual=str(actual.partitions),
            )
        )
    if spec.replication_factor != actual.replication_factor:
        out.append(
            Difference(
                topic=spec.name,
                field="replication_factor",
                desired=str(spec.replication_factor),
                actual=str(actual.replication_factor),
            )
        )
    for key in sorted(spec.configs):
        have = actual.configs.get(key)
        if have != spec.configs[key]:
            out.append(
                Difference(
                    topic=spec.name, field=f"config:{key}", desired=spec.configs[key], actual=have
                )
            )
    return out


def plan(desired: TopicsFile, existing: Mapping[str, ExistingTopic]) -> TopicPlan:
    """Plan an idempotent apply of ``desired`` onto a cluster holding ``existing`` (by name).
    Topics the cluster has but the file does not declare are ignored."""
    to_create: list[TopicSpec] = []
    present: list[str] = []
    differences: list[Difference] = []
    for spec in desired.topics:
        actual = existing.get(spec.name)
        if actual is None:
            to_create.append(spec)
        else:
            present.append(spec.name)
            differences.extend(diff_topic(spec, actual))
    return TopicPlan(
        to_create=tuple(to_create), present=tuple(present), differences=tuple(differences)
    )
