"""Writing to the model store: ``publish`` a model version, ``create`` a deployment.

``publish`` reads the ONNX graph itself (``app.adapters.onnx_graph``), derives the
version's signature, checks it against the deployment's (every difference named), computes
the sha256, opens it with onnxruntime and runs a smoke inference on inputs made from the
signature, then writes ``<deployment>/<version>/`` (``model.onnx`` and a generated
``model.json``) in one rename: a version is immutable, and an existing one is never
overwritten. Versions are numbered 1, 2, ... when none is given.

``create`` writes a new deployment's ``deployment.yaml`` (the signature of its first model,
the default policy or the one given) and publishes that model as version 1. Making the
running system serve it is the controller's (a ``create`` command: ``rollout deployments
create`` sends it), after ``share_deployment`` has put the spec and version 1 on
``models.artifacts``, so that controllers and workers on other hosts (with none of these
files) fetch them.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import onnx
import onnxruntime
import yaml

from app.adapters.artifact_cache import ArtifactCache, share
from app.adapters.kafka_clients import plain_producer
from app.adapters.model_store import (
    MANIFEST_FILE,
    MODEL_FILE,
    SPEC_FILE,
    ModelRejected,
    ModelStore,
    open_model,
    sha256_of,
)
from app.adapters.onnx_graph import GraphError, GraphSignature, read_graph
from app.core.events import ModelRef
from app.core.manifest import (
    NAME_PATTERN,
    DeploymentSpec,
    ModelManifest,
    RegressionSpec,
    Signature,
    differences,
)
from app.core.policy import Policy
from app.settings import Settings


class PublishError(Exception):
    """Why a model cannot be published (or a deployment created); for the CLI to print."""


def publish(
    store: ModelStore,
    deployment: str,
    model: Path,
    *,
    version: str | None = None,
    labels: list[str] | None = None,
    description: str = "",
) -> ModelManifest:
    """Publish ``model`` as a new version of ``deployment``; its manifest."""
    try:
        spec = store.spec(deployment)
    except ModelRejected as error:
        raise PublishError(error.reason) from error
    manifest = _manifest(
        deployment,
        model,
        version or _next_version(store, deployment),
        labels,
        description,
        spec.signature,
    )
    _write_version(store, manifest, model)
    return manifest


def verify_published(
    spec: DeploymentSpec,
    model: Path,
    version: str,
    manifest: ModelManifest | None,
    labels: list[str] | None = None,
    description: str = "",
    created_by: str | None = None,
) -> ModelManifest:
    """The manifest of ``model``, published on ``models.published`` as ``version`` of
    ``spec``'s deployment, once it checks out: the given ``manifest`` (its name, version and
    sha256 those of the publication and the file), or else one derived from the graph as
    ``publish`` does; its signature fits the deployment's (every difference named) and a
    smoke inference runs. ``PublishError`` with the reason otherwise."""
    if manifest is None:
        return _manifest(spec.name, model, version, labels, description, spec.signature, created_by)
    if (manifest.name, manifest.version) != (spec.name, version):
        raise PublishError(
            f"the manifest is of {manifest.name} v{manifest.version}, "
            f"the publication of {spec.name} v{version}"
        )
    actual = sha256_of(model)
    if manifest.sha256 != actual:
        raise PublishError(f"the manifest's sha256 {manifest.sha256[:12]}... is not the file's")
    found = differences(spec.signature, manifest)
    if found:
        raise PublishError(
            f"version {version} does not fit deployment {spec.name!r}: " + "; ".join(found)
        )
    ref = ModelRef(name=spec.name, version=version, uri=model.name, sha256=actual)
    try:
        open_model(model, manifest, ref, warm=False)  # checked here, served elsewhere
    except ModelRejected as error:
        raise PublishError(error.reason) from error
    return manifest


def create(
    store: ModelStore,
    deployment: str,
    model: Path,
    *,
    policy: Policy | None = None,
    regression: RegressionSpec | None = None,
    labels: list[str] | None = None,
    description: str = "",
) -> DeploymentSpec:
    """Write ``deployment``'s ``deployment.yaml`` from ``model`` and publish it as version 1."""
    if not _name_ok(deployment):
        raise PublishError(f"invalid deployment name {deployment!r} (letters, digits, . _ -)")
    folder = store.root / deployment
    if (folder / SPEC_FILE).exists():
        raise PublishError(f"deployment {deployment!r} exists already in {store.root}")
    manifest = _manifest(deployment, model, "1", labels, description, None)
    if manifest.kind == "classifier" and regression is not None:
        raise PublishError("a tolerance and an error cap are for regressors")
    spec = DeploymentSpec(
        name=deployment,
        signature=manifest.signature,
        initial_production="1",
        policy=policy or Policy(),
        regression=regression if manifest.kind == "regressor" else None,
        description=description,
    )
    folder.mkdir(parents=True, exist_ok=True)
    _write_version(store, manifest, model)
    text = yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False, default_flow_style=None)
    _atomic_write(folder / SPEC_FILE, text.encode())
    return spec


async def share_deployment(
    settings: Settings, store: ModelStore, deployment: str, versions: list[str]
) -> list[str]:
    """Put ``deployment``'s spec and ``versions`` (those the topic lacks) on
    ``models.artifacts``; the versions uploaded."""
    inventory = (await ArtifactCache(settings, store).inventory([deployment]))[deployment]
    producer = plain_producer(settings)
    await producer.start()
    try:
        return await share(producer, settings, store, deployment, versions, inventory)
    finally:
        await producer.stop()


def _manifest(
    deployment: str,
    model: Path,
    version: str,
    labels: list[str] | None,
    description: str,
    signature: Signature | None,
    created_by: str | None = None,
) -> ModelManifest:
    if not _name_ok(version):
        raise PublishError(f"invalid version {version!r} (letters, digits, . _ -)")
    if not model.is_file():
        raise PublishError(f"no file {model}")
    try:
        graph = read_graph(model)
    except GraphError as error:
        raise PublishError(str(error)) from error
    names = _names(graph, labels, signature)
    fields: dict[str, Any] = {
        "name": deployment,
        "version": version,
        "kind": graph.kind,
        "inputs": graph.inputs,
        "feature_names": signature.feature_names if signature is not None else None,
        "outputs": graph.outputs,
        "sha256": sha256_of(model),
        "description": description,
        "created_by": created_by or f"rollout publish ({getpass.getuser()})",
        "libraries": {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
        "target_opset": graph.opsets,
    }
    if graph.kind == "classifier":
        fields["labels"] = names
        fields["class_values"] = graph.class_values
    else:
        fields["targets"] = names
    try:
        manifest = ModelManifest.model_validate(fields)
    except ValueError as error:
        raise PublishError(f"{model.name}: {error}") from error
    if signature is not None:
        found = differences(signature, manifest)
        if found:
            raise PublishError(
                f"{model.name} does not fit deployment {deployment!r}:\n  - " + "\n  - ".join(found)
            )
    ref = ModelRef(name=deployment, version=version, uri=model.name, sha256=manifest.sha256)
    try:
        open_model(model, manifest, ref, warm=False)  # checked here, served elsewhere
    except ModelRejected as error:
        raise PublishError(error.reason) from error
    return manifest


def _names(
    graph: GraphSignature, labels: list[str] | None, signature: Signature | None
) -> tuple[str, ...]:
    """The label (classifier) or target (regressor) names: given, else the deployment's for
    class ids 0..k-1, else the graph's."""
    derived: tuple[str, ...] = (
        tuple(str(v) for v in graph.class_values or ())
        if graph.kind == "classifier"
        else graph.targets
    )
    if labels:
        if len(labels) != len(derived):
            what = "classes" if graph.kind == "classifier" else "output values"
            raise PublishError(
                f"--labels names {len(labels)}, the model has {len(derived)} {what}: "
                f"{', '.join(derived)}"
            )
        return tuple(labels)
    ours = (signature.labels or signature.targets) if signature is not None else ()
    by_index = graph.class_values == tuple(range(len(ours)))
    if signature is not None and graph.kind == "classifier" and by_index:
        return ours  # class ids 0..k-1: the deployment's label names, in that order
    if signature is not None and graph.kind == "regressor" and len(ours) == len(derived):
        return ours
    return derived


def _next_version(store: ModelStore, deployment: str) -> str:
    numbers = [int(v) for v in store.versions(deployment) if v.isdigit()]
    return str(max(numbers, default=0) + 1)


def _write_version(store: ModelStore, manifest: ModelManifest, model: Path) -> None:
    """``<deployment>/<version>/`` in one rename, never over an existing version."""
    folder = store.root / manifest.name
    final = folder / manifest.version
    if final.exists():
        raise PublishError(
            f"version {manifest.version} of {manifest.name!r} exists already; "
            "versions are immutable (publish under another --version, or leave it out)"
        )
    staging = folder / f".publishing-{uuid.uuid4().hex}"
    staging.mkdir(parents=True)
    try:
        shutil.copyfile(model, staging / MODEL_FILE)
        if sha256_of(staging / MODEL_FILE) != manifest.sha256:
            raise PublishError(f"{model} changed while it was being published")
        data = manifest.model_dump(mode="json")
        (staging / MANIFEST_FILE).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        try:
            os.rename(staging, final)  # fails when the version appeared meanwhile
        except OSError as error:
            raise PublishError(
                f"version {manifest.version} of {manifest.name!r} exists already"
            ) from error
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(staging)


def _atomic_write(path: Path, content: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_bytes(content)
    tmp.replace(path)


def _name_ok(name: str) -> bool:
    return re.fullmatch(NAME_PATTERN, name) is not None
