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

A serving process (worker, controller) reads two folders: ``root``, its own cache where what
it fetches from ``models.artifacts`` is installed (``ROLLOUT_ARTIFACT_CACHE``), and ``seed``,
a folder it only reads (``ROLLOUT_MODEL_STORE``, e.g. the repository's ``models/`` or a
read-only volume). A deployment's spec and each version are looked up in ``root`` first,
then in ``seed``; nothing is ever written into ``seed`` by serving.

Each ``InferenceSession`` runs single-threaded without spinning: workers score micro-batches
on their own threads, and idle spinning threads would steal CPU from each other.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import re
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import yaml
from pydantic import ValidationError

from app.core.events import ModelRef
from app.core.manifest import (
    NAME_PATTERN,
    DeploymentSpec,
    ModelManifest,
    Signature,
    compatible,
)
from app.core.tensors import InputBatch, zero_inputs

MODEL_FILE = "model.onnx"
MANIFEST_FILE = "model.json"
SPEC_FILE = "deployment.yaml"
_NAME = re.compile(NAME_PATTERN)
# Warming a model up at each batch size stops after this long (a heavy model's full list of
# sizes was ~100 s of CPU: a fleet's controller spent its time warming models it only checks).
WARM_UP_BUDGET_S = 1.0


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
    def signature(self) -> Signature:
        return self._signature

    @cached_property
    def _signature(self) -> Signature:
        return self.manifest.signature

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.manifest.feature_names or ()

    @property
    def labels(self) -> tuple[str, ...]:
        return self.manifest.labels

    @cached_property
    def _input_name(self) -> str:
        return self.manifest.inputs[0].name

    @cached_property
    def _fetch(self) -> list[str]:
        outputs = self.manifest.outputs
        if self.manifest.kind == "regressor":
            return list(outputs.values)
        assert outputs.label is not None and outputs.scores is not None
        return [outputs.label, outputs.scores]

    @cached_property
    def _label_of(self) -> dict[Any, str] | None:
        values = self.manifest.class_values
        if values is None:
            return None
        return dict(zip(values, self.labels, strict=True))

    def predict(self, x: InputBatch) -> tuple[list[str] | None, npt.NDArray[Any]]:
        """Score ``x``: an ``(n, f)`` float32 matrix (a model with one input) or the arrays
        of every named input, each ``(n, *shape)``. A classifier gives the label of each row
        and its ``(n, k)`` scores (column ``i`` is ``labels[i]``); a regressor gives ``None``
        and its ``(n, t)`` values (column ``i`` is ``targets[i]``)."""
        feeds = {self._input_name: x} if isinstance(x, np.ndarray) else x
        results = self.session.run(self._fetch, feeds)
        if self.manifest.kind == "regressor":
            columns = [np.asarray(r).reshape(len(r), -1) for r in results]
            values = columns[0] if len(columns) == 1 else np.hstack(columns)
            return None, values
        label_out, scores = results
        if self.manifest.outputs.zipmap:
            keys = self.manifest.class_values or tuple(range(len(self.labels)))
            scores = [[row[k] for k in keys] for row in scores]
        return self._label_names(label_out), np.asarray(scores, dtype=np.float32)

    def _label_names(self, raw: Any) -> list[str]:
        values = np.asarray(raw).reshape(-1)
        labels = self.labels
        mapping = self._label_of
        if mapping is not None:
            try:
                return [mapping[v] for v in values.tolist()]
            except KeyError as error:
                raise ValueError(f"model returned a class outside {list(mapping)}") from error
        if values.dtype.kind in "iu":
            if len(values) and (values.min() < 0 or values.max() >= len(labels)):
                raise ValueError(f"model returned a label index outside {list(labels)}")
            return [labels[i] for i in values.tolist()]
        names = [str(v) for v in values.tolist()]
        if any(n not in labels for n in names):
            raise ValueError(f"model returned a label outside {list(labels)}")
        return names


def release_memory() -> None:
    """Give the memory freed by dropped sessions back to the OS (glibc keeps freed heap in
    its arenas otherwise: RSS would stay at its peak). A no-op off glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None)
    if trim is not None:
        trim(0)


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

    def __init__(self, root: Path, seed: Path | None = None) -> None:
        self.root = Path(root)  # where installs go
        self.seed = Path(seed) if seed is not None and Path(seed) != Path(root) else None

    @property
    def roots(self) -> tuple[Path, ...]:
        """The folders looked up, in order: ``root``, then ``seed``."""
        return (self.root,) if self.seed is None else (self.root, self.seed)

    def deployments(self) -> list[str]:
        """Deployments in the store (folders holding a ``deployment.yaml``), sorted."""
        names = {p.parent.name for r in self.roots if r.is_dir() for p in r.glob(f"*/{SPEC_FILE}")}
        return sorted(names)

    def declared(self) -> list[str]:
        """The deployments this store declares: those of the seed (``root`` when there is
        none). A serving process's cache holds what it fetched for deployments whose states
        it follows; it never declares one by itself (a deployment left in it by another
        cluster or environment is not served, nor given a state)."""
        folder = self.seed if self.seed is not None else self.root
        if not folder.is_dir():
            return []
        return sorted(p.parent.name for p in folder.glob(f"*/{SPEC_FILE}"))

    def versions(self, deployment: str) -> list[str]:
        """Versions of ``deployment`` (folders holding a ``model.json``), numerically sorted."""
        self._deployment_dir(deployment)
        names = {
            p.parent.name
            for root in self.roots
            for p in (root / deployment).glob(f"*/{MANIFEST_FILE}")
            if _NAME.match(p.parent.name)
        }
        return sorted(names, key=lambda v: (not v.isdigit(), int(v) if v.isdigit() else 0, v))

    def has_spec(self, deployment: str) -> bool:
        return bool(_NAME.match(deployment)) and any(
            (r / deployment / SPEC_FILE).is_file() for r in self.roots
        )

    def holds(self, deployment: str, version: str) -> bool:
        """Whether any folder has something at ``<deployment>/<version>`` (readable or not)."""
        return any((r / deployment / version).exists() for r in self.roots)

    def model_path(self, deployment: str, version: str) -> Path:
        """The ``model.onnx`` of a version the store holds (``UnknownModel`` otherwise)."""
        return self._version_dir(deployment, version) / MODEL_FILE

    def stored_sha256(self, deployment: str, version: str) -> str | None:
        """The sha256 the manifest of ``deployment`` ``version`` names when the store holds
        the version (its manifest and model file, with or without the deployment's spec);
        None when it does not. The file itself is checked by ``load``."""
        if not (_NAME.match(deployment) and _NAME.match(version)):
            return None
        found = [r / deployment / version for r in self.roots]
        folder = next((f for f in found if (f / MODEL_FILE).is_file()), None)
        if folder is None:
            return None
        try:
            return self._read_manifest(folder / MANIFEST_FILE, f"{deployment}/{version}").sha256
        except ModelRejected:
            return None

    def spec(self, deployment: str) -> DeploymentSpec:
        path = self._deployment_dir(deployment) / SPEC_FILE
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            return DeploymentSpec.model_validate(data)
        except (OSError, yaml.YAMLError, ValidationError) as error:
            # one line: the reason goes into a DecisionEvent and the CLI's one-line error
            said = " ".join(str(error).split())
            raise ModelRejected(f"invalid {deployment}/{SPEC_FILE}: {said}") from error

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
        return open_model(path, manifest, ref)

    # -- internals -------------------------------------------------------------------

    def _deployment_dir(self, deployment: str) -> Path:
        if not _NAME.match(deployment):
            raise UnknownModel(f"invalid deployment name {deployment!r}")
        for root in self.roots:
            folder = root / deployment
            if (folder / SPEC_FILE).is_file():
                return folder
        where = " or ".join(str(r) for r in self.roots)
        raise UnknownModel(f"unknown deployment {deployment!r} in {where}")

    def _version_dir(self, deployment: str, version: str) -> Path:
        self._deployment_dir(deployment)
        if not _NAME.match(version):
            raise UnknownModel(f"invalid version {version!r}")
        for root in self.roots:
            if (root / deployment / version / MANIFEST_FILE).is_file():
                return root / deployment / version
        known = ", ".join(self.versions(deployment)) or "none"
        raise UnknownModel(f"unknown version {version!r} of {deployment!r} (known: {known})")

    def _resolve(self, uri: str) -> Path:
        """The file of ``uri``, which must stay inside the store."""
        relative = PurePosixPath(uri)
        if relative.is_absolute() or uri.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", uri):
            raise ModelRejected(f"model uri {uri!r} must be relative to the store")
        if any(part in ("..", "") for part in uri.replace("\\", "/").split("/")):
            raise ModelRejected(f"model uri {uri!r} must not contain '..' or empty parts")
        for base in self.roots:
            root = base.resolve()
            path = (root / relative).resolve()
            if not path.is_relative_to(root):
                raise ModelRejected(f"model uri {uri!r} leaves the store")
            if path.is_file():
                return path
        raise UnknownModel(f"no model file at {uri!r}")

    @staticmethod
    def _read_manifest(path: Path, what: str) -> ModelManifest:
        try:
            return ModelManifest.model_validate(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError as error:
            raise UnknownModel(f"no manifest for {what}") from error
        except (OSError, ValueError) as error:  # ValidationError and JSONDecodeError included
            raise ModelRejected(f"invalid manifest for {what}: {error}") from error

    @staticmethod
    def session(path: Path, ref: ModelRef) -> ort.InferenceSession:
        try:
            return ort.InferenceSession(
                str(path), sess_options=session_options(), providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own exception types
            raise ModelRejected(f"onnxruntime cannot load {ref.uri}: {error}") from error


_ORT_TYPES = {
    "float32": "tensor(float)",
    "float64": "tensor(double)",
    "int64": "tensor(int64)",
    "int32": "tensor(int32)",
    "string": "tensor(string)",
    "bool": "tensor(bool)",
}


def _check_graph(model: LoadedModel) -> None:
    manifest = model.manifest
    inputs = {i.name: i for i in model.session.get_inputs()}
    declared = [i.name for i in manifest.inputs]
    if sorted(inputs) != sorted(declared):
        raise ModelRejected(f"graph inputs {sorted(inputs)} != manifest's {sorted(declared)}")
    for spec in manifest.inputs:
        node = inputs[spec.name]
        if node.type != _ORT_TYPES[spec.dtype]:
            raise ModelRejected(
                f"graph input {spec.name!r} is {node.type}, the manifest says {spec.dtype}"
            )
        shape = list(node.shape or [])[1:]
        if len(shape) != len(spec.shape) or any(
            isinstance(d, int) and d != w for d, w in zip(shape, spec.shape, strict=True)
        ):
            raise ModelRejected(
                f"graph input {spec.name!r} has shape {node.shape}, "
                f"the manifest says [batch, {', '.join(map(str, spec.shape))}]"
            )
    outputs = {o.name for o in model.session.get_outputs()}
    wanted = set(model._fetch)
    if not wanted <= outputs:
        raise ModelRejected(f"graph outputs {sorted(outputs)} lack {sorted(wanted - outputs)}")


def smoke_inputs(model: LoadedModel, rows: int) -> InputBatch:
    if model.signature.flat:
        return np.zeros((rows, len(model.feature_names)), dtype=np.float32)
    return zero_inputs(model.signature, rows)


def _smoke(model: LoadedModel, warm: bool) -> None:
    width = len(model.labels) or len(model.manifest.targets)
    try:
        labels, values = model.predict(smoke_inputs(model, 1))
    except Exception as error:  # any failure here means the model cannot serve
        raise ModelRejected(f"smoke inference failed for {model.ref.uri}: {error}") from error
    if (labels is not None and len(labels) != 1) or values.shape != (1, width):
        raise ModelRejected(
            f"smoke inference of {model.ref.uri} returned "
            f"{'no' if labels is None else len(labels)} labels and "
            f"{'scores' if labels is not None else 'values'} of shape {values.shape}, "
            f"expected (1, {width})"
        )
    if not np.all(np.isfinite(values)):
        raise ModelRejected(f"smoke inference of {model.ref.uri} returned non-finite outputs")
    if not warm:
        return
    # Warm up: onnxruntime allocates on the first run of each batch shape; do it now, not
    # while serving (and not inside the latency the controller compares). ~120 runs, a few
    # ms in all for a fast model; a heavy one (ms a row) stops at the budget: its first run
    # of a shape costs little beside its compute, and the whole list would be minutes of CPU.
    sizes = [*range(2, 65), *range(80, 1025, 16)] if model.signature.flat else [2, 8, 64, 500]
    deadline = time.perf_counter() + WARM_UP_BUDGET_S
    for rows in sizes:
        model.predict(smoke_inputs(model, rows))
        if time.perf_counter() > deadline:
            break


def open_model(
    path: Path, manifest: ModelManifest, ref: ModelRef, warm: bool = True
) -> LoadedModel:
    """An onnxruntime session over ``path``, checked against ``manifest`` (inputs, outputs,
    a smoke inference on inputs made from the signature); ``ModelRejected`` otherwise. With
    ``warm``, it is then run once at each batch size it will serve (within a time budget);
    a check that does not serve (a publication's validation) skips that."""
    model = LoadedModel(ref=ref, manifest=manifest, session=ModelStore.session(path, ref))
    _check_graph(model)
    _smoke(model, warm)
    return model
