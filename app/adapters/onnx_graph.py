"""What an ONNX file declares about itself, read with the ``onnx`` package: the signature a
model version is published under (``read_graph``).

- Inputs: every graph input that is not an initializer, with its element type and shape.
  The first dimension is the batch (dynamic, or 1); every other dimension must be fixed.
- A classifier has a label output (a 1-D int64 or string tensor) and a score output: an
  ``(n, k)`` float tensor, or the sequence of maps skl2onnx's ZipMap makes. Its classes are
  read from the ``classlabels_*`` attribute of the ZipMap or classifier node.
- A regressor has only float outputs: each an ``(n, t)`` (or ``(n,)``) tensor; their columns,
  in order, are its targets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto

from app.core.manifest import ElementType, ModelKind, OutputNames, TensorSpec

_ELEMENT_TYPES: dict[int, ElementType] = {
    TensorProto.FLOAT: "float32",
    TensorProto.DOUBLE: "float64",
    TensorProto.INT64: "int64",
    TensorProto.INT32: "int32",
    TensorProto.STRING: "string",
    TensorProto.BOOL: "bool",
}
_FLOATS = (TensorProto.FLOAT, TensorProto.DOUBLE)


class GraphError(Exception):
    """The file is not an ONNX model, or its graph is not one Rollout can serve."""


@dataclass(frozen=True)
class GraphSignature:
    kind: ModelKind
    inputs: tuple[TensorSpec, ...]
    outputs: OutputNames
    class_values: tuple[int, ...] | tuple[str, ...] | None  # classifier: from the graph
    targets: tuple[str, ...]  # regressor: one name per value column
    opsets: dict[str, int]


def read_graph(path: Path) -> GraphSignature:
    """The signature ``path`` declares; ``GraphError`` naming what is wrong otherwise."""
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception as error:  # protobuf's DecodeError and friends
        raise GraphError(f"{path.name} is not an ONNX model: {error}") from error
    if not model.graph.node and not model.graph.output:
        raise GraphError(f"{path.name} is not an ONNX model: it holds no graph")
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = tuple(_input(i) for i in graph.input if i.name not in initializers)
    if not inputs:
        raise GraphError("the graph has no inputs")
    opsets = {o.domain or "ai.onnx": int(o.version) for o in model.opset_import}
    labels = [o for o in graph.output if _is_label(o)]
    if labels:
        outputs, class_values = _classifier_outputs(graph, labels[0])
        return GraphSignature("classifier", inputs, outputs, class_values, (), opsets)
    values, targets = _regressor_outputs(graph)
    outputs = OutputNames(label=None, scores=None, values=values)
    return GraphSignature("regressor", inputs, outputs, None, targets, opsets)


def _input(value: onnx.ValueInfoProto) -> TensorSpec:
    if not value.type.HasField("tensor_type"):
        raise GraphError(f"input {value.name!r} is not a tensor")
    tensor = value.type.tensor_type
    dtype = _ELEMENT_TYPES.get(tensor.elem_type)
    if dtype is None:
        kind = TensorProto.DataType.Name(tensor.elem_type)
        raise GraphError(
            f"input {value.name!r} has element type {kind}; "
            f"supported: {', '.join(_ELEMENT_TYPES.values())}"
        )
    dims = list(tensor.shape.dim)
    if not dims:
        raise GraphError(f"input {value.name!r} has no batch dimension")
    if dims[0].HasField("dim_value") and dims[0].dim_value != 1:
        raise GraphError(f"input {value.name!r}: the first (batch) dimension must be dynamic")
    shape: list[int] = []
    for n, dim in enumerate(dims[1:], start=1):
        if not dim.HasField("dim_value") or dim.dim_value < 1:
            raise GraphError(
                f"input {value.name!r}: dimension {n} is dynamic; only the batch may be"
            )
        shape.append(int(dim.dim_value))
    return TensorSpec(name=value.name, dtype=dtype, shape=tuple(shape))


def _is_label(value: onnx.ValueInfoProto) -> bool:
    if not value.type.HasField("tensor_type"):
        return False
    tensor = value.type.tensor_type
    rank = len(tensor.shape.dim)
    return tensor.elem_type in (TensorProto.INT64, TensorProto.STRING) and rank in (1, 2)


def _classifier_outputs(
    graph: onnx.GraphProto, label: onnx.ValueInfoProto
) -> tuple[OutputNames, tuple[int, ...] | tuple[str, ...]]:
    scores: onnx.ValueInfoProto | None = None
    zipmap = False
    for value in graph.output:
        if value.name == label.name:
            continue
        if value.type.HasField("sequence_type"):
            scores, zipmap = value, True
            break
        if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type in _FLOATS:
            scores = value
            break
    if scores is None:
        raise GraphError(f"classifier output {label.name!r} comes without per-class scores")
    classes = _class_values(graph)
    if classes is None:
        raise GraphError("cannot find the classes (no classlabels_* attribute in the graph)")
    return OutputNames(label=label.name, scores=scores.name, zipmap=zipmap), classes


def _class_values(graph: onnx.GraphProto) -> tuple[int, ...] | tuple[str, ...] | None:
    found: tuple[int, ...] | tuple[str, ...] | None = None
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.name == "classlabels_strings" and attribute.strings:
                found = tuple(s.decode("utf-8") for s in attribute.strings)
            elif attribute.name in ("classlabels_int64s", "classlabels_ints") and attribute.ints:
                found = tuple(int(i) for i in attribute.ints)
            if found is not None and node.op_type == "ZipMap":
                return found  # the order of the score columns
    return found


def _regressor_outputs(graph: onnx.GraphProto) -> tuple[tuple[str, ...], tuple[str, ...]]:
    names: list[str] = []
    targets: list[str] = []
    for value in graph.output:
        tensor: Any = value.type.tensor_type if value.type.HasField("tensor_type") else None
        if tensor is None or tensor.elem_type not in _FLOATS:
            raise GraphError(
                f"output {value.name!r} is neither a class label nor a float tensor of values"
            )
        dims = list(tensor.shape.dim)
        if len(dims) == 1:
            width = 1
        elif len(dims) == 2 and dims[1].HasField("dim_value") and dims[1].dim_value >= 1:
            width = int(dims[1].dim_value)
        else:
            raise GraphError(f"output {value.name!r} must be (n,) or (n, t) with t fixed")
        names.append(value.name)
        targets.extend([value.name] if width == 1 else [f"{value.name}_{i}" for i in range(width)])
    if not names:
        raise GraphError("the graph has no outputs")
    return tuple(names), tuple(targets)
