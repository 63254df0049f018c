"""The data plane: one micro-batch of raw records in, the records to publish out.

No Kafka here (the models are ``Scorer``s: an onnxruntime session is the adapters'): the
worker's loop (``app.worker.loop``) consumes, calls ``score_batch``, and publishes what it
returns in one transaction; the controller's replay gate (``app.controller.replay_gate``)
scores the last requests with it. Each model runs once per batch over the rows routed to
it. Every valid request yields exactly one ``Prediction``; every invalid one a ``DeadLetter``;
every compared request one ``Comparison``. A candidate's failure never costs a prediction:
rows it should have served are served by production instead, and the comparison says why.

What the data plane routes by is ``app.core.routes``, what it yields ``app.core.batch_result``;
a model's call is ``app.core.model_calls``; the records are filled into per-batch templates
(``app.core.json_templates``): predictions by ``app.core.prediction_records``, the paired
records by ``app.core.comparison_records``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from app.core.batch_result import (
    DEFAULT_TOPICS,
    SHED_HEADERS,
    BatchResult,
    BatchScorer,
    Outgoing,
    Topics,
    outgoing,
)
from app.core.comparison_records import Arm, ComparisonRecords, watch_comparisons
from app.core.events import DeadLetterCode, DeploymentState, Mode, Role, ShedReport, encode, now_ms
from app.core.features import FeatureBatch, FeatureError, feature_matrix
from app.core.json_templates import JSON_BOOL, Template
from app.core.manifest import Signature
from app.core.model_calls import ArmRun, run_model
from app.core.prediction_records import prediction_template, with_oip_response
from app.core.requests import (
    ParsedRequest,
    RawRecord,
    Rejection,
    dead_letter,
    entity_key,
    parse_request,
)
from app.core.routes import DeploymentRoute, RoutedRow, RoutingTable
from app.core.routing import PRODUCTION_ONLY, assign
from app.core.tensors import InputBatch, TensorBatch, oip_features, tensor_batch


def table_scorer(
    table: Callable[[], RoutingTable],
    *,
    worker_id: str,
    max_request_bytes: int,
    shed_lag: int,
    topics: Topics,
    unavailable: Callable[[], Mapping[str, str]] = dict,
) -> BatchScorer:
    """Scoring by the routing table ``table()`` returns at each batch; shadow scoring is shed
    while the worker is more than ``shed_lag`` records behind, and each shed is reported.
    ``unavailable()``: deployments outside the table whose production this worker could not
    load, and why (their requests are dead-lettered ``model_unavailable``)."""

    def score(records: Sequence[RawRecord], lag: int) -> BatchResult:
        current = table()
        result = score_batch(
            records,
            current,
            max_request_bytes=max_request_bytes,
            topics=topics,
            shed_shadow=lag > shed_lag,
            unavailable=unavailable(),
        )
        result.shed_reports = shed_reports(result, current, worker_id, lag, topics)
        return result

    return score


def shed_reports(
    result: BatchResult, table: RoutingTable, worker_id: str, lag: int, topics: Topics
) -> list[Outgoing]:
    """One ``ShedReport`` per deployment whose shadow scoring ``result`` shed."""
    return [
        Outgoing(
            topics.comparisons,
            name.encode(),
            encode(
                ShedReport(
                    deployment=name,
                    epoch=table[name].state.epoch,
                    worker_id=worker_id,
                    sampled=result.shadow_sampled[name],
                    shed=shed,
                    lag=lag,
                    at=now_ms(),
                )
            ),
            SHED_HEADERS,
        )
        for name, shed in result.shadow_shed.items()
    ]


def _unavailable(rejection: Rejection, unavailable: Mapping[str, str]) -> Rejection:
    name = rejection.deployment or ""
    return Rejection(
        DeadLetterCode.MODEL_UNAVAILABLE,
        f"deployment {name!r} is not served by this worker: {unavailable[name]}",
        rejection.request_id,
        name,
    )


def score_batch(
    records: Sequence[RawRecord],
    table: RoutingTable,
    *,
    max_request_bytes: int,
    topics: Topics = DEFAULT_TOPICS,
    shed_shadow: bool = False,
    unavailable: Mapping[str, str] | None = None,
) -> BatchResult:
    """Score one batch. ``shed_shadow``: skip shadow comparisons (the worker is behind);
    production predictions are unaffected, and the result counts what was shed. A request
    for a deployment of ``unavailable`` (known, its production not loadable here) is
    dead-lettered ``model_unavailable`` with the reason, not ``unknown_deployment``."""
    result = BatchResult()
    now = now_ms()
    known = frozenset(table)
    parsed_by_deployment: dict[str, list[tuple[RawRecord, ParsedRequest]]] = {}
    for record in records:
        parsed = parse_request(record, known, max_request_bytes)
        if isinstance(parsed, Rejection):
            if unavailable and parsed.deployment in unavailable:
                parsed = _unavailable(parsed, unavailable)
            _reject(result, topics, record, parsed, now)
            continue
        same = parsed_by_deployment.get(parsed.deployment)
        if same is None:
            same = parsed_by_deployment[parsed.deployment] = []
        same.append((record, parsed))
    for name, all_rows in parsed_by_deployment.items():
        result.requests[name] = len(all_rows)
        route = table[name]
        signature = route.production.signature
        parsed_rows, features = _native_features(result, topics, all_rows, signature, now)
        checked: FeatureBatch | TensorBatch = (
            feature_matrix(features, signature.feature_names or ())
            if signature.flat
            else tensor_batch(features, signature)
        )
        for i, error in checked.errors:
            record, request = parsed_rows[i]
            rejection = Rejection(error.code, error.message, request.request_id)
            _reject(result, topics, record, rejection, now, name)
        rows = _routed(result, route, [parsed_rows[i] for i in checked.valid], shed_shadow)
        if rows:
            _score_deployment(result, topics, route, rows, checked.matrix, shed_shadow)
    return result


def _routed(
    result: BatchResult,
    route: DeploymentRoute,
    valid: list[tuple[RawRecord, ParsedRequest]],
    shed_shadow: bool,
) -> list[RoutedRow]:
    """The valid requests of one deployment as routed; a shadow (or manual) sample counted,
    and shed when ``shed_shadow``."""
    state = route.state
    sampling = state.mode is Mode.SHADOW or state.mode is Mode.MANUAL
    sampled = 0
    rows: list[RoutedRow] = []
    for record, request in valid:
        entity = entity_key(request, record.key)
        assignment = assign(state, entity, request.request_id)
        if assignment.compare and sampling:
            sampled += 1
            if shed_shadow:
                assignment = PRODUCTION_ONLY
        rows.append(RoutedRow(record, request, entity, assignment))
    if sampled:
        name = state.deployment
        result.shadow_sampled[name] = result.shadow_sampled.get(name, 0) + sampled
        if shed_shadow:
            result.shadow_shed[name] = result.shadow_shed.get(name, 0) + sampled
    return rows


def _native_features(
    result: BatchResult,
    topics: Topics,
    rows: list[tuple[RawRecord, ParsedRequest]],
    signature: Signature,
    now: int,
) -> tuple[list[tuple[RawRecord, ParsedRequest]], list[Any]]:
    """The rows and their features as native requests have them: an Open Inference Protocol
    request's inputs are converted (and their datatypes checked) here; only those pay."""
    if all(request.datatypes is None for _, request in rows):
        return rows, [request.features for _, request in rows]
    kept: list[tuple[RawRecord, ParsedRequest]] = []
    features: list[Any] = []
    for record, request in rows:
        if request.datatypes is None:
            kept.append((record, request))
            features.append(request.features)
            continue
        assert isinstance(request.features, dict)
        try:
            converted = oip_features(request.features, request.datatypes, signature)
        except FeatureError as error:
            rejection = Rejection(error.code, error.message, request.request_id)
            _reject(result, topics, record, rejection, now, request.deployment)
            continue
        kept.append((record, request))
        features.append(converted)
    return kept, features


_ROLE_NAMES = {role: role.value for role in Role}  # an enum's .value is a slow property
_PRODUCTION, _CANDIDATE = Role.PRODUCTION, Role.CANDIDATE  # so is a member's lookup


def _score_deployment(
    result: BatchResult,
    topics: Topics,
    route: DeploymentRoute,
    rows: list[RoutedRow],
    matrix: InputBatch,
    shed_watch: bool = False,
) -> None:
    """Row ``i`` of ``matrix`` (of each of its inputs) is the input of ``rows[i]``;
    ``shed_watch``: a worker behind skips the watch's scoring of the previous production (as
    it sheds shadow scoring)."""
    runs = _run_arms(result, route, rows, matrix)
    audit = _audit_marks(route.state, rows)
    _write_rows(result, topics, route, rows, runs, audit)
    state = route.state
    watched = route.previous is not None and state.watch is not None and route.candidate is None
    if watched and not shed_watch:
        watch_comparisons(result, topics, route, rows, audit, runs.production, matrix)


@dataclass(slots=True)
class _ArmRuns:
    """A deployment's model calls over a batch's rows."""

    production: ArmRun  # every row production serves (the compared rows' outputs merged in)
    paired: ArmRun  # production's call over the compared rows
    candidate: ArmRun | None
    failed: set[int]  # rows the candidate should have scored and has no output for


def _run_arms(
    result: BatchResult, route: DeploymentRoute, rows: list[RoutedRow], matrix: InputBatch
) -> _ArmRuns:
    wants_candidate = [
        i
        for i, r in enumerate(rows)
        if r.assignment.served_by is Role.CANDIDATE or r.assignment.compare
    ]
    # Production scores the compared rows in a call of their own, over the same rows as the
    # candidate, so the two arms' per-row latencies are measured alike (a canary's candidate
    # sees a small share of a batch). The first model call of a batch runs on cold caches,
    # so which arm goes first alternates from batch to batch.
    compared = [i for i, r in enumerate(rows) if r.assignment.compare]
    candidate_first = rows[0].record.offset % 2 == 0
    paired = run_model(route.production, matrix, compared) if not candidate_first else None
    candidate = run_model(route.candidate, matrix, wants_candidate) if route.candidate else None
    if paired is None:
        paired = run_model(route.production, matrix, compared)
    failed = set(wants_candidate) - set(candidate.position) if candidate else set()
    # Then what production serves besides, and what the candidate failed.
    production = run_model(
        route.production,
        matrix,
        [
            i
            for i, r in enumerate(rows)
            if not r.assignment.compare
            and (r.assignment.served_by is Role.PRODUCTION or i in failed)
        ],
    )
    production = production.merged(paired)
    state = route.state
    for run, scorer, role in (
        (production, route.production, Role.PRODUCTION),
        (paired, route.production, Role.PRODUCTION),
        (candidate, route.candidate, Role.CANDIDATE),
    ):
        if run is not None and scorer is not None and run.rows:
            result.model_calls.append(
                (state.deployment, scorer.ref.version, role.value, run.rows, run.latency_ms)
            )
    return _ArmRuns(production, paired, candidate, failed)


class _Records:
    """What a deployment's batch writes for its rows: the predictions' templates by the arm
    that serves (a production prediction's time per row is that of the call that scored
    its row), and the comparisons (a compared row pairs production's call over the compared
    rows; a row the candidate failed, and production then served, pairs that call)."""

    def __init__(self, route: DeploymentRoute, runs: _ArmRuns) -> None:
        state = route.state
        served_at = now_ms()  # one clock read for the batch's predictions
        self.alone = prediction_template(
            state, route.production, Role.PRODUCTION, runs.production.latency_ms, served_at
        )
        self.paired = prediction_template(
            state, route.production, Role.PRODUCTION, runs.paired.latency_ms, served_at
        )
        self.candidate: Template | None = None
        self.paired_comparisons: ComparisonRecords | None = None
        self.fallback_comparisons: ComparisonRecords | None = None
        if runs.candidate is not None and route.candidate is not None:
            self.candidate = prediction_template(
                state, route.candidate, Role.CANDIDATE, runs.candidate.latency_ms, served_at
            )
            candidate = Arm(route.candidate, runs.candidate)
            self.paired_comparisons = ComparisonRecords(
                state, Arm(route.production, runs.paired), candidate, route.regression
            )
            self.fallback_comparisons = ComparisonRecords(
                state, Arm(route.production, runs.production), candidate, route.regression
            )


def _write_rows(
    result: BatchResult,
    topics: Topics,
    route: DeploymentRoute,
    rows: list[RoutedRow],
    runs: _ArmRuns,
    audit: list[bool],
) -> None:
    """Each row's prediction (or its dead letter, when production failed on it), and its
    comparison when it was compared or the candidate failed on it."""
    records = _Records(route, runs)
    deployment = route.state.deployment
    production, candidate, failed = runs.production, runs.candidate, runs.failed
    served = dict.fromkeys(Role, 0)
    for i, row in enumerate(rows):
        compared = row.assignment.compare
        served_by = _PRODUCTION if i in failed else row.assignment.served_by
        if served_by is _CANDIDATE:
            assert candidate is not None and route.candidate is not None
            assert records.candidate is not None
            arm, scorer, template = candidate, route.candidate, records.candidate
        else:
            arm, scorer = production, route.production
            template = records.paired if compared else records.alone
        n = arm.position.get(i)
        request = row.request
        if n is None:  # production itself failed on this row
            error = production.error or runs.paired.error or "no output"
            rejection = Rejection(DeadLetterCode.MODEL_ERROR, error, request.request_id)
            _reject(result, topics, row.record, rejection, now_ms(), deployment)
            continue
        request_json = orjson.dumps(request.request_id)
        value = template.fill(  # holes: request id, entity key, output, audit
            (request_json, orjson.dumps(row.entity), arm.encoded[n], JSON_BOOL[audit[i]])
        )
        if request.datatypes is not None:  # an OIP request: also its OIP response
            output = arm.output(i)
            assert output is not None
            value = with_oip_response(value, request, deployment, scorer, output, arm.datatype)
        result.outgoing.append(
            outgoing((topics.predictions, row.record.key, value, row.record.headers))
        )
        served[served_by] += 1
        if compared or i in failed:
            comparisons = records.paired_comparisons if compared else records.fallback_comparisons
            assert comparisons is not None
            if comparisons.emit(result, topics, row, i, served_by, audit[i], request_json):
                result.candidate_errors += 1
    for role, scorer_ in ((Role.PRODUCTION, route.production), (Role.CANDIDATE, route.candidate)):
        if served[role] and scorer_ is not None:
            key = (deployment, scorer_.ref.version, _ROLE_NAMES[role])
            result.served[key] = result.served.get(key, 0) + served[role]
            result.predictions += served[role]


def _audit_marks(state: DeploymentState, rows: list[RoutedRow]) -> list[bool]:
    """Whether each row is in the deployment's audit sample (``app.core.audit.in_audit``):
    no hashing at rate 1 (the default: every request); otherwise the hash of the batch's
    common prefix is computed once and copied per row (3x faster than ``in_audit`` per row).
    ``tests/unit/test_scoring.py`` checks that both agree."""
    rate = state.policy.audit_rate
    if rate >= 1.0:
        return [True] * len(rows)
    if rate <= 0.0:
        return [False] * len(rows)
    # audit_draw's message is "audit\x00{deployment}\x00{request_id}".
    prefix = hashlib.blake2b(f"audit\x00{state.deployment}\x00".encode(), digest_size=8)
    marks = []
    for row in rows:
        h = prefix.copy()
        h.update(row.request.request_id.encode())
        marks.append(int.from_bytes(h.digest(), "big") / _AUDIT_SCALE < rate)
    return marks


_AUDIT_SCALE = float(1 << 64)


def _reject(
    result: BatchResult,
    topics: Topics,
    record: RawRecord,
    rejection: Rejection,
    now: int,
    deployment: str = "",  # "" until the record named a deployment this worker serves
) -> None:
    letter = dead_letter(record, rejection, now)
    result.outgoing.append(Outgoing(topics.dlq, record.key, encode(letter), record.headers))
    result.dead_letters += 1
    key = (deployment, rejection.code.value)
    result.rejected[key] = result.rejected.get(key, 0) + 1
