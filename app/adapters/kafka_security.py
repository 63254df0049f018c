"""How every Rollout Kafka client authenticates: the security settings
(``ROLLOUT_SECURITY_PROTOCOL``, ``ROLLOUT_SASL_MECHANISM``, ``ROLLOUT_SASL_USERNAME``,
``ROLLOUT_SASL_PASSWORD``, ``ROLLOUT_SSL_CAFILE``) turned into aiokafka keyword arguments and
faust broker credentials.

Contracts:

* ``PLAINTEXT`` (the default) adds nothing: clients behave exactly as before.
* ``SASL_PLAINTEXT`` / ``SASL_SSL`` need a username and a password, else
  :class:`SecurityConfigError` names what is missing (never the password itself).
* ``SSL`` / ``SASL_SSL`` verify the broker with ``ssl_cafile`` (or the system's CAs).
* The password leaves its ``SecretStr`` only inside the dicts built here, which are handed to
  the client constructors and never logged; :func:`describe` is the loggable summary.
"""

from __future__ import annotations

import ssl
from typing import Any

from aiokafka.helpers import create_ssl_context

from app.settings import Settings

_SASL = ("SASL_PLAINTEXT", "SASL_SSL")
_TLS = ("SSL", "SASL_SSL")


class SecurityConfigError(ValueError):
    """The security settings are incomplete or contradictory; the message says what to set."""


def _check(settings: Settings) -> None:
    if settings.security_protocol in _SASL:
        missing = [
            name
            for name, value in (
                ("ROLLOUT_SASL_USERNAME", settings.sasl_username),
                ("ROLLOUT_SASL_PASSWORD", settings.sasl_password),
            )
            if not value
        ]
        if missing:
            raise SecurityConfigError(
                f"ROLLOUT_SECURITY_PROTOCOL={settings.security_protocol} needs "
                + " and ".join(missing)
            )


def _ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.security_protocol not in _TLS:
        return None
    cafile = str(settings.ssl_cafile) if settings.ssl_cafile is not None else None
    context: ssl.SSLContext = create_ssl_context(cafile=cafile)
    return context


def client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for any aiokafka client (consumer, producer, admin, client)."""
    _check(settings)
    if settings.security_protocol == "PLAINTEXT":
        return {}
    options: dict[str, Any] = {"security_protocol": settings.security_protocol}
    context = _ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if settings.security_protocol in _SASL:
        assert settings.sasl_password is not None  # _check
        options["sasl_mechanism"] = settings.sasl_mechanism
        options["sasl_plain_username"] = settings.sasl_username
        options["sasl_plain_password"] = settings.sasl_password.get_secret_value()
    return options


def faust_credentials(settings: Settings) -> Any:
    """The same settings as faust's ``broker_credentials`` (None for PLAINTEXT). Faust is
    imported here only: workers and the CLI never pay for it."""
    import faust

    _check(settings)
    context = _ssl_context(settings)
    if settings.security_protocol in _SASL:
        assert settings.sasl_password is not None  # _check
        return faust.SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password.get_secret_value(),
            ssl_context=context,
            mechanism=settings.sasl_mechanism,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def describe(settings: Settings) -> str:
    """A loggable one-line summary (no secret in it)."""
    if settings.security_protocol == "PLAINTEXT":
        return "PLAINTEXT"
    if settings.security_protocol in _SASL:
        return f"{settings.security_protocol} {settings.sasl_mechanism} as {settings.sasl_username}"
    return settings.security_protocol
