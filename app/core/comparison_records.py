"""The paired records of the data plane: a ``Comparison`` of production and candidate on one
request, a watch's comparison of the serving production and the previous one, and
``agreement``, which says whether two outputs of one request agree and by how much.

Shadow mode compares every record, so a batch's comparisons are filled into ``Template``s
(``app.core.json_templates``) that hold what the batch's records share: deployment, mode,
epoch, each arm's version, sha256 and time per row. ``app.core.events.Comparison``
validates the same bytes (``tests/unit/test_record_bytes.py``).

Pure: no I/O (the previous production's call is ``app.core.model_calls.run_model``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson

from app.core.batch_result import BatchResult, Outgoing, Topics
from app.core.events import DeploymentState, Role
from app.core.json_templates import HOLE, INT_HOLE, JSON_BOOL, JSON_NULL, Template
from app.core.manifest import RegressionSpec
from app.core.model_calls import ArmRun, Output, run_model
from app.core.routes import DeploymentRoute, RoutedRow, Scorer
from app.core.routing import bucket
from app.core.tensors import InputBatch

_ROLE_JSON = {role: orjson.dumps(role.value) for role in Role}
_PRODUCTION = Role.PRODUCTION  # an enum member's lookup is slow in the hot path


class Arm(NamedTuple):
    """One side of a comparison: the model and what its call over the batch gave."""

    scorer: Scorer
    run: ArmRun


class ComparisonRecords:
    """The comparisons of one deployment's batch: ``production`` against ``candidate`` (a
    watch's: the serving production against the previous one, ``watch: true``)."""

    __slots__ = (
        "_both",
        "_cand_outputs",
        "_candidate",
        "_key",
        "_mode",
        "_prod_outputs",
        "_production",
        "_regression",
        "_state",
        "_templates",
        "_topics",
        "_watch",
    )

    def __init__(
        self,
        state: DeploymentState,
        production: Arm,
        candidate: Arm,
        regression: RegressionSpec | None,
        watch: bool = False,
    ) -> None:
        self._state = state
        self._mode = state.mode.value
        self._production = production
        self._candidate = candidate
        self._prod_outputs = production.run.outputs
        self._cand_outputs = candidate.run.outputs
        self._regression = regression
        self._watch = watch
        self._key = state.deployment.encode("utf-8")
        self._topics: dict[str, bytes] = {}  # a source topic's JSON
        self._templates: dict[tuple[bool, bool], Template] = {}
        self._both = self._template(True, True)

    def emit(
        self,
        result: BatchResult,
        topics: Topics,
        row: RoutedRow,
        i: int,
        served_by: Role,
        audit: bool,
        request_json: bytes | None = None,
        served_json: bytes | None = None,
    ) -> bool:
        """Emit row ``i``'s comparison: ``agree`` and ``score_delta`` as ``agreement``
        says. What the row's prediction already encoded, when given: ``request_json``, the
        request id's JSON, and ``served_json``, the served output's (that of the arm
        ``served_by`` names). True when the candidate arm has no output for the row (its
        error is in the record)."""
        prod_out = self._prod_outputs.get(i)
        cand_out = self._cand_outputs.get(i)
        source = row.record
        topic = self._topics.get(source.topic)
        if topic is None:
            topic = self._topics[source.topic] = orjson.dumps(source.topic)
        if request_json is None:
            request_json = orjson.dumps(row.request.request_id)
        if prod_out is not None and cand_out is not None:  # the usual case
            agree, delta = agreement(prod_out, cand_out, self._regression)
            if served_json is None:
                prod_json, cand_json = orjson.dumps(prod_out), orjson.dumps(cand_out)
            elif served_by is _PRODUCTION:
                prod_json, cand_json = served_json, orjson.dumps(cand_out)
            else:
                prod_json, cand_json = orjson.dumps(prod_out), served_json
            template = self._both
        else:
            agree, delta = False, 0.0
            # Production without an output (it failed on a row the candidate served) names
            # no error: the row's dead letter or the candidate's prediction does.
            prod_json = JSON_NULL if prod_out is None else orjson.dumps(prod_out)
            cand_json = (
                orjson.dumps(self._candidate.run.error or "no output")
                if cand_out is None
                else orjson.dumps(cand_out)
            )
            template = self._template(prod_out is not None, cand_out is not None)
        value = template.fill(
            (
                request_json,
                topic,
                source.partition,
                source.offset,
                _ROLE_JSON[served_by],
                prod_json,
                cand_json,
                JSON_BOOL[agree],
                orjson.dumps(delta),
                JSON_BOOL[audit],
            )
        )
        result.outgoing.append(Outgoing(topics.comparisons, self._key, value))
        result.comparisons += 1
        return cand_out is None

    def _template(self, production_ok: bool, candidate_ok: bool) -> Template:
        """Holes: request id, source topic, partition, offset, served by, production's
        output (or error), candidate's output (or error), agree, score delta, audit."""
        template = self._templates.get((production_ok, candidate_ok))
        if template is None:
            record: dict[str, Any] = {  # the Comparison contract, in its field order
                "request_id": HOLE,
                "deployment": self._state.deployment,
                "mode": self._mode,
                "epoch": self._state.epoch,
                "source": {"topic": HOLE, "partition": INT_HOLE, "offset": INT_HOLE},
                "served_by": HOLE,
                "production": _arm_result(self._production, production_ok),
                "candidate": _arm_result(self._candidate, candidate_ok),
                "agree": HOLE,
                "score_delta": HOLE,
                "audit": HOLE,
            }
            if self._watch:
                record["watch"] = True
            template = self._templates[(production_ok, candidate_ok)] = Template(record)
        return template


def _arm_result(arm: Arm, ok: bool) -> dict[str, Any]:
    """The ``ArmResult`` contract; its hole: the output's JSON, or else the error's."""
    ref = arm.scorer.ref
    if ok:
        return {
            "version": ref.version,
            "sha256": ref.sha256,
            "output": HOLE,
            "latency_ms": arm.run.latency_ms,
            "error": None,
            "cpu_ms": arm.run.cpu_ms,
        }
    return {
        "version": ref.version,
        "sha256": ref.sha256,
        "output": None,
        "latency_ms": None,
        "error": HOLE,
        "cpu_ms": None,
    }


def watch_comparisons(
    result: BatchResult,
    topics: Topics,
    route: DeploymentRoute,
    rows: list[RoutedRow],
    audit: list[bool],
    production: ArmRun,
    matrix: InputBatch,
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
    records = ComparisonRecords(
        state,
        Arm(route.production, production),
        Arm(route.previous, previous),
        route.regression,
        watch=True,
    )
    for i in chosen:  # the previous production failing is no candidate's error
        records.emit(result, topics, rows[i], i, Role.PRODUCTION, True)


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
