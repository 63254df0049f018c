"""What the repository itself promises: nothing in it points outside it."""

from __future__ import annotations

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
