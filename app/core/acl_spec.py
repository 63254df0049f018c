"""Kafka ACLs as code: the model of ``acls.yaml`` and a pure planner (no I/O).

A role names its principals and what they may do: ``topics.read`` (Read, Describe),
``topics.write`` (Write, Describe), ``groups`` (Read, Describe: consumer groups, committing
offsets in a transaction included) and ``transactional_ids`` (Write, Describe). Groups and
transactional ids are a list of literal names or ``{prefix: ...}``. Every ACL allows, from any
host. ``plan(desired, existing)`` lists the ACLs to create and, as differences, the ACLs the
cluster has for the declared principals that the file does not declare (never deleted).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ResourceType(IntEnum):  # Kafka's protocol codes
    TOPIC = 2
    GROUP = 3
    CLUSTER = 4
    TRANSACTIONAL_ID = 5


class PatternType(IntEnum):
    LITERAL = 3
    PREFIXED = 4


class Operation(IntEnum):
    ALL = 2
    READ = 3
    WRITE = 4
    CREATE = 5
    DELETE = 6
    ALTER = 7
    DESCRIBE = 8
    CLUSTER_ACTION = 9
    DESCRIBE_CONFIGS = 10
    ALTER_CONFIGS = 11
    IDEMPOTENT_WRITE = 12


ALLOW = 3  # Kafka's permission type code
_READ = (Operation.READ, Operation.DESCRIBE)
_WRITE = (Operation.WRITE, Operation.DESCRIBE)
ANY_HOST = "*"


@dataclass(frozen=True, order=True)
class AclBinding:
    principal: str
    resource_type: ResourceType
    resource_name: str
    pattern_type: PatternType
    operation: Operation

    def __str__(self) -> str:
        pattern = "prefix " if self.pattern_type is PatternType.PREFIXED else ""
        return (
            f"{self.principal} {self.operation.name} on {self.resource_type.name} "
            f"{pattern}{self.resource_name}"
        )


class Names(BaseModel):
    """Literal names, or one prefix."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    names: tuple[str, ...] = ()
    prefix: str | None = None

    def resources(self) -> list[tuple[str, PatternType]]:
        found = [(n, PatternType.LITERAL) for n in self.names]
        if self.prefix:
            found.append((self.prefix, PatternType.PREFIXED))
        return found


def _names(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return {"names": value}
    return value if value is not None else {}


class TopicRights(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()


class Role(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    principals: tuple[str, ...] = Field(min_length=1)
    topics: TopicRights = TopicRights()
    groups: Names = Names()
    transactional_ids: Names = Names()

    @field_validator("groups", "transactional_ids", mode="before")
    @classmethod
    def _listed(cls, value: Any) -> Any:
        return _names(value)

    @field_validator("principals")
    @classmethod
    def _typed(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for principal in value:
            kind, _, name = principal.partition(":")
            if not kind or not name:
                raise ValueError(f"a principal is TYPE:NAME (e.g. User:alice), not {principal!r}")
        return value


class AclsFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    roles: dict[str, Role]


def parse_acls(data: Any) -> AclsFile:
    return AclsFile.model_validate(data)


def bindings(acls: AclsFile, named: Callable[[str], str] = lambda name: name) -> set[AclBinding]:
    """Every ACL ``acls`` declares; ``named`` maps a declared topic, group or transactional id
    to its cluster name (``TopicNames.declared``: the environment's prefix, which topics,
    consumer groups and transactional ids all take)."""
    out: set[AclBinding] = set()
    for role in acls.roles.values():
        rights: list[tuple[ResourceType, str, PatternType, tuple[Operation, ...]]] = []
        for topic in role.topics.read:
            rights.append((ResourceType.TOPIC, named(topic), PatternType.LITERAL, _READ))
        for topic in role.topics.write:
            rights.append((ResourceType.TOPIC, named(topic), PatternType.LITERAL, _WRITE))
        for name, pattern in role.groups.resources():
            rights.append((ResourceType.GROUP, named(name), pattern, _READ))
        for name, pattern in role.transactional_ids.resources():
            rights.append((ResourceType.TRANSACTIONAL_ID, named(name), pattern, _WRITE))
        for principal in role.principals:
            for rtype, name, pattern, ops in rights:
                out.update(AclBinding(principal, rtype, name, pattern, op) for op in ops)
    return out


def declared_topics(acls: AclsFile) -> set[str]:
    return {t for role in acls.roles.values() for t in (*role.topics.read, *role.topics.write)}


@dataclass(frozen=True)
class AclPlan:
    to_create: tuple[AclBinding, ...]
    present: tuple[AclBinding, ...]
    undeclared: tuple[AclBinding, ...]  # on the cluster for a declared principal; not deleted


def plan(desired: set[AclBinding], existing: Iterable[AclBinding]) -> AclPlan:
    have = set(existing)
    principals = {b.principal for b in desired}
    return AclPlan(
        to_create=tuple(sorted(desired - have)),
        present=tuple(sorted(desired & have)),
        undeclared=tuple(sorted(b for b in have - desired if b.principal in principals)),
    )
