"""What a ``rollout`` verb's exit code means, and how a failure becomes one line on stderr.

| code | meaning |
|---:|---|
| 0 | done (a command accepted, a listing printed) |
| 1 | rejected: the controller refused the command; or what was asked for is not there
  (no such deployment or decision), or could not be done (topics differ with ``--strict``) |
| 2 | no answer: the command was written but no controller answered within ``--wait`` |
| 3 | broker unreachable (connection refused, timed out, no broker at that address) |
| 4 | authentication or authorization refused (SASL credentials, a Kafka ACL, an API token) |
| 5 | not set up: a topic Rollout needs is missing (or this principal may not see it) |
| 64 | usage: a bad argument, option or setting |

:func:`run` wraps the typer app: usage errors exit 64 (click's default is 2, which would read
as "no answer"), and Kafka failures print one line instead of a traceback.
"""

from __future__ import annotations

import logging
import sys
from enum import IntEnum
from typing import NoReturn

import typer
from aiokafka import errors as kafka_errors
from pydantic import ValidationError

try:  # typer vendors click since 0.20; before, it used click itself
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover
    from click import exceptions as click_exceptions  # type: ignore[no-redef]

from app.adapters.kafka_clients import MissingTopicError
from app.adapters.kafka_security import SecurityConfigError


class ExitCode(IntEnum):
    OK = 0
    REJECTED = 1
    NO_ANSWER = 2
    UNREACHABLE = 3
    REFUSED = 4
    NOT_SET_UP = 5
    USAGE = 64


_AUTHORIZATION = (
    kafka_errors.TopicAuthorizationFailedError,
    kafka_errors.GroupAuthorizationFailedError,
    kafka_errors.ClusterAuthorizationFailedError,
    kafka_errors.TransactionalIdAuthorizationFailed,
)
_AUTHENTICATION = (
    kafka_errors.SaslAuthenticationFailed,
    kafka_errors.AuthenticationFailedError,
    kafka_errors.AuthenticationMethodNotSupported,
)


class _BootstrapErrors(logging.Handler):
    """aiokafka logs why it could not bootstrap (e.g. SASL refused) and then raises a bare
    ``KafkaConnectionError``: keep the last cause, and keep the log line off the terminal."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.last: BaseException | None = None

    def emit(self, record: logging.LogRecord) -> None:
        for arg in record.args if isinstance(record.args, tuple) else ():
            if isinstance(arg, BaseException):
                self.last = arg


_BOOTSTRAP = _BootstrapErrors()


def fail(code: ExitCode, message: str) -> NoReturn:
    """Print ``error: message`` (one line) on stderr and exit with ``code``."""
    typer.secho(f"error: {' '.join(message.split())}", fg=typer.colors.RED, err=True)
    raise SystemExit(int(code))


def classify(exc: BaseException, bootstrap: str) -> tuple[ExitCode, str] | None:
    """The exit code and one-line message for ``exc``; None when it is not a known failure."""
    cause = _BOOTSTRAP.last
    if isinstance(exc, _AUTHORIZATION):
        return ExitCode.REFUSED, f"not authorized on {bootstrap}: {exc}"
    if isinstance(exc, _AUTHENTICATION) or (
        isinstance(exc, kafka_errors.KafkaConnectionError) and isinstance(cause, _AUTHENTICATION)
    ):
        return ExitCode.REFUSED, f"authentication refused by {bootstrap}: {cause or exc}"
    if isinstance(exc, kafka_errors.KafkaConnectionError | kafka_errors.KafkaTimeoutError):
        why = f" ({cause})" if cause is not None else ""
        return ExitCode.UNREACHABLE, f"the Kafka broker at {bootstrap} is unreachable{why}"
    if isinstance(exc, kafka_errors.RequestTimedOutError | kafka_errors.NodeNotReadyError):
        return ExitCode.UNREACHABLE, f"the Kafka broker at {bootstrap} does not answer: {exc}"
    if isinstance(exc, MissingTopicError):
        return ExitCode.NOT_SET_UP, str(exc)
    if isinstance(exc, SecurityConfigError):
        return ExitCode.USAGE, str(exc)
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return ExitCode.USAGE, f"bad setting {where}: {first['msg']}"
    return None


def _bootstrap_servers() -> str:
    try:
        from app.settings import load_settings

        return load_settings().bootstrap_servers
    except ValidationError:
        return "the configured bootstrap servers"


def run(app: typer.Typer) -> NoReturn:
    """Run ``app`` with the exit codes above."""
    # Until a service verb sets up logging, nothing from aiokafka or asyncio (a client left
    # unclosed by a failed start) reaches the terminal through Python's last-resort handler.
    logging.getLogger("aiokafka").addHandler(_BOOTSTRAP)
    logging.getLogger("asyncio").addHandler(logging.NullHandler())
    try:
        code = app(standalone_mode=False)
    except click_exceptions.UsageError as exc:
        exc.show()
        raise SystemExit(int(ExitCode.USAGE)) from None
    except click_exceptions.ClickException as exc:
        exc.show()
        raise SystemExit(exc.exit_code) from None
    except typer.Abort:
        fail(ExitCode.REJECTED, "aborted")
    except Exception as exc:
        known = classify(exc, _bootstrap_servers())
        if known is None:
            raise
        fail(*known)
    finally:
        sys.stdout.flush()
    raise SystemExit(code if isinstance(code, int) else 0)
