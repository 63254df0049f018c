"""The controller's HTTP API: tokens (read, operator), stored hashed; commands only as
same-origin JSON from an operator, with ``issued_by`` the token's identity; a cross-site form
post refused; no tokens → loopback only. Served by the real ``Dashboard`` app (aiohttp's test
server), with a fake command sender (no broker)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from app.adapters.decision_log import DecisionLog
from app.controller import access
from app.controller.access import ApiRole, TokenBook, TokenError
from app.controller.dashboard import Dashboard
from app.core.events import ControlCommand, DecisionEvent
from app.settings import Settings
from tests.builders import state

OPERATOR = "op-token-0123456789"
READER = "read-token-0123456789"


def book() -> TokenBook:
    tokens = TokenBook()
    tokens.add("alice", "operator", OPERATOR, "test")
    tokens.add("bob", "read", f"sha256:{access.digest(READER)}", "test")  # given by digest
    return tokens


class Sent:
    def __init__(self) -> None:
        self.commands: list[ControlCommand] = []

    async def __call__(self, command: ControlCommand) -> DecisionEvent:
        self.commands.append(command)
        return DecisionEvent(
            deployment=command.deployment,
            epoch=2,
            action=command.action,
            command_id=command.command_id,
            accepted=True,
            reason="ok",
            decided_by=command.issued_by,
        )


@pytest.fixture
async def sent() -> Sent:
    return Sent()


async def _client(tokens: TokenBook, sent: Sent) -> TestClient[Any, Any]:
    dashboard = Dashboard(lambda: {"fraud": state()}, dict, DecisionLog(Settings()), sent, tokens)
    client: TestClient[Any, Any] = TestClient(TestServer(dashboard.app()))
    await client.start_server()
    return client


@pytest.fixture
async def client(sent: Sent) -> AsyncIterator[TestClient[Any, Any]]:
    c = await _client(book(), sent)
    try:
        yield c
    finally:
        await c.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


JSON = {"Content-Type": "application/json"}
PAUSE = b'{"action": "pause", "reason": "look", "issued_by": "mallory"}'
COMMANDS = "/api/deployments/fraud/commands"


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/api/deployments", {}, 401),
        ("/api/deployments", bearer("wrong"), 401),
        ("/api/deployments", {"Authorization": OPERATOR}, 401),  # no scheme
        ("/api/deployments", bearer(READER), 200),
        ("/api/deployments/fraud", bearer(OPERATOR), 200),
        ("/metrics", {}, 200),
        ("/", {}, 200),
    ],
)
async def test_every_api_read_needs_a_token(
    client: TestClient[Any, Any], path: str, headers: dict[str, str], status: int
) -> None:
    response = await client.get(path, headers=headers)
    assert response.status == status, await response.text()


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({}, PAUSE, 401),
        (bearer(READER) | JSON, PAUSE, 403),  # read-only token
        (bearer(OPERATOR), PAUSE, 415),  # no content type
        (bearer(OPERATOR) | {"Content-Type": "application/x-www-form-urlencoded"}, PAUSE, 415),
        (bearer(OPERATOR) | {"Content-Type": "text/plain"}, PAUSE, 415),
        (bearer(OPERATOR) | JSON | {"Origin": "http://evil.example"}, PAUSE, 403),
        (bearer(OPERATOR) | JSON | {"Origin": "null"}, PAUSE, 403),
        (bearer(OPERATOR) | JSON | {"Sec-Fetch-Site": "cross-site"}, PAUSE, 403),
        (bearer(OPERATOR) | JSON, b'{"action": "deploy"}', 400),
        (bearer(OPERATOR) | JSON, PAUSE, 200),
        (bearer(OPERATOR) | JSON | {"Sec-Fetch-Site": "same-origin"}, PAUSE, 200),
    ],
)
async def test_commands_need_an_operator_json_and_the_same_origin(
    client: TestClient[Any, Any],
    sent: Sent,
    headers: dict[str, str],
    body: bytes,
    status: int,
) -> None:
    response = await client.post(COMMANDS, data=body, headers=headers)
    assert response.status == status, await response.text()
    assert len(sent.commands) == (1 if status == 200 else 0)  # refused: nothing is sent


async def test_issued_by_is_the_authenticated_identity(
    client: TestClient[Any, Any], sent: Sent
) -> None:
    origin = f"http://{client.server.host}:{client.server.port}"
    response = await client.post(
        COMMANDS, data=PAUSE, headers=bearer(OPERATOR) | JSON | {"Origin": origin}
    )
    assert response.status == 200
    (command,) = sent.commands
    assert command.issued_by == "alice"  # not "mallory", what the body claimed
    assert (await response.json())["decided_by"] == "alice"


async def test_a_cross_site_form_post_is_refused_even_without_tokens(sent: Sent) -> None:
    """What a page on another site can make a browser send to 127.0.0.1 (no preflight)."""
    client = await _client(TokenBook(), sent)
    try:
        form = await client.post(
            COMMANDS,
            data={"action": "rollback"},
            headers={"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"},
        )
        assert form.status == 415
        as_json = await client.post(
            COMMANDS, data=b'{"action": "rollback"}', headers=JSON | {"Origin": "http://x.test"}
        )
        assert as_json.status == 403
        local = await client.post(COMMANDS, data=b'{"action": "rollback"}', headers=JSON)
        assert local.status == 200
    finally:
        await client.close()
    assert [c.issued_by for c in sent.commands] == [access.LOCAL_IDENTITY]


@pytest.mark.parametrize(
    ("host", "tokens", "refused"),
    [
        ("127.0.0.1", False, False),
        ("::1", False, False),
        ("localhost", False, False),
        ("0.0.0.0", False, True),
        ("10.1.2.3", False, True),
        ("0.0.0.0", True, False),
    ],
)
def test_without_tokens_only_loopback_is_served(host: str, tokens: bool, refused: bool) -> None:
    settings = Settings(http_host=host)
    problem = access.bind_problem(settings, book() if tokens else TokenBook())
    assert (problem is not None) == refused
    if problem:
        assert host in problem and "ROLLOUT_API_TOKENS" in problem


def test_tokens_from_environment_and_file_are_kept_as_digests(tmp_path: Path) -> None:
    line = access.file_line("carol", ApiRole.READ, "carol-secret")
    assert "carol-secret" not in line
    path = tmp_path / "tokens"
    path.write_text(f"# who role token\n{line}\ndave operator dave-secret\n")
    settings = Settings(
        api_tokens=SecretStr("erin:operator:erin-secret, frank:read:frank-secret"),
        api_tokens_file=path,
    )
    loaded = access.load_tokens(settings)
    assert len(loaded) == 4
    assert loaded.who("carol-secret") == access.ApiPrincipal("carol", ApiRole.READ)
    assert loaded.who("dave-secret") == access.ApiPrincipal("dave", ApiRole.OPERATOR)
    assert loaded.who("frank-secret") == access.ApiPrincipal("frank", ApiRole.READ)
    assert loaded.who("nobody") is None
    assert "erin-secret" not in repr(vars(loaded))


@pytest.mark.parametrize(
    "entry", ["erin:admin:x", "erin:operator:", ":operator:x", "erin:read:sha256:abc"]
)
def test_a_bad_token_entry_is_refused_without_printing_the_token(entry: str) -> None:
    with pytest.raises(TokenError) as caught:
        access.load_tokens(Settings(api_tokens=SecretStr(entry)))
    assert "ROLLOUT_API_TOKENS #1" in str(caught.value)
    secret = entry.rsplit(":", 1)[-1]
    if len(secret) > 1:
        assert secret not in str(caught.value)
