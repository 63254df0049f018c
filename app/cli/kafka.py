"""``rollout kafka start|stop|status``: the local single-node KRaft broker for development and
tests (see :mod:`app.adapters.kafka_local`). Exit 1 when it cannot be started or stopped, 3 when
``status`` finds nothing answering, 64 for ``--secure`` without credentials."""

from __future__ import annotations

from typing import Annotated

import typer

from app.adapters import kafka_jars, kafka_local
from app.cli import app
from app.cli.failures import ExitCode
from app.settings import load_settings

kafka_app = typer.Typer(no_args_is_help=True, help="Run a local single-node Kafka broker.")
app.add_typer(kafka_app, name="kafka")


def _config() -> kafka_local.BrokerConfig:
    return kafka_local.BrokerConfig.from_settings(load_settings())


@kafka_app.command()
def start(
    fresh: Annotated[
        bool, typer.Option("--fresh", help="Stop it and wipe its data dir first.")
    ] = False,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the broker to answer.")
    ] = 90.0,
    secure: Annotated[
        bool,
        typer.Option(
            "--secure",
            help="Require SASL/SCRAM on the client listener, as the user of"
            " ROLLOUT_SASL_USERNAME / ROLLOUT_SASL_PASSWORD (with"
            " ROLLOUT_SECURITY_PROTOCOL=SASL_PLAINTEXT); refuse to start without them.",
        ),
    ] = False,
) -> None:
    """Start the broker (fetching Kafka with mvn on first use); return once it answers."""
    config = _config()
    if secure and config.scram is None:
        typer.secho(
            "error: --secure needs ROLLOUT_SECURITY_PROTOCOL=SASL_PLAINTEXT,"
            " ROLLOUT_SASL_MECHANISM=SCRAM-SHA-256 or SCRAM-SHA-512 (default SCRAM-SHA-256),"
            " ROLLOUT_SASL_USERNAME and ROLLOUT_SASL_PASSWORD in the environment",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(int(ExitCode.USAGE))
    if not (config.libs_dir / ".fetched").is_file():
        typer.echo(f"Fetching Kafka {kafka_jars.KAFKA_VERSION} jars into {config.libs_dir} ...")
    try:
        result = kafka_local.start(config, fresh=fresh, timeout=timeout)
    except kafka_local.KafkaLocalError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from exc
    st = result.status
    auth = (
        f" (SASL_PLAINTEXT, {config.scram.mechanism} as {config.scram.username})"
        if config.scram
        else ""
    )
    if result.action == "started":
        typer.echo(f"Kafka started on {st.bootstrap}{auth} (pid {st.pid}) in {result.seconds:.1f}s")
    elif result.action == "already_running":
        typer.echo(f"Kafka already running on {st.bootstrap} (pid {st.pid})")
    else:
        typer.secho(
            f"A broker not started by rollout already answers on {st.bootstrap}; using it.",
            fg=typer.colors.YELLOW,
        )
    typer.echo(f"data: {st.data_dir}  log: {st.log_file}")


@kafka_app.command()
def stop(
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait after SIGTERM before SIGKILL.")
    ] = 30.0,
) -> None:
    """Stop the broker started by `rollout kafka start` (never any other process)."""
    config = _config()
    try:
        stopped = kafka_local.stop(config, timeout=timeout)
    except kafka_local.KafkaLocalError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from exc
    if stopped:
        typer.echo(f"Kafka on {config.bootstrap} stopped")
    elif kafka_local.answers(config.bootstrap, security=config.client_options()):
        typer.secho(
            f"The broker on {config.bootstrap} was not started by rollout; left it running.",
            fg=typer.colors.YELLOW,
        )
    else:
        typer.echo("Kafka is not running")


@kafka_app.command()
def status() -> None:
    """Report whether the broker runs; exit 1 when nothing answers."""
    st = kafka_local.status(_config())
    state = "running" if st.running else "not running"
    owner = f"pid {st.pid}" if st.managed else ("not started by rollout" if st.running else "-")
    typer.echo(f"Kafka {state} on {st.bootstrap} ({owner})")
    typer.echo(f"data: {st.data_dir}  log: {st.log_file}")
    if not st.running:
        raise typer.Exit(int(ExitCode.UNREACHABLE))
