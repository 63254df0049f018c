"""Open Inference Protocol v2 requests, as MLServer's and Triton's Kafka endpoints take them:
``{"id", "inputs": [{"name", "shape", "datatype", "data"}], "parameters"?, "outputs"?}``
with the deployment named in a header (``rollout-deployment``, or MLServer's
``mlserver-model``). ``from_oip`` turns one into the ``ParsedRequest`` a native request makes
(``request_id`` = the OIP ``id``), keeping each input's ``datatype`` to check against the
model's element types later (``app.core.tensors.check_datatypes``).

Rollout serves one row per request: each input's shape is ``[1, *value shape]`` (or the value
shape alone); ``data`` is flat (row-major) or nested, and its size must match the shape.

The prediction of an OIP request is a native ``Prediction`` that is also the OIP v2 inference
response such a client reads (``oip_response``): ``model_name``, ``model_version``, ``id`` and
``outputs`` are added to it, so the same record serves both kinds of reader.

Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from app.core.events import MAX_DEPLOYMENT_CHARS, MAX_REQUEST_ID_CHARS, DeadLetterCode

DEPLOYMENT_HEADERS = ("rollout-deployment", "mlserver-model")
DATATYPES = frozenset(
    {"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"}
    | {"FP16", "FP32", "FP64", "BYTES"}
)
_FIELDS = frozenset({"id", "inputs", "parameters", "outputs"})
_INPUT_FIELDS = frozenset({"name", "shape", "datatype", "data", "parameters"})


class OipError(ValueError):
    def __init__(self, code: DeadLetterCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def is_oip(body: dict[str, Any]) -> bool:
    """An OIP v2 request rather than a native one (which has no ``inputs``)."""
    return "inputs" in body and "features" not in body and "request_id" not in body


def deployment_of(headers: Sequence[tuple[str, bytes]]) -> str | None:
    for name, value in headers:
        if name.lower() in DEPLOYMENT_HEADERS:
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                return None
    return None


def from_oip(
    body: dict[str, Any], headers: Sequence[tuple[str, bytes]]
) -> tuple[str, str, dict[str, Any], dict[str, str]]:
    """``(request_id, deployment, features by input name, datatype by input name)``, or
    ``OipError`` with the code of what is wrong."""
    request_id = body.get("id")
    if not isinstance(request_id, str) or not request_id:
        raise OipError(DeadLetterCode.MISSING_REQUEST_ID, "OIP request: id is missing or empty")
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        raise OipError(DeadLetterCode.INVALID_REQUEST, "id: longer than 128 characters")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise OipError(DeadLetterCode.INVALID_REQUEST, f"OIP request: unknown field(s) {unknown}")
    deployment = deployment_of(headers)
    if not deployment or len(deployment) > MAX_DEPLOYMENT_CHARS:
        raise OipError(
            DeadLetterCode.MISSING_DEPLOYMENT,
            f"OIP request {request_id!r}: name the deployment in a "
            f"{' or '.join(DEPLOYMENT_HEADERS)} header",
        )
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise OipError(DeadLetterCode.INVALID_REQUEST, "inputs: must be a non-empty list")
    features: dict[str, Any] = {}
    datatypes: dict[str, str] = {}
    for n, item in enumerate(inputs):
        name, value, datatype = _input(n, item)
        if name in features:
            raise OipError(DeadLetterCode.INVALID_REQUEST, f"inputs: {name!r} given twice")
        features[name] = value
        datatypes[name] = datatype
    return request_id, deployment, features, datatypes


def _input(n: int, item: Any) -> tuple[str, Any, str]:
    where = f"inputs[{n}]"
    if not isinstance(item, dict) or not _INPUT_FIELDS.issuperset(item):
        raise OipError(
            DeadLetterCode.INVALID_REQUEST,
            f"{where}: an object of name, shape, datatype, data (and parameters)",
        )
    name, shape, datatype = item.get("name"), item.get("shape"), item.get("datatype")
    if not isinstance(name, str) or not name:
        raise OipError(DeadLetterCode.INVALID_REQUEST, f"{where}.name: a non-empty string")
    if datatype not in DATATYPES:
        raise OipError(
            DeadLetterCode.INVALID_REQUEST, f"{where}.datatype: {datatype!r} is not an OIP type"
        )
    if not isinstance(shape, list) or not shape or any(type(d) is not int or d < 0 for d in shape):
        raise OipError(DeadLetterCode.INVALID_REQUEST, f"{where}.shape: a list of sizes")
    if "data" not in item:
        raise OipError(DeadLetterCode.INVALID_REQUEST, f"{where}.data: missing")
    flat = _flatten(item["data"])
    if len(flat) != math.prod(shape):
        raise OipError(
            DeadLetterCode.WRONG_SHAPE,
            f"input {name!r}: shape {shape} holds {math.prod(shape)} values, data has {len(flat)}",
        )
    if shape[0] != 1 and len(shape) > 1:
        raise OipError(
            DeadLetterCode.WRONG_SHAPE,
            f"input {name!r}: shape {shape}: Rollout serves one row per request "
            "(the first dimension must be 1)",
        )
    row_shape = shape[1:] if len(shape) > 1 else shape
    return name, _nest(flat, row_shape), datatype


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            flat.append(value)
        else:
            stack.pop()
    return flat


def _nest(flat: list[Any], shape: list[int]) -> Any:
    """``flat`` (row-major) as nested lists of ``shape``; a one-value row stays a list."""
    if len(shape) <= 1:
        return flat
    size = math.prod(shape[1:])
    return [_nest(flat[i * size : (i + 1) * size], shape[1:]) for i in range(shape[0])]


# What the native output's fields are as OIP outputs: a classifier's predicted label (one
# string per row, shape [1]) and per-class scores (float32, shape [1, classes], in the
# deployment's label order); a regressor's values (shape [1, targets], in target order).
LABEL_OUTPUT, SCORES_OUTPUT, VALUES_OUTPUT = "label", "scores", "values"


def oip_response(
    request_id: str,
    deployment: str,
    version: str,
    output: dict[str, Any],
    values_datatype: str = "FP32",
) -> dict[str, Any]:
    """The OIP v2 inference-response fields of the prediction of OIP request ``request_id``,
    served by ``version`` of ``deployment`` with the native ``output`` (``{label, scores,
    values}``); ``values_datatype``: the OIP type of a regressor's values (the graph's)."""
    return {
        "model_name": deployment,
        "model_version": version,
        "id": request_id,
        "outputs": oip_outputs(output, values_datatype),
    }


def oip_outputs(output: dict[str, Any], values_datatype: str = "FP32") -> list[dict[str, Any]]:
    """The native ``output`` as OIP output tensors (``{name, shape, datatype, data}``)."""
    label = output.get("label")
    if label is not None:
        scores = output["scores"]
        return [
            {"name": LABEL_OUTPUT, "shape": [1], "datatype": "BYTES", "data": [label]},
            {
                "name": SCORES_OUTPUT,
                "shape": [1, len(scores)],
                "datatype": "FP32",
                "data": scores,
            },
        ]
    values = output["values"]
    return [
        {
            "name": VALUES_OUTPUT,
            "shape": [1, len(values)],
            "datatype": values_datatype,
            "data": values,
        }
    ]
