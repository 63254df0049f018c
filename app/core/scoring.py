"""The data plane: one micro-batch of raw records in, the records to publish out.

No Kafka here (the models are ``Scorer``s: an onnxruntime session is the adapters'): the
worker's loop (``app.worker.loop``) consumes, calls ``score_batch``, and publishes what it
returns in one transaction; the controller's replay gate (``app.controller.replay_gate``)
scores the last requests with it. Each model runs once per batch over the rows routed to
it. Every valid request yields exactly one ``Prediction``; every invalid one a ``DeadLetter``;
every compared request one ``Comparison``. A candidate's failure never costs a prediction:
rows it should have served are served by production instead, and the comparison says why.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np
import orjson

from app.core.events import (
    DeadLetterCode,
    DeploymentState,
    Mode,
    ModelRef,
    Role,
    ShedReport,
    encode,
    now_ms,
)
from app.core.features import FeatureBatch, FeatureError, feature_matrix
from app.core.manifest import OIP_DATATYPES, RegressionSpec, Signature
from app.core.oip import oip_response
from app.core.requests import (
    ParsedRequest,
    RawRecord,
    Rejection,
    dead_letter,
    entity_key,
    parse_request,
)
from app.core.routing import PRODUCTION_ONLY, Assignment, assign, bucket
from app.core.tensors import InputBatch, TensorBatch, oip_features, select, tensor_batch
from app.core.topics import Topic, TopicNames


class Scorer(Protocol):
    """What the data plane needs of a loaded model (``app.adapters.model_store.LoadedModel``):
    ``predict`` gives a classifier's labels and ``(n, k)`` scores, or a regressor's ``None``
    and ``(n, t)`` values."""

    @property
    def ref(self) -> ModelRef: ...
    @property
    def feature_names(self) -> tuple[str, ...]: ...
    @property
    def signature(self) -> Signature: ...
    def predict(self, x: InputBatch) -> tuple[list[str] | None, np.ndarray]: ...


@dataclass(frozen=True)
class DeploymentRoute:
    """A deployment's state together with its loaded models: what a worker routes by.
    ``regression``: how a regressor's two outputs are compared (``deployment.yaml``)."""

    state: DeploymentState
    production: Scorer
    candidate: Scorer | None = None
    # The previous production while a promotion is watched (``state.watch``): it scores the
    # audit sample beside production (``watch: true`` comparisons).
    previous: Scorer | None = None
    regression: RegressionSpec | None = None


RoutingTable = Mapping[str, DeploymentRoute]


class Outgoing(NamedTuple):  # a tuple: built for every output record
    topic: str
    key: bytes | None
    value: bytes
    headers: Sequence[tuple[str, bytes]] = ()


@dataclass(frozen=True)
class Topics:
    """The cluster names of the data plane's topics (``Topics.of(settings.topics)``)."""

    requests: str
    predictions: str
    comparisons: str
    dlq: str

    @classmethod
    def of(cls, names: TopicNames) -> Topics:
        return cls(
            requests=names.name(Topic.REQUESTS),
            predictions=names.name(Topic.PREDICTIONS),
            comparisons=names.name(Topic.COMPARISONS),
            dlq=names.name(Topic.DLQ),
        )


# Unprefixed: for pure uses (tests, the simulation); a worker uses its settings' names.
DEFAULT_TOPICS = Topics.of(TopicNames())


@dataclass
class BatchResult:
    outgoing: list[Outgoing] = field(default_factory=list)
    predictions: int = 0
    comparisons: int = 0
    dead_letters: int = 0
    candidate_errors: int = 0
    # Per deployment: requests shadow mode sampled for comparison, and how many were shed.
    shadow_sampled: dict[str, int] = field(default_factory=dict)
    shadow_shed: dict[str, int] = field(default_factory=dict)
    # For metrics: requests by deployment (those naming a known one), predictions by
    # (deployment, version, role), dead letters by (deployment or "", code), and each model
    # call as (deployment, version, role, rows, per-row ms).
    requests: dict[str, int] = field(default_factory=dict)
    served: dict[tuple[str, str, str], int] = field(default_factory=dict)
    rejected: dict[tuple[str, str], int] = field(default_factory=dict)
    model_calls: list[tuple[str, str, str, int, float]] = field(default_factory=list)
    # ShedReports (published with SHED_HEADERS among the comparisons) for the deployments
    # whose shadow scoring was shed.
    shed_reports: list[Outgoing] = field(default_factory=list)


# Marks a ShedReport among the Comparisons of inference.comparisons.
SHED_HEADERS = [("kind", b"shed")]

# What a worker's loop calls on each batch: the raw records and the worker's lag (records
# behind the log end) in, what to publish out. ``table_scorer`` builds the production one.
BatchScorer = Callable[[Sequence[RawRecord], int], BatchResult]


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


@dataclass(slots=True)
class _Row:
    record: RawRecord
    request: ParsedRequest
    entity: str
    assignment: Assignment


# A model's output for one row, as the wire has it: {"label": str, "scores": [float, ...]}.
_Output = dict[str, Any]


@dataclass(slots=True)
class _ArmRun:
    """One model's outputs over the rows it scored (indices into the deployment's rows)."""

    outputs: dict[int, _Output]
    latency_ms: float
    error: str | None
    rows: int = 0  # rows the call scored (or tried to)
    datatype: str = "FP32"  # the OIP type of its values (an OIP request's prediction says it)


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
        if isinstance(parsed, Rejection) and unavailable and parsed.deployment in unavailable:
            parsed = _unavailable(parsed, unavailable)
        if isinstance(parsed, Rejection):
            _reject(result, topics, record, parsed, now)
            continue
        parsed_by_deployment.setdefault(parsed.deployment, []).append((record, parsed))
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
        rows: list[_Row] = []
        for i in checked.valid:
            record, request = parsed_rows[i]
            entity = entity_key(request, record.key)
            assignment = assign(route.state, entity, request.request_id)
            if assignment.compare and route.state.mode in (Mode.SHADOW, Mode.MANUAL):
                result.shadow_sampled[name] = result.shadow_sampled.get(name, 0) + 1
                if shed_shadow:
                    result.shadow_shed[name] = result.shadow_shed.get(name, 0) + 1
                    assignment = PRODUCTION_ONLY
            rows.append(_Row(record, request, entity, assignment))
        if rows:
            _score_deployment(result, topics, route, rows, checked.matrix, shed_shadow)
    return result


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


def _score_deployment(
    result: BatchResult,
    topics: Topics,
    route: DeploymentRoute,
    rows: list[_Row],
    matrix: InputBatch,
    shed_watch: bool = False,
) -> None:
    """Row ``i`` of ``matrix`` (of each of its inputs) is the input of ``rows[i]``;
    ``shed_watch``: a worker behind skips the watch's scoring of the previous production (as
    it sheds shadow scoring)."""
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
    paired = _run(route.production, matrix, compared) if not candidate_first else None
    candidate = _run(route.candidate, matrix, wants_candidate) if route.candidate else None
    if paired is None:
        paired = _run(route.production, matrix, compared)
    failed = set(wants_candidate) - set(candidate.outputs) if candidate else set()
    # Then what production serves besides, and what the candidate failed.
    production = _run(
        route.production,
        matrix,
        [
            i
            for i, r in enumerate(rows)
            if not r.assignment.compare
            and (r.assignment.served_by is Role.PRODUCTION or i in failed)
        ],
    )
    production.outputs.update(paired.outputs)
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
    mode = state.mode.value
    identity = {
        id(scorer): {
            "name": scorer.ref.name,
            "version": scorer.ref.version,
            "sha256": scorer.ref.sha256,
        }
        for scorer in (route.production, route.candidate)
        if scorer is not None
    }
    served_at = now_ms()  # one clock read for the batch's predictions
    audit = _audit_marks(state, rows)
    for i, row in enumerate(rows):
        served_by = row.assignment.served_by
        if i in failed:
            served_by = Role.PRODUCTION
        arm, scorer = (
            (candidate, route.candidate)
            if served_by is Role.CANDIDATE
            else (production, route.production)
        )
        assert arm is not None and scorer is not None
        output = arm.outputs.get(i)
        if output is None:  # production itself failed on this row
            error = production.error or paired.error or "no output"
            rejection = Rejection(DeadLetterCode.MODEL_ERROR, error, row.request.request_id)
            _reject(result, topics, row.record, rejection, now_ms(), state.deployment)
            continue
        latency = (
            paired.latency_ms if arm is production and row.assignment.compare else arm.latency_ms
        )
        prediction = {  # the Prediction contract, built directly: this is the hot path
            "request_id": row.request.request_id,
            "deployment": state.deployment,
            "entity_key": row.entity,
            "model": identity[id(scorer)],
            "role": _ROLE_NAMES[served_by],
            "mode": mode,
            "epoch": state.epoch,
            "output": output,
            "latency_ms": latency,
            "served_at": served_at,
            "audit": audit[i],
        }
        if row.request.datatypes is not None:  # an OIP request: also its OIP response
            prediction.update(
                oip_response(
                    row.request.request_id,
                    state.deployment,
                    scorer.ref.version,
                    output,
                    arm.datatype,
                )
            )
        result.outgoing.append(
            Outgoing(
                topics.predictions, row.record.key, orjson.dumps(prediction), row.record.headers
            )
        )
        result.predictions += 1
        served_key = (state.deployment, scorer.ref.version, _ROLE_NAMES[served_by])
        result.served[served_key] = result.served.get(served_key, 0) + 1
        if row.assignment.compare or i in failed:
            assert candidate is not None
            prod_arm = paired if row.assignment.compare else production
            _compare(
                result,
                topics,
                route,
                row,
                i,
                _ROLE_NAMES[served_by],
                prod_arm,
                candidate,
                mode,
                audit[i],
            )
    watched = route.previous is not None and state.watch is not None and route.candidate is None
    if watched and not shed_watch:
        _watch(result, topics, route, rows, audit, production, matrix, mode)


def _audit_marks(state: DeploymentState, rows: list[_Row]) -> list[bool]:
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


def _watch(
    result: BatchResult,
    topics: Topics,
    route: DeploymentRoute,
    rows: list[_Row],
    audit: list[bool],
    production: _ArmRun,
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
    previous = _run(route.previous, matrix, chosen)
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
        comparison = {
            "request_id": row.request.request_id,
            "deployment": name,
            "mode": mode,
            "epoch": state.epoch,
            "source": {
                "topic": row.record.topic,
                "partition": row.record.partition,
                "offset": row.record.offset,
            },
            "served_by": Role.PRODUCTION.value,
            "production": _arm_result(route.production, prod_out, production),
            "candidate": _arm_result(
                route.previous,
                prev_out,
                previous,
                None if prev_out is not None else previous.error or "no output",
            ),
            "agree": agree,
            "score_delta": delta,
            "audit": True,
            "watch": True,
        }
        result.outgoing.append(Outgoing(topics.comparisons, key, orjson.dumps(comparison)))
        result.comparisons += 1


def _compare(
    result: BatchResult,
    topics: Topics,
    route: DeploymentRoute,
    row: _Row,
    i: int,
    served_by: str,
    production: _ArmRun,
    candidate: _ArmRun,
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
    state = route.state
    comparison = {  # the Comparison contract, built directly: shadow compares every record
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
        "production": _arm_result(route.production, prod_out, production),
        "candidate": _arm_result(route.candidate, cand_out, candidate, cand_error),
        "agree": agree,
        "score_delta": delta,
        "audit": audit,
    }
    key = state.deployment.encode("utf-8")
    result.outgoing.append(Outgoing(topics.comparisons, key, orjson.dumps(comparison)))
    result.comparisons += 1


def _arm_result(
    scorer: Scorer, output: _Output | None, run: _ArmRun, error: str | None = None
) -> dict[str, Any]:
    """The ``ArmResult`` contract."""
    return {
        "version": scorer.ref.version,
        "sha256": scorer.ref.sha256,
        "output": output,
        "latency_ms": run.latency_ms if output is not None else None,
        "error": error,
    }


def agreement(
    production: _Output, candidate: _Output, regression: RegressionSpec | None
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


def _outputs(
    indices: list[int], labels: list[str] | None, values: np.ndarray
) -> dict[int, _Output]:
    rows = values.tolist()
    if labels is None:  # a regressor
        return {
            i: {"label": None, "scores": None, "values": row}
            for i, row in zip(indices, rows, strict=True)
        }
    return {
        i: {"label": labels[n], "scores": row, "values": None}
        for n, (i, row) in enumerate(zip(indices, rows, strict=True))
    }


def _run(scorer: Scorer, matrix: InputBatch, indices: list[int]) -> _ArmRun:
    """Score rows ``indices`` of ``matrix`` in one model call; on failure, isolate the
    failing rows one by one."""
    if not indices:
        return _ArmRun({}, 0.0, None)
    selected = select(matrix, indices)
    started = time.perf_counter()
    try:
        labels, values = scorer.predict(selected)
    except Exception as exc:  # a model may fail on a batch; find the rows it fails on
        return _run_one_by_one(scorer, matrix, indices, exc)
    per_row_ms = (time.perf_counter() - started) * 1000.0 / len(indices)
    return _ArmRun(
        _outputs(indices, labels, values), per_row_ms, None, len(indices), _datatype(values)
    )


def _datatype(values: np.ndarray) -> str:
    return OIP_DATATYPES.get(values.dtype.name, "FP64")


def _run_one_by_one(
    scorer: Scorer, matrix: InputBatch, indices: list[int], first: Exception
) -> _ArmRun:
    outputs: dict[int, _Output] = {}
    error = f"{type(first).__name__}: {first}"
    datatype = "FP32"
    started = time.perf_counter()
    for i in indices:
        try:
            labels, values = scorer.predict(select(matrix, [i]))
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            continue
        outputs.update(_outputs([i], labels, values))
        datatype = _datatype(values)
    per_row_ms = (time.perf_counter() - started) * 1000.0 / len(indices)
    return _ArmRun(outputs, per_row_ms, error, len(indices), datatype)


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
