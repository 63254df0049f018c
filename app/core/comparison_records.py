"""The paired records of the data plane: a ``Comparison`` of production and candidate on one
request, a watch's comparison of the serving production and the previous one, and
``agreement``, which says whether two outputs of one request agree and by how much.

Shadow mode compares every record, so a batch's comparisons are filled into ``Template``s
(``app.core.json_templates``) that hold what the batch's records share: deployment, mode,
epoch, each arm's version, sha256, time and CPU time per row. ``app.core.events.Comparison``
validates the same bytes (``tests/unit/test_record_bytes.py``).

Pure: no I/O (the previous production's call is ``app.core.model_calls.run_model``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import orjson

from app.core.batch_result import BatchResult, Topics, outgoing
from app.core.events import DeploymentState, Role
from app.core.json_templates import HOLE, INT_HOLE, JSON_BOOL, Template
from app.core.manifest import RegressionSpec
from app.core.model_calls import ArmRun, Output, run_model
from app.core.routes import DeploymentRoute, RoutedRow, Scorer
from app.core.routing import bucket
from app.core.tensors import InputBatch

_ROLE_JSON = {role: orjson.dumps(role.value) for role in Role}


class Arm(NamedTuple):
    """One side of a comparison: the model and what its call over the batch gave."""

    scorer: Scorer
    run: ArmRun


class ComparisonRecords:
    """The comparisons of one deployment's batch: ``production`` against ``candidate`` (a
    watch's: the serving production against the previous one, ``watch: true``). Whether
    the two agree on each row both scored is worked out for the batch at once
    (``agreements``), when a row first needs it."""

    __slots__ = (
        "_agree",
        "_both",
        "_candidate",
        "_delta",
        "_key",
        "_mode",
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
        self._watch = watch
        self._key = state.deployment.encode("utf-8")
        self._topics: dict[str, bytes] = {}  # a source topic's JSON
        self._templates: dict[tuple[bool, bool], Template] = {}
        self._both = self._template(True, True)
        self._regression = regression
        self._agree: list[bool] = []
        self._delta: list[bytes] = []

    def emit(
        self,
        result: BatchResult,
        topics: Topics,
        row: RoutedRow,
        i: int,
        served_by: Role,
        audit: bool,
        request_json: bytes | None = None,
    ) -> bool:
        """Emit row ``i``'s comparison (``request_json``: its request id's JSON, when the
        prediction already encoded it). True when the candidate arm has no output for the
        row (its error is in the record)."""
        production, candidate = self._production.run, self._candidate.run
        n = production.position.get(i)
        m = candidate.position.get(i)
        source = row.record
        topic = self._topics.get(source.topic)
        if topic is None:
            topic = self._topics[source.topic] = orjson.dumps(source.topic)
        if request_json is None:
            request_json = orjson.dumps(row.request.request_id)
        if n is not None and m is not None:  # the usual case
            if not self._agree:
                self._agree, self._delta = agreements(production, candidate, self._regression)
            template = self._both
            agree, delta = self._agree[n], self._delta[n]
            prod_json, cand_json = production.encoded[n], candidate.encoded[m]
        else:
            template = self._template(n is not None, m is not None)
            agree, delta = False, b"0.0"
            # An arm without an output for the row (it failed on it) names its call's error.
            prod_json = (
                orjson.dumps(production.error or "no output")
                if n is None
                else production.encoded[n]
            )
            cand_json = (
                orjson.dumps(candidate.error or "no output") if m is None else candidate.encoded[m]
            )
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
                delta,
                JSON_BOOL[audit],
            )
        )
        result.outgoing.append(outgoing((topics.comparisons, self._key, value, ())))
        result.comparisons += 1
        return m is None

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


def agreements(
    production: ArmRun, candidate: ArmRun, regression: RegressionSpec | None
) -> tuple[list[bool], list[bytes]]:
    """``agreement`` on every row both runs scored, at once: ``agree`` and the JSON of
    ``score_delta`` at each position of ``production``'s outputs (False and 0.0 where
    ``candidate`` has no output). Row by row when the values are not all finite, or the two
    runs' outputs differ in shape or kind (``agreement`` then says what it says of them)."""
    size = len(production.encoded)
    agree, delta = [False] * size, [b"0.0"] * size
    pairs = [
        (i, n, m)
        for i, n in production.position.items()
        if (m := candidate.position.get(i)) is not None
    ]
    if not pairs:
        return agree, delta
    at = [n for _, n, _ in pairs]
    prod = production.values[at].astype(np.float64)
    cand = candidate.values[[m for _, _, m in pairs]].astype(np.float64)
    classifier = production.labels is not None
    if (
        prod.shape != cand.shape
        or prod.shape[1] == 0
        or classifier != (candidate.labels is not None)
        or not (np.isfinite(prod).all() and np.isfinite(cand).all())
    ):
        for i, n, _ in pairs:
            prod_out, cand_out = production.output(i), candidate.output(i)
            assert prod_out is not None and cand_out is not None
            agree[n], difference = agreement(prod_out, cand_out, regression)
            delta[n] = orjson.dumps(difference)
        return agree, delta
    differences = cand - prod
    if classifier:
        assert production.labels is not None and candidate.labels is not None
        prod_labels, cand_labels = production.labels, candidate.labels
        agreed = [prod_labels[n] == cand_labels[m] for _, n, m in pairs]
    else:
        absolute = regression.absolute_tolerance if regression is not None else 0.0
        relative = regression.relative_tolerance if regression is not None else 0.0
        agreed = np.all(np.abs(differences) <= absolute + relative * np.abs(prod), axis=1).tolist()
    if classifier and prod.shape[1] == 2:  # the positive class's score
        widest = differences[:, -1]
    else:  # the first of the largest differences, as max() finds it
        widest = differences[np.arange(len(pairs)), np.argmax(np.abs(differences), axis=1)]
    numbers = orjson.dumps(widest.tolist())[1:-1].split(b",")
    for k, n in enumerate(at):
        agree[n], delta[n] = agreed[k], numbers[k]
    return agree, delta


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
        and i in production.position
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
