"""The data plane over real ONNX models, without Kafka: one batch in, the records out."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pytest

from app.adapters.model_store import LoadedModel, ModelStore
from app.core.audit import in_audit
from app.core.events import (
    Comparison,
    DeadLetter,
    DeploymentState,
    Mode,
    ModelRef,
    Phase,
    Prediction,
    Role,
    Watch,
    decode,
    encode,
)
from app.core.policy import Policy
from app.core.requests import RawRecord
from app.core.routes import DeploymentRoute
from app.core.scoring import score_batch
from app.core.topics import Topic
from app.harness.traffic import make_requests

STORE = ModelStore(Path("models"))


@pytest.fixture(scope="module")
def v1() -> LoadedModel:
    return STORE.load(STORE.ref("fraud", "1"))


@pytest.fixture(scope="module")
def v2() -> LoadedModel:
    return STORE.load(STORE.ref("fraud", "2"))


@dataclass
class Broken:
    """A candidate that always fails: a candidate's failure must stay the candidate's."""

    inner: LoadedModel

    @property
    def ref(self) -> ModelRef:
        return self.inner.ref

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.inner.feature_names

    def predict(self, x: np.ndarray) -> tuple[list[str], np.ndarray]:
        raise RuntimeError("candidate exploded")


def records(n: int, seed: int = 3) -> list[RawRecord]:
    return [
        RawRecord(Topic.REQUESTS, i % 6, i, s.key, encode(s.request))
        for i, s in enumerate(make_requests(n, seed=seed, run_id="t"))
    ]


def route(
    mode: Mode, prod: LoadedModel, cand: object | None, weight: float = 0.0, rate: float = 1.0
) -> dict[str, DeploymentRoute]:
    state = DeploymentState(
        deployment="fraud",
        epoch=5,
        mode=mode,
        phase=Phase.PROGRESSING,
        production=prod.ref,
        candidate=cand.ref if cand is not None else None,  # type: ignore[attr-defined]
        canary_weight=weight,
        shadow_sample_rate=rate,
    )
    return {"fraud": DeploymentRoute(state, prod, cand)}  # type: ignore[arg-type]


def outputs(result_outgoing: list, topic: str, kind: type) -> list:
    return [decode(kind, o.value) for o in result_outgoing if o.topic == topic]


def test_production_only_scores_each_request_once_with_the_model_output(v1: LoadedModel) -> None:
    recs = records(300)
    result = score_batch(recs, route(Mode.MANUAL, v1, None), max_request_bytes=65536)
    preds = outputs(result.outgoing, Topic.PREDICTIONS, Prediction)
    assert len(preds) == 300 and result.predictions == 300 and result.comparisons == 0
    rows = np.array(
        [[f for f in orjson.loads(r.value)["features"].values()] for r in recs], dtype=np.float32
    )
    labels, scores = v1.predict(rows)
    for i, p in enumerate(preds):
        assert (p.model.version, p.role, p.epoch, p.mode) == ("1", Role.PRODUCTION, 5, Mode.MANUAL)
        assert p.output.label == labels[i]
        assert p.output.scores == pytest.approx(scores[i].tolist(), abs=1e-7)


def test_canary_serves_a_share_by_entity_and_pairs_every_candidate_served_request(
    v1: LoadedModel, v2: LoadedModel
) -> None:
    result = score_batch(
        records(2000), route(Mode.CANARY, v1, v2, weight=0.25), max_request_bytes=65536
    )
    preds = outputs(result.outgoing, Topic.PREDICTIONS, Prediction)
    comps = outputs(result.outgoing, Topic.COMPARISONS, Comparison)
    assert len(preds) == 2000
    served = Counter(p.role for p in preds)
    assert 0.20 < served[Role.CANDIDATE] / 2000 < 0.30
    assert {c.request_id for c in comps} == {
        p.request_id for p in preds if p.role is Role.CANDIDATE
    }
    for c in comps:
        assert c.served_by is Role.CANDIDATE and c.candidate.error is None
        assert c.production.output is not None and c.candidate.output is not None
        assert c.agree == (c.production.output.label == c.candidate.output.label)
        assert c.score_delta == pytest.approx(
            c.candidate.output.scores[-1] - c.production.output.scores[-1]
        )
    assert all(p.model.version == ("2" if p.role is Role.CANDIDATE else "1") for p in preds)


def test_shadow_keeps_candidate_output_out_of_predictions(v1: LoadedModel, v2: LoadedModel) -> None:
    recs = records(500)
    result = score_batch(recs, route(Mode.SHADOW, v1, v2, rate=1.0), max_request_bytes=65536)
    preds = outputs(result.outgoing, Topic.PREDICTIONS, Prediction)
    comps = outputs(result.outgoing, Topic.COMPARISONS, Comparison)
    assert {p.role for p in preds} == {Role.PRODUCTION} and len(preds) == 500
    assert len(comps) == 500 and all(c.served_by is Role.PRODUCTION for c in comps)
    where = {orjson.loads(r.value)["request_id"]: (r.partition, r.offset) for r in recs}
    served = {p.request_id: p.output for p in preds}
    for c in comps:
        assert (c.source.topic, c.source.partition, c.source.offset) == (
            Topic.REQUESTS,
            *where[c.request_id],
        )
        assert (c.mode, c.epoch, c.production.version, c.candidate.version) == (
            Mode.SHADOW,
            5,
            "1",
            "2",
        )
        assert c.production.output == served[c.request_id]  # the same call's output
        assert c.production.latency_ms is not None and c.candidate.latency_ms is not None


def test_a_failing_candidate_never_costs_a_prediction(v1: LoadedModel) -> None:
    result = score_batch(
        records(400), route(Mode.CANARY, v1, Broken(v1), weight=0.5), max_request_bytes=65536
    )
    preds = outputs(result.outgoing, Topic.PREDICTIONS, Prediction)
    comps = outputs(result.outgoing, Topic.COMPARISONS, Comparison)
    assert len(preds) == 400 and {p.role for p in preds} == {Role.PRODUCTION}
    assert comps and all("candidate exploded" in (c.candidate.error or "") for c in comps)
    assert result.candidate_errors == len(comps)


def test_bad_records_in_a_batch_become_dead_letters_and_the_rest_are_served(
    v1: LoadedModel,
) -> None:
    good = records(20)
    bad = [
        RawRecord(Topic.REQUESTS, 0, 100, None, b"{nope"),
        RawRecord(
            Topic.REQUESTS,
            0,
            101,
            None,
            b'{"request_id": "x", "deployment": "fraud", "features": [1, 2]}',
        ),
    ]
    result = score_batch(
        good[:10] + bad + good[10:], route(Mode.MANUAL, v1, None), max_request_bytes=65536
    )
    letters = outputs(result.outgoing, Topic.DLQ, DeadLetter)
    assert [d.error.code for d in letters] == ["invalid_json", "wrong_feature_count"]
    assert result.predictions == 20
    # For the metrics: the unreadable record names no deployment, the other one does.
    assert result.rejected == {("", "invalid_json"): 1, ("fraud", "wrong_feature_count"): 1}
    assert result.requests == {"fraud": 21}


def test_a_known_deployment_whose_model_is_unavailable_is_told_apart_from_an_unknown_one(
    v1: LoadedModel,
) -> None:
    def to(deployment: str, rid: str) -> RawRecord:
        body = {"request_id": rid, "deployment": deployment, "features": [1.0] * 10}
        return RawRecord(Topic.REQUESTS, 0, 7, None, orjson.dumps(body))

    oip = orjson.dumps(
        {"id": "o-1", "inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1]}]}
    )
    oip_record = RawRecord(Topic.REQUESTS, 0, 8, None, oip, 0, (("rollout-deployment", b"churn"),))
    result = score_batch(
        [to("churn", "r-1"), to("nope", "r-2"), oip_record, to("fraud", "r-3")],
        route(Mode.MANUAL, v1, None),
        max_request_bytes=65536,
        unavailable={"churn": "epoch 3: artifact tampered, refused"},
    )
    letters = outputs(result.outgoing, Topic.DLQ, DeadLetter)
    assert [(d.request_id, d.error.code) for d in letters] == [
        ("r-1", "model_unavailable"),
        ("r-2", "unknown_deployment"),
        ("o-1", "model_unavailable"),
    ]
    assert "artifact tampered" in letters[0].error.message
    assert result.predictions == 1


@pytest.mark.parametrize(
    ("mode", "rate", "weight"),
    [
        (Mode.MANUAL, 1.0, 0.0),  # every request audited, no hashing
        (Mode.MANUAL, 0.3, 0.0),
        (Mode.CANARY, 0.3, 0.5),  # candidate-served predictions and comparisons too
        (Mode.SHADOW, 0.05, 0.0),
    ],
)
def test_predictions_and_comparisons_mark_the_audit_sample(
    v1: LoadedModel, v2: LoadedModel, mode: Mode, rate: float, weight: float
) -> None:
    table = route(mode, v1, None if mode is Mode.MANUAL else v2, weight=weight)
    st = table["fraud"].state
    audited = st.model_copy(update={"policy": st.policy.model_copy(update={"audit_rate": rate})})
    table = {"fraud": DeploymentRoute(audited, table["fraud"].production, table["fraud"].candidate)}
    result = score_batch(records(1000), table, max_request_bytes=65536)
    preds = outputs(result.outgoing, Topic.PREDICTIONS, Prediction)
    comps = outputs(result.outgoing, Topic.COMPARISONS, Comparison)
    assert len(preds) == 1000
    for event in [*preds, *comps]:
        assert event.audit == in_audit("fraud", event.request_id, rate)
    share = sum(p.audit for p in preds) / len(preds)
    assert abs(share - rate) < 0.05
    assert all(not c.watch for c in comps)


def test_a_watched_promotion_scores_the_audit_sample_with_the_previous_production(
    v1: LoadedModel, v2: LoadedModel
) -> None:
    """Production v2 (just promoted) serves; v1, the previous production, scores the audit
    rows beside it into ``watch`` comparisons: production = the server, candidate = v1."""
    st = DeploymentState(
        deployment="fraud",
        epoch=9,
        mode=Mode.CANARY,
        phase=Phase.STABLE,
        production=v2.ref,
        history=[v1.ref],
        policy=Policy(audit_rate=0.5),
        watch=Watch(previous=v1.ref, epoch=9, started_at=0, until=60_000),
    )
    recs = records(600)
    result = score_batch(
        recs, {"fraud": DeploymentRoute(st, v2, None, v1)}, max_request_bytes=65536
    )  # type: ignore[arg-type]
    preds = outputs(result.outgoing, Topic.PREDICTIONS, Prediction)
    comps = outputs(result.outgoing, Topic.COMPARISONS, Comparison)
    assert len(preds) == 600 and all(p.model.version == "2" for p in preds)
    assert {c.request_id for c in comps} == {p.request_id for p in preds if p.audit}
    by_id = {p.request_id: p for p in preds}
    rows = np.array(
        [[f for f in orjson.loads(r.value)["features"].values()] for r in recs], dtype=np.float32
    )
    labels, _ = v1.predict(rows)
    v1_label = {f"t-{i}": labels[i] for i in range(len(recs))}
    for c in comps:
        assert c.watch and c.audit and c.served_by is Role.PRODUCTION and c.epoch == 9
        assert c.production.version == "2" and c.candidate.version == "1"
        assert c.production.output == by_id[c.request_id].output
        assert c.candidate.output is not None and c.candidate.output.label == v1_label[c.request_id]
        assert c.agree == (c.production.output.label == c.candidate.output.label)
    # A worker behind sheds the watch's scoring, as it sheds shadow scoring.
    shed = score_batch(
        recs,
        {"fraud": DeploymentRoute(st, v2, None, v1)},  # type: ignore[arg-type]
        max_request_bytes=65536,
        shed_shadow=True,
    )
    assert shed.comparisons == 0 and shed.predictions == 600
    # Without the watch (or with a candidate in flight) nothing is compared.
    plain = st.model_copy(update={"watch": None})
    quiet = score_batch(
        recs, {"fraud": DeploymentRoute(plain, v2, None, v1)}, max_request_bytes=65536
    )  # type: ignore[arg-type]
    assert quiet.comparisons == 0


def test_the_batch_audit_marks_agree_with_in_audit_on_any_request_id(v1: LoadedModel) -> None:
    """The worker hashes a batch's common prefix once; non-ASCII ids and odd rates too."""
    recs = [
        RawRecord(Topic.REQUESTS, 0, i, s.key, encode(s.request))
        for i, s in enumerate(make_requests(2000, seed=4, run_id="ü-€/\x1f"))
    ]
    for rate in (0.37, 0.999, 1e-3):
        table = route(Mode.MANUAL, v1, None)
        st = table["fraud"].state
        st = st.model_copy(update={"policy": Policy(audit_rate=rate)})
        result = score_batch(recs, {"fraud": DeploymentRoute(st, v1)}, max_request_bytes=65536)
        preds = outputs(result.outgoing, Topic.PREDICTIONS, Prediction)
        assert [p.audit for p in preds] == [in_audit("fraud", p.request_id, rate) for p in preds]
