"""The alert rules in ``deploy/prometheus`` pass ``promtool check rules`` and their unit
tests (``promtool test rules``), and name only metrics Rollout exports. promtool comes with
Debian's ``prometheus`` package; without it these skip, unless ``ROLLOUT_REQUIRE_PROMETHEUS=1``
(CI) makes that a failure."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from app.adapters import metrics

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        message = "no promtool (apt-get install prometheus)"
        if os.environ.get("ROLLOUT_REQUIRE_PROMETHEUS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.mark.parametrize(
    "args",
    [
        ("check", "rules", "rules.yml"),
        ("test", "rules", "rules_test.yml"),
        ("check", "config", "prometheus.yml"),
    ],
)
def test_promtool(args: tuple[str, ...]) -> None:
    result = subprocess.run(
        [promtool(), *args], cwd=RULES, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rules_name_only_exported_metrics() -> None:
    exported = set(re.findall(r"^# TYPE (\w+) ", metrics.rendered().decode(), re.M))
    groups = yaml.safe_load((RULES / "rules.yml").read_text())["groups"]
    used = {
        name
        for group in groups
        for rule in group["rules"]
        for name in re.findall(r"\brollout_[a-z_]+\b", rule["expr"])
    }
    assert len(used) >= 6 and used <= exported, used - exported
