"""The paired records of the data plane: a ``Comparison`` of production and candidate on one
request, a watch's comparison of the serving production and the previous one, and
``agreement``, which says whether two outputs of one request agree and by how much.

Built as dicts of the ``Comparison`` contract directly (shadow mode compares every record):
``app.core.events.Comparison`` validates the same bytes.

Pure: no I/O (the previous production's call is ``app.core.model_calls.run``).
"""

from __future__ import annotations

from typing import Any

import orjson

from app.core.batch_result import BatchResult, Outgoing, Topics
from app.core.events import Role
from app.core.manifest import RegressionSpec
from app.core.model_calls import ArmRun, Output, run_model
from app.core.routes import DeploymentRoute, RoutedRow, Scorer
from app.core.routing import bucket
from app.core.tensors import InputBatch


def watch_comparisons(
    result: BatchResult,
    topics: Topics,
    route: DeploymentRoute,
    rows: list[RoutedRow],
    audit: list[bool],
    production: ArmRun,
    matrix: InputBatch,
    mode: str,
) -> None:
    """A watched promotion: the previous production scores the audit rows (a
    ``watch.sample_rate`` share of them) that production served; each becomes a ``watch``
    comparison (``production``: the serving production, ``candidate``: the previous one)."""
    assert route.previous is not None
    state = route.state
    rate = state.policy.watch.sample_rate
    name = state.deployment
    chosen = [
        i
        for i, row in enumerate(rows)
        if audit[i]
        and i in production.outputs
        and (rate >= 1.0 or bucket(name, row.request.request_id, "watch") < rate)
    ]
    if not chosen:
        return
    previous = run_model(route.previous, matrix, chosen)
    result.model_calls.append(
        (name, route.previous.ref.version, "previous", previous.rows, previous.latency_ms)
    )
    key = name.encode("utf-8")
    for i in chosen:
        row = rows[i]
        prod_out = production.outputs[i]
        prev_out = previous.outputs.get(i)
        agree, delta = False, 0.0
        if prev_out is not None:
            agree, delta = agreement(prod_out, prev_out, route.regression)
        candidate = _arm_result(
            route.previous,
            prev_out,
            previous,
            None if prev_out is not None else previous.error or "no output",
        )
        comparison = _comparison(
            row,
            route,
            mode,
            Role.PRODUCTION.value,
            _arm_result(route.production, prod_out, production),
            candidate,
            (agree, delta),
            True,
        )
        comparison["watch"] = True
        _emit(result, topics, key, comparison)


def compare(
    result: BatchResult,
    topics: Topics,
    route: DeploymentRoute,
    row: RoutedRow,
    i: int,
    served_by: str,
    production: ArmRun,
    candidate: ArmRun,
    mode: str,
    audit: bool,
) -> None:
    """Emit the paired record: ``agree`` and ``score_delta`` as ``agreement`` says."""
    assert route.candidate is not None
    prod_out = production.outputs.get(i)
    cand_out = candidate.outputs.get(i)
    cand_error = None if cand_out is not None else candidate.error or "no output"
    if cand_error is not None:
        result.candidate_errors += 1
    agree, delta = False, 0.0
    if prod_out is not None and cand_out is not None:
        agree, delta = agreement(prod_out, cand_out, route.regression)
    comparison = _comparison(
        row,
        route,
        mode,
        served_by,
        _arm_result(route.production, prod_out, production),
        _arm_result(route.candidate, cand_out, candidate, cand_error),
        (agree, delta),
        audit,
    )
    _emit(result, topics, route.state.deployment.encode("utf-8"), comparison)


def _comparison(
    row: RoutedRow,
    route: DeploymentRoute,
    mode: str,
    served_by: str,
    production: dict[str, Any],
    candidate: dict[str, Any],
    agreed: tuple[bool, float],
    audit: bool,
) -> dict[str, Any]:
    """The ``Comparison`` contract, built directly: shadow compares every record."""
    state = route.state
    return {
        "request_id": row.request.request_id,
        "deployment": state.deployment,
        "mode": mode,
        "epoch": state.epoch,
        "source": {
            "topic": row.record.topic,
            "partition": row.record.partition,
            "offset": row.record.offset,
        },
        "served_by": served_by,
        "production": production,
        "candidate": candidate,
        "agree": agreed[0],
        "score_delta": agreed[1],
        "audit": audit,
    }


def _emit(result: BatchResult, topics: Topics, key: bytes, comparison: dict[str, Any]) -> None:
    result.outgoing.append(Outgoing(topics.comparisons, key, orjson.dumps(comparison)))
    result.comparisons += 1


def _arm_result(
    scorer: Scorer, output: Output | None, run: ArmRun, error: str | None = None
) -> dict[str, Any]:
    """The ``ArmResult`` contract."""
    return {
        "version": scorer.ref.version,
        "sha256": scorer.ref.sha256,
        "output": output,
        "latency_ms": run.latency_ms if output is not None else None,
        "error": error,
        "cpu_ms": run.cpu_ms if output is not None else None,
    }


def agreement(
    production: Output, candidate: Output, regression: RegressionSpec | None
) -> tuple[bool, float]:
    """``(agree, score_delta)`` of two outputs of one request.

    A classifier: the labels are equal; the delta is candidate minus production on the
    last label's score for two labels (the positive class), and on the label where they
    differ most for more. A regressor: every value is within the tolerance of
    ``regression`` (exactly equal without one); the delta is candidate minus production on
    the target where they differ most."""
    label = production["label"]
    if label is not None:
        prod_scores, cand_scores = production["scores"], candidate["scores"]
        if len(prod_scores) == 2:
            return label == candidate["label"], cand_scores[-1] - prod_scores[-1]
        return label == candidate["label"], _widest(prod_scores, cand_scores)
    prod_values, cand_values = production["values"], candidate["values"]
    absolute = regression.absolute_tolerance if regression is not None else 0.0
    relative = regression.relative_tolerance if regression is not None else 0.0
    agree = all(
        abs(c - p) <= absolute + relative * abs(p)
        for p, c in zip(prod_values, cand_values, strict=True)
    )
    return agree, _widest(prod_values, cand_values)


def _widest(production: list[float], candidate: list[float]) -> float:
    return max((c - p for p, c in zip(production, candidate, strict=True)), key=abs)
