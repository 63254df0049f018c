"""The ``rollout`` command line: one typer app; each group of verbs lives in a module of its own
and registers itself on ``app`` when imported."""

from __future__ import annotations

import typer

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Rollout: serve ONNX models on Kafka and roll out new versions safely.",
)


def main() -> None:
    from app.adapters.kafka_clients import configure_aiokafka
    from app.cli import (  # noqa: F401
        acls,
        api_token,
        bench,
        chaos,
        control,
        demo,
        fleet,
        history,
        kafka,
        models,
        schemas,
        serve,
        simulate,
        topics,
        traffic,
        train,
    )
    from app.cli.failures import run

    configure_aiokafka()
    run(app)
