"""Who may use the controller's HTTP API, and how a browser is kept from being used against it.

Tokens (``ROLLOUT_API_TOKENS``: ``name:role:token`` entries separated by commas, and/or
``ROLLOUT_API_TOKENS_FILE``: one ``name role token`` or ``name role sha256:<hex>`` per line,
``#`` comments) are held only as sha256 digests. Roles: ``read`` (every ``GET /api``) and
``operator`` (also commands). Every ``/api`` request needs ``Authorization: Bearer <token>``;
the identity it names is what a command's ``issued_by`` becomes.

With no token configured the API is open, and the server refuses to bind to anything but a
loopback address (:func:`bind_problem`). Whatever the tokens, a command (any method other
than GET/HEAD) must be ``Content-Type: application/json`` and same-origin: an ``Origin``
header, when a browser sends one, must name the host the request was sent to, and a
``Sec-Fetch-Site`` other than ``same-origin``/``none`` is refused. A cross-site form post
fails both. ``/``, ``/metrics``, ``/healthz`` and ``/readyz`` stay open.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from app.settings import Settings

LOCAL_IDENTITY = "local"  # issued_by when no token is configured (loopback only)
_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
_DIGEST_PREFIX = "sha256:"


class ApiRole(StrEnum):
    READ = "read"
    OPERATOR = "operator"


class TokenError(ValueError):
    """A token entry that cannot be read; the message names where, never the token."""


@dataclass(frozen=True)
class ApiPrincipal:
    name: str
    role: ApiRole

    @property
    def may_command(self) -> bool:
        return self.role is ApiRole.OPERATOR


PRINCIPAL = web.RequestKey("principal", ApiPrincipal)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def file_line(name: str, role: ApiRole, token: str) -> str:
    """The line of a tokens file that grants ``token`` (by its digest only)."""
    return f"{name} {role} {_DIGEST_PREFIX}{digest(token)}"


class TokenBook:
    """Digest → principal. Empty: no authentication (loopback only)."""

    def __init__(self, entries: dict[str, ApiPrincipal] | None = None) -> None:
        self._by_digest = dict(entries or {})

    def __bool__(self) -> bool:
        return bool(self._by_digest)

    def __len__(self) -> int:
        return len(self._by_digest)

    def add(self, name: str, role: str, secret: str, where: str) -> None:
        try:
            parsed = ApiRole(role)
        except ValueError as exc:
            raise TokenError(f"{where}: role must be read or operator, not {role!r}") from exc
        if not name or not secret:
            raise TokenError(f"{where}: needs a name, a role and a token")
        key = secret[len(_DIGEST_PREFIX) :] if secret.startswith(_DIGEST_PREFIX) else digest(secret)
        if len(key) != 64:
            raise TokenError(f"{where}: a sha256 digest has 64 hex digits")
        self._by_digest[key.lower()] = ApiPrincipal(name, parsed)

    def who(self, token: str) -> ApiPrincipal | None:
        wanted = digest(token)
        found = None
        for key, principal in self._by_digest.items():  # constant time per entry
            if hmac.compare_digest(key, wanted):
                found = principal
        return found


def load_tokens(settings: Settings) -> TokenBook:
    book = TokenBook()
    if settings.api_tokens is not None:
        raw = settings.api_tokens.get_secret_value()
        for i, entry in enumerate(e.strip() for e in raw.split(",")):
            if entry:
                name, _, rest = entry.partition(":")
                role, _, secret = rest.partition(":")
                book.add(name.strip(), role.strip(), secret.strip(), f"ROLLOUT_API_TOKENS #{i + 1}")
    if settings.api_tokens_file is not None:
        path = Path(settings.api_tokens_file)
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            parts = text.split()
            if len(parts) != 3:
                raise TokenError(f"{path}:{number}: expected 'name role token'")
            book.add(parts[0], parts[1], parts[2], f"{path}:{number}")
    return book


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_problem(settings: Settings, book: TokenBook) -> str | None:
    """Why the controller must not serve its API on ``settings.http_host`` (None: it may)."""
    if book or not settings.dashboard_port or is_loopback(settings.http_host):
        return None
    return (
        f"refusing to serve the dashboard API on {settings.http_host}: no API token is "
        "configured (set ROLLOUT_API_TOKENS or ROLLOUT_API_TOKENS_FILE; `rollout api-token "
        "NAME --role operator` makes one), or bind to 127.0.0.1"
    )


def _refuse(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _cross_site(request: web.Request) -> str | None:
    """Why ``request`` looks like it came from another site's page (None: same origin)."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return f"cross-site request refused (Sec-Fetch-Site: {site})"
    origin = request.headers.get("Origin")
    if origin is None:
        return None  # not a browser, or a same-origin GET-like navigation
    if urlsplit(origin).netloc.lower() != request.host.lower():
        return f"cross-origin request refused (Origin {origin} is not {request.host})"
    return None


def middleware(book: TokenBook) -> Middleware:
    """Authenticate ``/api`` requests and keep commands same-origin JSON (see the module)."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/api"):
            return await handler(request)
        principal = ApiPrincipal(LOCAL_IDENTITY, ApiRole.OPERATOR)
        if book:
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            found = book.who(token.strip()) if scheme.lower() == "bearer" else None
            if found is None:
                return _refuse(
                    401, "a valid API token is required", **{"WWW-Authenticate": "Bearer"}
                )
            principal = found
        if request.method not in _SAFE_METHODS:
            if not principal.may_command:
                return _refuse(403, f"{principal.name} has a read-only token")
            if request.content_type != "application/json":
                return _refuse(415, "commands must be Content-Type: application/json")
            why = _cross_site(request)
            if why is not None:
                return _refuse(403, why)
        request[PRINCIPAL] = principal
        return await handler(request)

    return guard


def principal_of(request: web.Request) -> ApiPrincipal:
    return request[PRINCIPAL]
