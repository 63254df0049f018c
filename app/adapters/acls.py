"""Apply ``acls.yaml`` to a cluster: create the declared ACLs that are missing and report the
ones the cluster has for the declared principals that the file does not declare (never
deleted). aiokafka 0.14 has the protocol's CreateAcls and DescribeAcls requests but no admin
call for them: they are sent through its admin client's connection (its one private access).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import for_code
from aiokafka.protocol.admin import CreateAclsRequest, DescribeAclsRequest

from app.core.acl_spec import (
    ALLOW,
    ANY_HOST,
    AclBinding,
    AclsFile,
    Operation,
    PatternType,
    ResourceType,
    bindings,
    parse_acls,
    plan,
)

_ANY = 1  # the protocol's ANY for resource, pattern, operation and permission filters


class AclsError(RuntimeError):
    """The ACL file is invalid, or the cluster refused to create an ACL."""


@dataclass(frozen=True)
class AclsResult:
    created: tuple[AclBinding, ...]
    present: tuple[AclBinding, ...]
    undeclared: tuple[AclBinding, ...]


def load_acls_file(path: Path) -> AclsFile:
    try:
        return parse_acls(yaml.safe_load(path.read_text()) or {})
    except (OSError, yaml.YAMLError, ValueError) as exc:
        raise AclsError(f"{path}: {exc}") from exc


def _raise_for(code: int, message: str | None, what: str) -> None:
    if code != 0:
        raise for_code(code)(f"{what}: {message or ''}".strip())


async def describe_acls(admin: AIOKafkaAdminClient, principal: str) -> set[AclBinding]:
    """The ALLOW ACLs of ``principal`` on the cluster (the kinds ``acl_spec`` knows)."""
    request = DescribeAclsRequest(_ANY, None, _ANY, principal, None, _ANY, ALLOW)
    response = (await admin._send_request(request)).to_object()
    _raise_for(response["error_code"], response["error_message"], f"describe ACLs of {principal}")
    found: set[AclBinding] = set()
    for resource in response["resources"]:
        for acl in resource["acls"]:
            try:
                found.add(
                    AclBinding(
                        acl["principal"],
                        ResourceType(resource["resource_type"]),
                        resource["resource_name"],
                        PatternType(resource["resource_pattern_type"]),
                        Operation(acl["operation"]),
                    )
                )
            except ValueError:  # a kind acls.yaml never declares: not ours to report
                continue
    return found


async def create_acl(admin: AIOKafkaAdminClient, acl: AclBinding) -> None:
    request = CreateAclsRequest(
        int(acl.resource_type),
        acl.resource_name,
        int(acl.pattern_type),
        acl.principal,
        ANY_HOST,
        int(acl.operation),
        ALLOW,
    )
    response = (await admin._send_request(request)).to_object()
    for result in response["creation_responses"]:
        try:
            _raise_for(result["error_code"], result["error_message"], f"create {acl}")
        except Exception as exc:
            raise AclsError(str(exc)) from exc


async def apply_acls(
    bootstrap_servers: str,
    desired: AclsFile,
    *,
    named: Callable[[str], str] = lambda name: name,
    security: Mapping[str, Any] | None = None,
    timeout: float = 30.0,
) -> AclsResult:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers,
        request_timeout_ms=int(timeout * 1000),
        **(security or {}),
    )
    await admin.start()
    try:
        wanted = bindings(desired, named)
        existing: set[AclBinding] = set()
        for principal in sorted({b.principal for b in wanted}):
            existing |= await describe_acls(admin, principal)
        acl_plan = plan(wanted, existing)
        for acl in acl_plan.to_create:
            await create_acl(admin, acl)
    finally:
        await admin.close()
    return AclsResult(acl_plan.to_create, acl_plan.present, acl_plan.undeclared)
