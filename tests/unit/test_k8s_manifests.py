"""What can be checked of the Kubernetes manifests here: every environment variable they set
is a setting (or the worker's ``--worker-id`` variable), probes point at paths the processes
serve on the port they serve them, the worker id comes from the pod name (a StatefulSet), and
every workload has resource requests and a PodDisruptionBudget."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices

from app.settings import Settings

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
SERVED = {"/healthz", "/readyz"}


def documents() -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted(K8S.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def kind(name: str) -> list[dict[str, Any]]:
    return [d for d in documents() if d["kind"] == name]


def known_variables() -> set[str]:
    prefix = Settings.model_config.get("env_prefix", "")
    names = {f"{prefix}{field}".upper() for field in Settings.model_fields}
    for field in Settings.model_fields.values():
        if isinstance(field.validation_alias, AliasChoices):
            names |= {str(c) for c in field.validation_alias.choices}
    return names | {"ROLLOUT_WORKER_ID"}  # `rollout worker --worker-id`'s envvar


def containers() -> list[tuple[str, dict[str, Any]]]:
    return [
        (w["metadata"]["name"], c)
        for w in kind("StatefulSet") + kind("Deployment")
        for c in w["spec"]["template"]["spec"]["containers"]
    ]


def test_every_variable_set_is_a_setting() -> None:
    known = known_variables()
    set_here = {e["name"] for _, c in containers() for e in c.get("env", [])}
    set_here |= {k for cm in kind("ConfigMap") for k in cm["data"]}
    assert set_here and set_here <= known, set_here - known


@pytest.mark.parametrize(("workload", "port_variable"), [
    ("rollout-worker", "ROLLOUT_METRICS_PORT"),
    ("rollout-controller", "ROLLOUT_DASHBOARD_PORT"),
])  # fmt: skip
def test_probes_point_at_served_paths_on_the_served_port(workload: str, port_variable: str) -> None:
    (container,) = [c for name, c in containers() if name == workload]
    env = {e["name"]: e.get("value") for e in container["env"]}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert env["ROLLOUT_HTTP_HOST"] == "0.0.0.0"
    probes = [container[p] for p in ("startupProbe", "livenessProbe", "readinessProbe")]
    for probe in probes:
        assert probe["httpGet"]["path"] in SERVED
        assert ports[probe["httpGet"]["port"]] == int(env[port_variable])
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"]["cpu"]
    assert container["resources"]["requests"]["memory"]


def test_the_worker_id_is_the_pod_name_of_a_statefulset() -> None:
    (worker,) = kind("StatefulSet")
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["worker"]
    (worker_id,) = [e for e in container["env"] if e["name"] == "ROLLOUT_WORKER_ID"]
    assert worker_id["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_the_controllers_are_a_deployment_with_api_tokens() -> None:
    (controller,) = kind("Deployment")
    assert controller["spec"]["replicas"] >= 2
    (container,) = controller["spec"]["template"]["spec"]["containers"]
    assert "ROLLOUT_API_TOKENS_FILE" in {e["name"] for e in container["env"]}


def test_every_workload_has_a_disruption_budget() -> None:
    budgets = [b["spec"]["selector"]["matchLabels"] for b in kind("PodDisruptionBudget")]
    for workload in kind("StatefulSet") + kind("Deployment"):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert any(b.items() <= labels.items() for b in budgets), workload["metadata"]["name"]
