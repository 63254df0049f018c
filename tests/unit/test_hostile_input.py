"""Property: whatever mix of valid and hostile records a batch holds, scoring it yields
exactly one output per record (a prediction for each valid one, a dead letter with the
specific code for each invalid one), and the valid records of the batch are all served."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.adapters.model_store import ModelStore
from app.core.events import DeadLetter, DeploymentState, Mode, Phase, Prediction, decode
from app.core.requests import RawRecord
from app.core.routes import DeploymentRoute
from app.core.scoring import score_batch
from app.core.topics import Topic
from tests.hostile import MAX_BYTES, Case, batches

STORE = ModelStore(Path(__file__).resolve().parents[2] / "models")
V1 = STORE.load(STORE.ref("fraud", "1"))
V2 = STORE.load(STORE.ref("fraud", "2"))


def _table(mode: Mode) -> dict[str, DeploymentRoute]:
    candidate = V2 if mode is not Mode.MANUAL else None
    state = DeploymentState(
        deployment="fraud",
        epoch=3,
        mode=mode,
        phase=Phase.PROGRESSING,
        production=V1.ref,
        candidate=candidate.ref if candidate else None,
        canary_weight=0.5,
        shadow_sample_rate=1.0,
    )
    return {"fraud": DeploymentRoute(state, V1, candidate)}


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases=batches(), mode=st.sampled_from([Mode.MANUAL, Mode.CANARY, Mode.SHADOW]))
def test_every_record_gets_exactly_its_outcome(cases: list[Case], mode: Mode) -> None:
    records = [
        RawRecord(Topic.REQUESTS, i % 6, i, f"k{i}".encode(), c.value) for i, c in enumerate(cases)
    ]
    result = score_batch(records, _table(mode), max_request_bytes=MAX_BYTES)
    predictions = [
        decode(Prediction, o.value) for o in result.outgoing if o.topic == Topic.PREDICTIONS
    ]
    letters = [decode(DeadLetter, o.value) for o in result.outgoing if o.topic == Topic.DLQ]
    assert len(predictions) + len(letters) == len(cases)
    # Every valid record is served, duplicated request ids included (one per record).
    assert Counter(p.request_id for p in predictions) == Counter(
        c.request_id for c in cases if c.code is None
    )
    assert all(p.epoch == 3 and p.output.label for p in predictions)
    # Every invalid one has a dead letter with its specific code, the original payload kept.
    by_offset = {d.source.offset: d for d in letters}
    assert set(by_offset) == {i for i, c in enumerate(cases) if c.code is not None}
    for offset, letter in by_offset.items():
        assert letter.error.code == cases[offset].code, (letter.error, cases[offset].value[:80])
        assert letter.error.message
        assert letter.payload  # the original value, as text or base64


def test_an_int_beyond_float64_does_not_fail_the_good_rows_of_its_batch() -> None:
    """Found by the property above: one such int aborted the batch's fast conversion and the
    good rows then failed an assertion, so the whole batch (and the worker) went down."""
    from app.core.features import feature_matrix
    from app.training.stream import FEATURE_NAMES

    good = dict.fromkeys(FEATURE_NAMES, 1.0)
    batch = feature_matrix([good, {**good, "amount": 10**360}, good], FEATURE_NAMES)
    assert batch.valid == [0, 2]
    assert [(i, e.code.value) for i, e in batch.errors] == [(1, "non_finite")]
    assert batch.matrix.shape == (2, len(FEATURE_NAMES))
    assert (batch.matrix == 1.0).all()


def test_nesting_past_the_parser_limit_is_invalid_json_not_a_recursion() -> None:
    from app.core.requests import Rejection, parse_request

    record = RawRecord(Topic.REQUESTS, 0, 0, None, b"[" * 5000 + b"]" * 5000)
    rejection = parse_request(record, frozenset({"fraud"}), 1 << 20)
    assert isinstance(rejection, Rejection)
    assert rejection.code.value == "invalid_json" and "deeply" in rejection.message
