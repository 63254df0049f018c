"""The layout's rules, checked on the source: which package may import which."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "app"


def imported_modules(source: str, package: str) -> list[tuple[int, str]]:
    """Every module ``source`` (a module of ``package``, e.g. ``app.controller``) imports:
    ``import x.y``, ``from x.y import z`` (both ``x.y`` and ``x.y.z``, since ``z`` may be a
    module), relative imports resolved, wherever the statement sits; with its line."""
    parts = package.split(".")
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = parts[: len(parts) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def forbidden_imports(package_dir: Path, forbidden: str) -> list[str]:
    """``file:line: module`` for every import of ``forbidden`` (or below it) in the package."""
    found = []
    for path in sorted(package_dir.rglob("*.py")):
        package = ".".join(path.relative_to(REPO).parent.parts)
        for line, module in imported_modules(path.read_text(), package):
            if module == forbidden or module.startswith(forbidden + "."):
                found.append(f"{path.relative_to(REPO)}:{line}: {module}")
    return found


def test_the_controller_does_not_import_the_worker() -> None:
    assert forbidden_imports(APP / "controller", "app.worker") == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from app.worker.scoring import score_batch\n", "app.worker.scoring"),
        ("import app.worker.loop as loop\n", "app.worker.loop"),
        ("from app import worker\n", "app.worker"),
        ("from ..worker import loop\n", "app.worker"),
        ("from .. import worker\n", "app.worker"),
        ("def f() -> None:\n    from app.worker.service import serve\n", "app.worker.service"),
    ],
)
def test_every_form_of_import_is_seen(source: str, expected: str) -> None:
    modules = [m for _, m in imported_modules(source, "app.controller")]
    assert expected in modules


def test_text_that_merely_names_the_worker_is_not_an_import() -> None:
    source = '"""Scores as app.worker.scoring did."""\nx = "from app.worker import loop"\n'
    assert [m for _, m in imported_modules(source, "app.controller") if "worker" in m] == []
