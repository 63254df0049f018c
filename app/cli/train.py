"""``rollout train``: (re)train the ``fraud`` model versions into the model store.

Training is deterministic, so on an unchanged checkout this rewrites nothing and reports
every version as unchanged; the table shows each version's offline metrics on held-out
current traffic and its sha256.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from app.cli import app
from app.settings import load_settings

_METRICS = {"auc": "AUC", "accuracy": "acc", "log_loss": "logloss", "recall": "recall"}


@app.command()
def train(
    out: Annotated[
        Path | None,
        typer.Option(help="Model store to write into (default: ROLLOUT_MODEL_STORE, 'models')."),
    ] = None,
) -> None:
    """Train fraud v1 (old data), v2 (recent data) and v3 (degraded) reproducibly."""
    from app.training.train import DEPLOYMENT, train_all  # heavy imports: only when used

    store = out if out is not None else load_settings().model_store
    run = train_all(store)
    table = Table(title=f"{DEPLOYMENT} models in {store} (metrics on held-out current traffic)")
    table.add_column("version")
    for header in _METRICS.values():
        table.add_column(header, justify="right")
    table.add_column("sha256", no_wrap=True)
    table.add_column("changed")
    for version in run.versions:
        table.add_row(
            version.version,
            *(f"{version.metrics[name]:.4f}" for name in _METRICS),
            version.sha256[:12],
            "yes" if version.changed else "no",
        )
    console = Console()
    console.print(table)
    spec = "changed" if run.spec_changed else "unchanged"
    console.print(f"{DEPLOYMENT}/deployment.yaml: {spec}")
