"""The model store: a directory of deployments and their immutable model versions.

Layout (``root`` is e.g. ``models/``)::

    <deployment>/deployment.yaml           DeploymentSpec (signature, initial production, policy)
    <deployment>/<version>/model.onnx      the model
    <deployment>/<version>/model.json      ModelManifest (feature names, labels, sha256, ...)

``ModelStore.load(ref)`` is the one gate through which a model reaches serving. It raises
``ModelRejected(reason)`` unless every check passes: the uri stays inside the store (no
absolute path, no ``..``, no symlink out), the file's sha256 equals both ``ref.sha256`` and
the manifest's, the manifest matches the deployment's signature, the ONNX graph has the
declared input and outputs, and a smoke inference on a zero row succeeds. Unknown
deployments and versions raise ``UnknownModel`` (a ``ModelRejected``).

Each ``InferenceSession`` runs single-threaded without spinning: workers score micro-batches
on their own threads, and idle spinning threads would steal CPU from each other.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import yaml
from pydantic import ValidationError

from app.core.events import ModelRef
from app.core.manifest import NAME_PATTERN, DeploymentSpec, ModelManifest, compatible

MODEL_FILE = "model.onnx"
MANIFEST_FILE = "model.json"
SPEC_FILE = "deployment.yaml"
_NAME = re.compile(NAME_PATTERN)


class ModelRejected(Exception):
    """A model cannot be served; ``reason`` says why (suitable for a DecisionEvent)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnknownModel(ModelRejected):
    """The deployment or version does not exist in the store."""


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A verified model ready to score. ``predict`` is one ``session.run`` per call and is
    safe to call from one thread at a time per instance (onnxruntime allows concurrent runs,
    but the worker scores each model from one thread)."""

    ref: ModelRef
    manifest: ModelManifest
    session: ort.InferenceSession

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.manifest.feature_names

    @property
    def labels(self) -> tuple[str, ...]:
        return self.manifest.labels

    def predict(self, x: npt.NDArray[np.float32]) -> tuple[list[str], npt.NDArray[np.float32]]:
        """Score ``x`` ``(n, f)`` float32: the label of each row and its ``(n, k)`` scores,
        column ``i`` being the score of ``labels[i]``."""
        outputs = self.manifest.outputs
        label_out, scores = self.session.run(
            [outputs.label, outputs.scores], {self.manifest.input_name: x}
        )
        return self._label_names(label_out), np.asarray(scores, dtype=np.float32)

    def _label_names(self, raw: Any) -> list[str]:
        values = np.asarray(raw).reshape(-1)
        labels = self.labels
        if values.dtype.kind in "iu":
            indices = values.tolist()
            if any(not 0 <= i < len(labels) for i in indices):
                raise ValueError(f"model returned a label index outside {list(labels)}")
            return [labels[i] for i in indices]
        names = [str(v) for v in values.tolist()]
        if any(n not in labels for n in names):
            raise ValueError(f"model returned a label outside {list(labels)}")
        return names


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def session_options() -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


class ModelStore:
    """Read-only access to the store at ``root``; see the module docstring for the layout."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def deployments(self) -> list[str]:
        """Deployments in the store (folders holding a ``deployment.yaml``), sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.parent.name for p in self.root.glob(f"*/{SPEC_FILE}"))

    def versions(self, deployment: str) -> list[str]:
        """Versions of ``deployment`` (folders holding a ``model.json``), numerically sorted."""
        folder = self._deployment_dir(deployment)
        names = [p.parent.name for p in folder.glob(f"*/{MANIFEST_FILE}")]
        return sorted(names, key=lambda v: (not v.isdigit(), int(v) if v.isdigit() else 0, v))

    def spec(self, deployment: str) -> DeploymentSpec:
        path = self._deployment_dir(deployment) / SPEC_FILE
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            return DeploymentSpec.model_validate(data)
        except (OSError, yaml.YAMLError, ValidationError) as error:
            raise ModelRejected(f"invalid {deployment}/{SPEC_FILE}: {error}") from error

    def manifest(self, deployment: str, version: str) -> ModelManifest:
        folder = self._version_dir(deployment, version)
        return self._read_manifest(folder / MANIFEST_FILE, f"{deployment}/{version}")

    def ref(self, deployment: str, version: str) -> ModelRef:
        """The reference to ``deployment`` ``version`` (uri relative to the store)."""
        manifest = self.manifest(deployment, version)
        return ModelRef(
            name=deployment,
            version=version,
            uri=f"{deployment}/{version}/{MODEL_FILE}",
            sha256=manifest.sha256,
        )

    def load(self, ref: ModelRef) -> LoadedModel:
        """Verify and open ``ref``; raises ``ModelRejected`` with the reason on any failure."""
        path = self._resolve(ref.uri)
        manifest = self._read_manifest(path.parent / MANIFEST_FILE, ref.uri)
        if (manifest.name, manifest.version) != (ref.name, ref.version):
            raise ModelRejected(
                f"{ref.uri} holds {manifest.name} v{manifest.version}, "
                f"not {ref.name} v{ref.version}"
            )
        actual = sha256_of(path)
        if actual != ref.sha256:
            raise ModelRejected(f"sha256 mismatch for {ref.uri}: file {actual}, ref {ref.sha256}")
        if actual != manifest.sha256:
            raise ModelRejected(
                f"sha256 mismatch for {ref.uri}: file {actual}, manifest {manifest.sha256}"
            )
        reason = compatible(self.spec(ref.name).signature, manifest)
        if reason is not None:
            raise ModelRejected(f"{ref.name} v{ref.version} incompatible: {reason}")
        model = LoadedModel(ref=ref, manifest=manifest, session=self._session(path, ref))
        _check_graph(model)
        _smoke(model)
        return model

    # -- internals -------------------------------------------------------------------

    def _deployment_dir(self, deployment: str) -> Path:
        if not _NAME.match(deployment):
            raise UnknownModel(f"invalid deployment name {deployment!r}")
        folder = self.root / deployment
        if not (folder / SPEC_FILE).is_file():
            raise UnknownModel(f"unknown deployment {deployment!r} in {self.root}")
        return folder

    def _version_dir(self, deployment: str, version: str) -> Path:
        folder = self._deployment_dir(deployment)
        if not _NAME.match(version):
            raise UnknownModel(f"invalid version {version!r}")
        if not (folder / version / MANIFEST_FILE).is_file():
            known = ", ".join(self.versions(deployment)) or "none"
            raise UnknownModel(f"unknown version {version!r} of {deployment!r} (known: {known})")
        return folder / version

    def _resolve(self, uri: str) -> Path:
        """The file of ``uri``, which must stay inside the store."""
        relative = PurePosixPath(uri)
        if relative.is_absolute() or uri.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", uri):
            raise ModelRejected(f"model uri {uri!r} must be relative to the store")
        if any(part in ("..", "") for part in uri.replace("\\", "/").split("/")):
            raise ModelRejected(f"model uri {uri!r} must not contain '..' or empty parts")
        root = self.root.resolve()
        path = (root / relative).resolve()
        if not path.is_relative_to(root):
            raise ModelRejected(f"model uri {uri!r} leaves the store")
        if not path.is_file():
            raise UnknownModel(f"no model file at {uri!r}")
        return path

    @staticmethod
    def _read_manifest(path: Path, what: str) -> ModelManifest:
        try:
            return ModelManifest.model_validate(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError as error:
            raise UnknownModel(f"no manifest for {what}") from error
        except (OSError, ValueError) as error:  # ValidationError and JSONDecodeError included
            raise ModelRejected(f"invalid manifest for {what}: {error}") from error

    @staticmethod
    def _session(path: Path, ref: ModelRef) -> ort.InferenceSession:
        try:
            return ort.InferenceSession(
                str(path), sess_options=session_options(), providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own exception types
            raise ModelRejected(f"onnxruntime cannot load {ref.uri}: {error}") from error


def _check_graph(model: LoadedModel) -> None:
    manifest = model.manifest
    inputs = model.session.get_inputs()
    if [i.name for i in inputs] != [manifest.input_name]:
        raise ModelRejected(
            f"graph inputs {[i.name for i in inputs]} != manifest's [{manifest.input_name!r}]"
        )
    if inputs[0].type != "tensor(float)":
        raise ModelRejected(f"graph input type {inputs[0].type} is not tensor(float)")
    width = inputs[0].shape[-1] if inputs[0].shape else None
    if width != len(manifest.feature_names):
        raise ModelRejected(
            f"graph input width {width} != {len(manifest.feature_names)} manifest features"
        )
    outputs = {o.name for o in model.session.get_outputs()}
    wanted = {manifest.outputs.label, manifest.outputs.scores}
    if not wanted <= outputs:
        raise ModelRejected(f"graph outputs {sorted(outputs)} lack {sorted(wanted - outputs)}")


def _smoke(model: LoadedModel) -> None:
    zero = np.zeros((1, len(model.feature_names)), dtype=np.float32)
    try:
        labels, scores = model.predict(zero)
    except Exception as error:  # any failure here means the model cannot serve
        raise ModelRejected(f"smoke inference failed for {model.ref.uri}: {error}") from error
    if len(labels) != 1 or scores.shape != (1, len(model.labels)):
        raise ModelRejected(
            f"smoke inference of {model.ref.uri} returned {len(labels)} labels and "
            f"scores of shape {scores.shape}, expected 1 and (1, {len(model.labels)})"
        )
    if not np.all(np.isfinite(scores)):
        raise ModelRejected(f"smoke inference of {model.ref.uri} returned non-finite scores")
    # Warm up: onnxruntime allocates on the first run of each batch shape; do it now, not
    # while serving (and not inside the latency the controller compares).
    for rows in [*range(2, 65), *range(80, 1025, 16)]:  # ~120 runs, a few ms in all
        model.predict(np.zeros((rows, len(model.feature_names)), dtype=np.float32))
