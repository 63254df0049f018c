"""What the repository itself promises: nothing in it points outside it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Written in two pieces, so that this file does not mention them itself.
OUTSIDE = ("../" + "shared", "shared/" + "DESIGN")
NOT_OURS = {".git", ".venv", ".rollout", ".mypy_cache", ".ruff_cache", ".pytest_cache"}


def repository_files() -> list[Path]:
    """The files git tracks; outside a git checkout (an exported tree), every file but the
    caches, the virtualenv and the local broker."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
        ).stdout
        return [REPO / name for name in listed.decode().split("\0") if name]
    except (OSError, subprocess.CalledProcessError):
        return [
            path
            for path in REPO.rglob("*")
            if path.is_file() and not NOT_OURS & set(path.relative_to(REPO).parts)
        ]


def test_no_file_points_outside_the_repository() -> None:
    files = repository_files()
    assert any(f.name == "README.md" for f in files)
    found = [
        f"{path.relative_to(REPO)}: {needle}"
        for path in files
        if path.is_file()
        for needle in OUTSIDE
        if needle.encode() in path.read_bytes()
    ]
    assert found == []


def readme_map() -> list[tuple[list[str], str]]:
    """The rows of the README's map of ``app/``: the backticked names of the first column,
    and the second column."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Start here") :]
    rows = []
    for line in section.splitlines()[2:]:
        if line.startswith("| `"):
            first, second = line.strip("|").split(" | ", 1)
            rows.append((re.findall(r"`([^`]+)`", first), second))
        elif rows and not line.startswith("|"):
            break
    return rows


def mapped_modules(rows: list[tuple[list[str], str]]) -> set[str]:
    """What the map names, relative to ``app/``: files as written; for a package row
    (``cli/``), each module its second column names in backticks."""
    named: set[str] = set()
    for names, owns in rows:
        for name in names:
            if name.endswith("/"):
                named |= {f"{name}{stem}.py" for stem in re.findall(r"`(\w+)`", owns)}
            else:
                named.add(name)
    return named


def test_the_readme_map_matches_the_tree() -> None:
    named = mapped_modules(readme_map())
    app = REPO / "app"
    modules = {  # package markers aside
        str(path.relative_to(app))
        for path in [*app.rglob("*.py"), *app.rglob("*.html")]
        if path.name != "__init__.py"
    }
    assert sorted(modules - named) == [], "modules missing from the map"
    assert sorted(named - modules) == [], "the map names modules that do not exist"


def test_the_map_reader_sees_files_and_package_rows() -> None:
    rows = [(["core/x.py"], "owns"), (["cli/"], "the typer app in `__init__.py`; `kafka`, `demo`")]
    assert mapped_modules(rows) == {"core/x.py", "cli/kafka.py", "cli/demo.py"}
