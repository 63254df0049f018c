"""The data plane's records, filled into per-batch templates, are the contract's records: for
the same inputs, the bytes of a ``Prediction`` or a ``Comparison`` are those of the pydantic
model of ``app.core.events`` (same fields, values, key order and number format), and decode
to it. Classifiers of two and three labels, regressors, a candidate that failed, a paired
production that failed, OIP requests, watch comparisons, and strings and numbers that JSON
and a bytes format must escape or write alike."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pytest

from app.core.batch_result import DEFAULT_TOPICS, BatchResult
from app.core.comparison_records import Arm, ComparisonRecords, agreement, agreements
from app.core.events import (
    ArmResult,
    Comparison,
    DeploymentState,
    Mode,
    ModelOutput,
    ModelRef,
    OipOutput,
    Phase,
    Prediction,
    Role,
    SourceOffset,
    decode,
)
from app.core.json_templates import HOLE, INT_HOLE, JSON_BOOL, Template
from app.core.manifest import RegressionSpec, Signature
from app.core.model_calls import ArmRun, Output, no_outputs, scored
from app.core.oip import oip_response
from app.core.prediction_records import prediction_template, with_oip_response
from app.core.requests import ParsedRequest, RawRecord
from app.core.routes import RoutedRow
from app.core.routing import Assignment
from app.core.tensors import InputBatch
from tests.builders import model_ref


@dataclass(frozen=True)
class Model:
    """A ``Scorer`` whose outputs the cases give (no model runs here)."""

    ref: ModelRef

    @property
    def feature_names(self) -> tuple[str, ...]:
        return ()

    @property
    def signature(self) -> Signature:
        raise NotImplementedError

    def predict(self, x: InputBatch) -> tuple[list[str] | None, np.ndarray]:
        raise NotImplementedError


PROD, CAND = Model(model_ref("1")), Model(model_ref("2"))
ODD_NAME = 'fr%saud "quoted" é'  # a bytes format's and JSON's special characters
ODD_ID = 'r-%d\\"\u2028é\x01'


def _state(mode: Mode = Mode.SHADOW, deployment: str = "fraud", epoch: int = 7) -> DeploymentState:
    return DeploymentState(
        deployment=deployment,
        epoch=epoch,
        mode=mode,
        phase=Phase.PROGRESSING,
        production=PROD.ref,
        candidate=CAND.ref,
    )


def _classes(label: str, *scores: float) -> Output:
    return {"label": label, "scores": list(scores), "values": None}


def _values(*values: float) -> Output:
    return {"label": None, "scores": None, "values": list(values)}


def _row(request_id: str, entity: str, served_by: Role, topic: str, offset: int) -> RoutedRow:
    request = ParsedRequest(request_id, "fraud", {"amount": 1.0}, entity)
    record = RawRecord(topic, 4, offset, entity.encode(), b"{}")
    return RoutedRow(record, request, entity, Assignment(served_by, compare=True))


PREDICTIONS = [
    # deployment, request id, entity, role, output, latency, audit, OIP datatype (None: native)
    ("fraud", "r-1", "card-1", Role.PRODUCTION, _classes("legit", 0.75, 0.25), 0.0123, True, None),
    (
        "fraud",
        "r-2",
        "card-2",
        Role.CANDIDATE,
        _classes("fraud", 1e-7, 0.9999999),
        0.0,
        False,
        None,
    ),
    ("iris", "r-3", "e", Role.PRODUCTION, _classes("setosa", 0.1, 0.2, 0.7), 1e16, True, None),
    ("price", "r-4", "e", Role.PRODUCTION, _values(-0.0, 12.5), 3.3e-5, True, None),
    (ODD_NAME, ODD_ID, ODD_ID, Role.CANDIDATE, _classes('l"%s', 0.1 + 0.2, 0.7), 0.5, True, None),
    ("iris", "oip-1", "e", Role.CANDIDATE, _classes("setosa", 0.25, 0.75), 0.25, True, "FP32"),
    ("price", "oip-2", "e", Role.PRODUCTION, _values(1.5), 0.25, False, "FP64"),
]


@pytest.mark.parametrize(
    ("deployment", "request_id", "entity", "role", "output", "latency", "audit", "oip"),
    PREDICTIONS,
)
def test_a_prediction_is_the_contract_s(
    deployment: str,
    request_id: str,
    entity: str,
    role: Role,
    output: Output,
    latency: float,
    audit: bool,
    oip: str | None,
) -> None:
    state = _state(Mode.CANARY, deployment, epoch=2**40)
    scorer = CAND if role is Role.CANDIDATE else PROD
    served_at = 1_700_000_000_123
    template = prediction_template(state, scorer, role, latency, served_at)
    request = ParsedRequest(
        request_id, deployment, {}, entity, None, {"X": "FP32"} if oip else None
    )
    holes = (orjson.dumps(request_id), orjson.dumps(entity), orjson.dumps(output), JSON_BOOL[audit])
    value = template.fill(holes)
    fields: dict[str, Any] = {}
    if oip is not None:
        value = with_oip_response(value, request, deployment, scorer, output, oip)
        response = oip_response(request_id, deployment, scorer.ref.version, output, oip)
        fields = {**response, "outputs": [OipOutput(**o) for o in response["outputs"]]}
    expected = Prediction(
        request_id=request_id,
        deployment=deployment,
        entity_key=entity,
        model=scorer.ref.identity(),
        role=role,
        mode=Mode.CANARY,
        epoch=2**40,
        output=ModelOutput(**output),
        latency_ms=latency,
        served_at=served_at,
        audit=audit,
        **fields,
    )
    assert value == orjson.dumps(expected.model_dump(mode="json", exclude_unset=True))
    assert decode(Prediction, value) == expected


@dataclass(frozen=True)
class Case:
    """One comparison: each arm's output for the row (None: the arm has none), its run's
    error, who served, and whether the prediction handed its request id's JSON over."""

    name: str
    production: Output | None
    candidate: Output | None
    served_by: Role = Role.PRODUCTION
    candidate_error: str | None = None
    production_error: str | None = None
    regression: RegressionSpec | None = None
    watch: bool = False
    handed_over: bool = True
    deployment: str = "fraud"
    request_id: str = "r-1"
    mode: Mode = Mode.SHADOW


CASES = [
    Case("shadow, two labels", _classes("legit", 0.8, 0.2), _classes("fraud", 0.4, 0.6)),
    Case(
        "nothing handed over",
        _classes("legit", 0.8, 0.2),
        _classes("legit", 0.9, 0.1),
        handed_over=False,
    ),
    Case(
        "canary, served by the candidate, three labels",
        _classes("b", 0.1, 0.2, 0.7),
        _classes("c", 0.3, 0.3, 0.4),
        served_by=Role.CANDIDATE,
        mode=Mode.CANARY,
    ),
    Case(
        "regressor within tolerance",
        _values(10.0, -2.5),
        _values(10.4, -2.0),
        regression=RegressionSpec(absolute_tolerance=0.5),
    ),
    Case("regressor without tolerance", _values(1e16), _values(1e-7)),
    Case(
        "candidate failed",
        _classes("legit", 0.8, 0.2),
        None,
        candidate_error="RuntimeError: boom %s",
    ),
    Case("candidate gave no output and no error", _classes("legit", 0.8, 0.2), None),
    Case(
        "paired production failed on a candidate-served row",
        None,
        _classes("fraud", 0.1, 0.9),
        served_by=Role.CANDIDATE,
        production_error="RuntimeError: bad row",
        mode=Mode.CANARY,
    ),
    Case(
        "paired production gave no output and no error",
        None,
        _classes("fraud", 0.1, 0.9),
        served_by=Role.CANDIDATE,
        mode=Mode.CANARY,
    ),
    Case(
        "watch",
        _classes("legit", 0.8, 0.2),
        _classes("legit", 0.7, 0.3),
        watch=True,
        mode=Mode.CANARY,
    ),
    Case(
        "watch, previous failed", _classes("legit", 0.8, 0.2), None, candidate_error="x", watch=True
    ),
    Case(
        "odd strings",
        _classes('l"%d', 0.5, 0.5),
        _classes("m", 0.5, 0.5),
        deployment=ODD_NAME,
        request_id=ODD_ID,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_a_comparison_is_the_contract_s(case: Case) -> None:
    state = _state(case.mode, case.deployment)
    i = 3  # the row's index in the batch
    prod_run = _run(i, case.production, 0.0125, case.production_error)
    cand_run = _run(i, case.candidate, 2.5e-5, case.candidate_error)
    records = ComparisonRecords(
        state, Arm(PROD, prod_run), Arm(CAND, cand_run), case.regression, watch=case.watch
    )
    row = _row(case.request_id, "card-1", case.served_by, "staging.inference.requests", 2**33)
    result = BatchResult()
    failed = records.emit(
        result,
        DEFAULT_TOPICS,
        row,
        i,
        case.served_by,
        audit=True,
        request_json=orjson.dumps(case.request_id) if case.handed_over else None,
    )
    [out] = result.outgoing
    assert (out.topic, out.key) == (DEFAULT_TOPICS.comparisons, case.deployment.encode())
    assert failed == (case.candidate is None) and result.comparisons == 1

    agree, delta = False, 0.0
    if case.production is not None and case.candidate is not None:
        agree, delta = agreement(case.production, case.candidate, case.regression)
    fields: dict[str, Any] = {"watch": True} if case.watch else {}
    expected = Comparison(
        request_id=case.request_id,
        deployment=case.deployment,
        mode=case.mode,
        epoch=7,
        source=SourceOffset(topic="staging.inference.requests", partition=4, offset=2**33),
        served_by=case.served_by,
        production=_arm(PROD, case.production, prod_run, case.production_error or "no output"),
        candidate=_arm(CAND, case.candidate, cand_run, case.candidate_error or "no output"),
        agree=agree,
        score_delta=delta,
        audit=True,
        **fields,
    )
    assert out.value == orjson.dumps(expected.model_dump(mode="json", exclude_unset=True))
    assert decode(Comparison, out.value) == expected


def _run(i: int, output: Output | None, latency_ms: float, error: str | None) -> ArmRun:
    """A model call that gave ``output`` for row ``i`` (None: none, and ``error``), in
    ``latency_ms`` of which 60% CPU time."""
    if output is None:
        return no_outputs(latency_ms, error, 1, cpu_ms=0.6 * latency_ms)
    numbers = np.array([output["values"] if output["label"] is None else output["scores"]])
    labels = None if output["label"] is None else [output["label"]]
    return scored([i], labels, numbers, latency_ms, error, cpu_ms=0.6 * latency_ms)


def _arm(model: Model, output: Output | None, run: ArmRun, error: str | None) -> ArmResult:
    """An arm without an output has no latency nor CPU time, and names its call's error
    ("no output" when the call gave none)."""
    return ArmResult(
        version=model.ref.version,
        sha256=model.ref.sha256,
        output=ModelOutput(**output) if output is not None else None,
        latency_ms=run.latency_ms if output is not None else None,
        error=None if output is not None else error,
        cpu_ms=run.cpu_ms if output is not None else None,
    )


@pytest.mark.parametrize(
    ("record", "values", "expected"),
    [
        ({"a": HOLE, "b": 1}, (b'"x"',), b'{"a":"x","b":1}'),
        ({"a": INT_HOLE, "b": [HOLE, "%s%d%%"]}, (12, b"null"), b'{"a":12,"b":[null,"%s%d%%"]}'),
        ({"a": "no holes"}, (), b'{"a":"no holes"}'),
    ],
)
def test_a_template_is_orjson_s_encoding_with_its_holes_filled(
    record: dict[str, Any], values: tuple[bytes | int, ...], expected: bytes
) -> None:
    template = Template(record)
    assert template.holes == len(values)
    assert template.fill(values) == expected


def test_a_template_refuses_a_wrong_number_of_values() -> None:
    template = Template({"a": HOLE, "b": INT_HOLE})
    with pytest.raises(TypeError):
        template.fill((b"1",))
    with pytest.raises(TypeError):
        template.fill((b"1", 2, b"3"))
    with pytest.raises(TypeError):
        template.fill((1, b"2"))  # an int where JSON goes, JSON where an int goes


@pytest.mark.parametrize(
    ("labels", "values"),
    [
        (
            ["legit", "fraud", "legit"],
            np.array([[0.75, 0.25], [0.1, 0.9], [1e-7, 1.0]], np.float32),
        ),
        (["a"], np.array([[0.1, 0.2, 0.7]], np.float32)),
        (['l"%s', "é"], np.array([[0.5, 0.5], [0.0, -0.0]])),
        (None, np.array([[-0.0, 12.5], [1e16, 3.3e-5]])),
        (None, np.array([[np.nan], [np.inf]], np.float32)),  # as orjson writes them: null
        (None, np.array([[3, -1], [2**40, 0]], np.int64)),  # a graph's integer values stay so
        (None, np.array([[0.1, 1e-300]], np.float64)),
        (["a"], np.array([[0.1, 0.9]], np.float16)),
        (["a", "b"], np.zeros((2, 0), np.float32)),
        (None, np.zeros((0, 2))),
    ],
)
def test_a_call_s_outputs_encoded_at_once_are_each_row_s_output_encoded(
    labels: list[str] | None, values: np.ndarray
) -> None:
    indices = [7 + 2 * n for n in range(len(values))]
    run = scored(indices, labels, values, 0.1)
    outputs = [run.output(i) for i in indices]
    expected = [
        {"label": None, "scores": None, "values": row}
        if labels is None
        else {"label": labels[n], "scores": row, "values": None}
        for n, row in enumerate(values.tolist())
    ]
    assert repr(outputs) == repr(expected)  # nan is no nan's equal
    assert run.encoded == [orjson.dumps(output) for output in outputs]
    assert run.output(8) is None


def test_merged_runs_keep_each_row_s_output_and_the_first_call_s_time() -> None:
    first = scored([0, 2], ["a", "b"], np.array([[0.1, 0.9], [0.8, 0.2]]), 0.5, rows=2, cpu_ms=0.4)
    second = scored([1], ["b"], np.array([[0.3, 0.7]]), 0.25, "boom", cpu_ms=0.2)
    merged = first.merged(second)
    assert [merged.output(i) for i in range(3)] == [
        first.output(0),
        second.output(1),
        first.output(2),
    ]
    assert [merged.encoded[merged.position[i]] for i in range(3)] == [
        orjson.dumps(merged.output(i)) for i in range(3)
    ]
    assert (merged.latency_ms, merged.cpu_ms, merged.error, merged.rows) == (0.5, 0.4, None, 2)
    empty = no_outputs(0.125, None, 0, cpu_ms=0.0625).merged(second)
    assert empty.encoded == second.encoded
    assert (empty.latency_ms, empty.cpu_ms, empty.error, empty.rows) == (0.125, 0.0625, None, 0)
    assert first.merged(no_outputs()) is first


RNG = np.random.default_rng(11)
PROBABILITIES = RNG.dirichlet([1.0, 1.0], 40).astype(np.float32)
THREE = RNG.dirichlet([1.0, 1.0, 1.0], 40).astype(np.float32)
TIED = np.array([[0.2, 0.5, 0.3], [0.4, 0.2, 0.4]], np.float32)  # |differences| tie below
REGRESSED = RNG.normal(0.0, 3.0, (40, 2))


def _labels(scores: np.ndarray, names: str) -> list[str]:
    return [names[k] for k in scores.argmax(axis=1)]


@pytest.mark.parametrize(
    ("prod", "cand", "regression"),
    [
        (
            (_labels(PROBABILITIES, "lf"), PROBABILITIES),
            (_labels(PROBABILITIES[::-1], "lf"), PROBABILITIES[::-1]),
            None,
        ),
        ((_labels(THREE, "abc"), THREE), (_labels(THREE[::-1], "abc"), THREE[::-1]), None),
        ((["a", "b"], TIED), (["b", "b"], TIED[:, ::-1]), None),
        (
            (None, REGRESSED),
            (None, REGRESSED + RNG.normal(0, 0.5, (40, 2))),
            RegressionSpec(absolute_tolerance=0.5, relative_tolerance=0.1),
        ),
        ((None, REGRESSED), (None, REGRESSED[::-1]), None),
        ((None, REGRESSED[:2]), (None, REGRESSED[:2].copy()), None),  # equal: agree, delta 0
        (
            (["a", "b"], np.array([[np.nan, 1.0], [0.5, 0.5]])),
            (["a", "b"], np.array([[0.5, 0.5], [0.5, 0.5]])),
            None,
        ),
    ],
)
def test_agreements_over_a_batch_are_agreement_row_by_row(
    prod: tuple[list[str] | None, np.ndarray],
    cand: tuple[list[str] | None, np.ndarray],
    regression: RegressionSpec | None,
) -> None:
    """The candidate scored every other row and one more (row 1000) production did not."""
    rows = len(prod[1])
    production = scored(list(range(rows)), prod[0], prod[1], 0.1)
    kept = list(range(0, rows, 2))
    candidate = scored(
        [*kept, 1000],
        None if cand[0] is None else [*(cand[0][i] for i in kept), cand[0][0]],
        np.concatenate([cand[1][kept], cand[1][:1]]),
        0.2,
    )
    agree, delta = agreements(production, candidate, regression)
    expected = [(False, b"0.0")] * rows
    for i in kept:
        prod_out, cand_out = production.output(i), candidate.output(i)
        assert prod_out is not None and cand_out is not None
        a, d = agreement(prod_out, cand_out, regression)
        expected[i] = (a, orjson.dumps(d))
    assert list(zip(agree, delta, strict=True)) == expected
