"""The committed JSON Schemas (schemas/) are exactly what the event models generate, and
``rollout schemas`` writes and checks them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import typer

from app.cli.schemas import write_schemas
from app.core.contract_schemas import EVENTS, file_name, render, schemas

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "schemas"
REGENERATE = "schemas/ drifted from app/core/events.py: run `rollout schemas` and commit schemas/"


@pytest.mark.parametrize("name", sorted(schemas()))
def test_committed_schema_matches_the_model(name: str) -> None:
    path = COMMITTED / name
    assert path.is_file(), f"{name} is missing. {REGENERATE}"
    assert path.read_text(encoding="utf-8") == render(schemas()[name]), REGENERATE


def test_no_committed_schema_without_a_model() -> None:
    committed = {p.name for p in COMMITTED.glob("*.json")}
    assert committed == set(schemas()), REGENERATE


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: e.__name__)
def test_each_schema_is_a_valid_draft_2020_12_schema(event: type) -> None:
    jsonschema.Draft202012Validator.check_schema(schemas()[file_name(event)])


def test_render_is_canonical() -> None:
    text = render({"b": [2, 1], "a": {"d": 1, "c": "é"}})
    assert text == '{\n  "a": {\n    "c": "é",\n    "d": 1\n  },\n  "b": [\n    2,\n    1\n  ]\n}\n'


def _run(out: Path, check: bool) -> int:
    try:
        write_schemas(out=out, check=check)
    except typer.Exit as exit_:
        return exit_.exit_code
    return 0


def test_the_verb_writes_then_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(tmp_path, check=True) == 1  # nothing there yet
    assert _run(tmp_path, check=False) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(schemas())
    assert _run(tmp_path, check=True) == 0
    (tmp_path / "Feedback.json").write_text("{}\n", encoding="utf-8")
    (tmp_path / "Gone.json").write_text("{}\n", encoding="utf-8")
    capsys.readouterr()
    assert _run(tmp_path, check=True) == 1
    out = capsys.readouterr().out
    assert "differs" in out and "Feedback.json" in out
    assert "stale" in out and "Gone.json" in out
    assert _run(tmp_path, check=False) == 0  # rewrites the drifted file, leaves the stranger
    assert (tmp_path / "Feedback.json").read_text(encoding="utf-8") == render(
        schemas()["Feedback.json"]
    )


def test_rollout_schemas_check_passes_on_the_repository() -> None:
    """Through the real entry point (``python -m app`` is ``rollout``): the verb is registered."""
    done = subprocess.run(
        [sys.executable, "-m", "app", "schemas", "--check", "--out", str(COMMITTED)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "up to date" in done.stdout
