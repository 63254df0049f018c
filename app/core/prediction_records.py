"""The ``Prediction`` records of a batch: one per served request, as the wire has them.

What a batch's predictions by one arm share (deployment, the model, its role, mode, epoch,
time per row, when they were served) is encoded once into a ``Template``
(``app.core.json_templates``), which the data plane fills with each row's request id (its
JSON, which the row's comparison reuses), entity key, output and audit mark. An Open Inference
Protocol request's prediction also carries its OIP inference response (``app.core.oip``).
``app.core.events.Prediction`` validates the bytes (``tests/unit/test_record_bytes.py``).

Pure: no I/O.
"""

from __future__ import annotations

import orjson

from app.core.events import DeploymentState, Role
from app.core.json_templates import HOLE, Template
from app.core.model_calls import Output
from app.core.oip import oip_response
from app.core.requests import ParsedRequest
from app.core.routes import Scorer


def prediction_template(
    state: DeploymentState, scorer: Scorer, role: Role, latency_ms: float, served_at: int
) -> Template:
    """The ``Prediction`` of a row of ``state``'s deployment served by ``scorer`` as
    ``role`` in ``latency_ms``; holes: request id, entity key, output, audit."""
    ref = scorer.ref
    return Template(
        {  # the Prediction contract, in its field order
            "request_id": HOLE,
            "deployment": state.deployment,
            "entity_key": HOLE,
            "model": {"name": ref.name, "version": ref.version, "sha256": ref.sha256},
            "role": role.value,
            "mode": state.mode.value,
            "epoch": state.epoch,
            "output": HOLE,
            "latency_ms": latency_ms,
            "served_at": served_at,
            "audit": HOLE,
        }
    )


def with_oip_response(
    record: bytes,
    request: ParsedRequest,
    deployment: str,
    scorer: Scorer,
    output: Output,
    datatype: str,
) -> bytes:
    """``record``, the prediction of an OIP request, with the fields of its OIP inference
    response after the native ones (``datatype``: that of a regressor's values)."""
    response = oip_response(request.request_id, deployment, scorer.ref.version, output, datatype)
    return record[:-1] + b"," + orjson.dumps(response)[1:]
