"""Continuous deployment on the real broker: a version published on ``models.published`` is
validated and rolled out by the controller per the deployment's ``policy.on_publish``, with
no operator command. Publish → canary → promotion on evidence; a second version queued
behind the one in flight (it starts when that one ends) or superseding it; bad publications
(malformed, unknown deployment, sha256 mismatch, version exists, not a model, a replay)
answered by rejections while the good one goes through.

Publications are written as a training pipeline would (artifact chunks, then the event; no
manifest: the controller derives it from the graph), except the promotion's, which goes
through the real ``rollout publish`` CLI."""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiokafka import AIOKafkaProducer

from app.adapters.artifacts import upload
from app.adapters.control_client import current_states
from app.adapters.kafka_clients import assign_at_end, partitions_of, reader
from app.cli.failures import ExitCode
from app.core.artifacts import describe
from app.core.events import (
    Action,
    ArtifactRef,
    ControlCommand,
    DecisionEvent,
    DeploymentState,
    ModelPublished,
    decode,
    encode,
)
from app.core.topics import Topic
from app.harness.processes import CONTROLLER_READY, RolloutProcess
from app.harness.rollout_scenarios import HANDS_OFF
from app.harness.traffic import make_requests, send, send_feedback
from app.settings import Settings
from tests.builders import controller_process, running_workers
from tests.integration.control import cli

pytestmark = pytest.mark.kafka
REPO = Path(__file__).resolve().parents[2]
FRAUD = REPO / "models" / "fraud"
RUN = uuid.uuid4().hex[:6]  # deployments.state keeps every name: each run its own
CANARY_QUEUE = {"mode": "canary", "in_flight": "queue", "queue_limit": 3}
FAST = {  # decides on a few hundred labelled requests
    "canary_steps": [0.5, 1.0],
    "min_samples_per_step": 300,
    "min_feedback_coverage": 0.3,
    "non_inferiority_margin": 0.05,
    "metric": {"kind": "accuracy"},
    "guardrails": {"max_disagreement": 1.0, "max_score_shift": 1e9, "max_latency_ratio": 1e9},
    "watch": {"window_s": 0},
}
DEPLOYMENTS: dict[str, dict[str, Any]] = {
    f"auto-{RUN}": {**FAST, "on_publish": {"mode": "canary"}},
    f"queue-{RUN}": {**HANDS_OFF, "on_publish": CANARY_QUEUE},
    f"super-{RUN}": {**HANDS_OFF, "on_publish": {"mode": "canary", "in_flight": "supersede"}},
    f"bad-{RUN}": {**HANDS_OFF, "on_publish": CANARY_QUEUE},
}
AUTO, QUEUE, SUPER, BAD = DEPLOYMENTS


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Each deployment a copy of ``fraud`` at version 1, with its own policy."""
    root = tmp_path_factory.mktemp("publication-store")
    for name, policy in DEPLOYMENTS.items():
        shutil.copytree(FRAUD / "1", root / name / "1")
        manifest = orjson.loads((root / name / "1" / "model.json").read_bytes())
        (root / name / "1" / "model.json").write_bytes(orjson.dumps({**manifest, "name": name}))
        spec = yaml.safe_load((FRAUD / "deployment.yaml").read_text())
        spec["name"] = name
        spec["policy"] = {**spec["policy"], **policy}
        (root / name / "deployment.yaml").write_text(yaml.safe_dump(spec))
    return root


@pytest.fixture(scope="module")
def settings(kafka_bootstrap: str, store: Path) -> Settings:
    return Settings(bootstrap_servers=kafka_bootstrap, model_store=store)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the controller installs the versions it validates (its artifact cache)."""
    return tmp_path_factory.mktemp("publication-cache")


@pytest.fixture(scope="module")
def services(
    kafka_bootstrap: str, store: Path, cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RolloutProcess]:
    logs = tmp_path_factory.mktemp("publication-logs")
    env = {
        "ROLLOUT_MODEL_STORE": str(store),
        "ROLLOUT_ARTIFACT_CACHE": str(cache),
        "ROLLOUT_HOME": str(logs),
    }
    controller = controller_process(kafka_bootstrap, logs, name="pub", **env).start()
    try:
        controller.wait_for(CONTROLLER_READY)
        yield controller
    finally:
        controller.terminate()


async def _state(settings: Settings, name: str, timeout_s: float = 30) -> DeploymentState:
    deadline = time.monotonic() + timeout_s
    while True:
        state = (await current_states(settings)).get(name)
        if state is not None or time.monotonic() > deadline:
            assert state is not None, f"no state for {name}"
            return state
        await asyncio.sleep(0.3)


async def _answers(
    settings: Settings,
    act: Callable[[], Awaitable[None]],
    answered: Callable[[DecisionEvent], bool],
    timeout_s: float = 60,
) -> list[DecisionEvent]:
    """Do ``act`` and return the DecisionEvents ``answered`` picks, all of them: read until
    2 s after the first."""
    events = reader(settings, client_id="publication-test")
    await events.start()
    try:
        await assign_at_end(events, settings.topics.name(Topic.EVENTS))
        await act()
        found: list[DecisionEvent] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            batch = await events.getmany(timeout_ms=200)
            for records in batch.values():
                found += [d for r in records if answered(d := decode(DecisionEvent, r.value))]
            if found and deadline - time.monotonic() > 2:
                deadline = time.monotonic() + 2
        return found
    finally:
        await events.stop()


def _raw(settings: Settings, producer: AIOKafkaProducer, value: bytes, key: bytes) -> Any:
    async def act() -> None:
        await producer.send_and_wait(settings.topics.name(Topic.PUBLISHED), value, key=key)

    return act


async def _publish(
    settings: Settings,
    producer: AIOKafkaProducer,
    name: str,
    version: str,
    data: bytes,
    artifact: ArtifactRef | None = None,
    publish_id: str | None = None,
) -> list[DecisionEvent]:
    """As a pipeline publishes: the chunks, then the event (no manifest; labels given)."""
    event = ModelPublished(
        publish_id=publish_id or uuid.uuid4().hex,
        deployment=name,
        version=version,
        artifact=artifact or describe(data),
        labels=["legit", "fraud"],
        published_by="pipeline",
    )

    async def act() -> None:
        await upload(producer, settings, name, version, data)
        await _raw(settings, producer, encode(event), name.encode())()

    return await _answers(settings, act, lambda d: d.command_id == event.publish_id)


def _steps(answers: list[DecisionEvent]) -> list[tuple[str, bool]]:
    return [(str(d.action), d.accepted) for d in answers]


def _model(version: str) -> bytes:
    return (FRAUD / version / "model.onnx").read_bytes()


async def _abort(settings: Settings, producer: AIOKafkaProducer, name: str) -> None:
    command = ControlCommand(
        command_id=uuid.uuid4().hex, deployment=name, action=Action.ABORT, issued_by="tests"
    )
    await producer.send_and_wait(
        settings.topics.name(Topic.CONTROL), encode(command), key=name.encode()
    )


async def test_publish_rolls_out_by_canary_and_promotes_with_no_operator_command(
    services: RolloutProcess,
    kafka_bootstrap: str,
    store: Path,
    settings: Settings,
    producer: AIOKafkaProducer,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    await _state(settings, AUTO)  # the controller has its partitions
    env = {"ROLLOUT_MODEL_STORE": str(store)}
    published = cli(
        kafka_bootstrap,
        "publish",
        AUTO,
        str(FRAUD / "2" / "model.onnx"),
        "--labels",
        "legit,fraud",
        "--json",
        env=env,
    )
    assert published.returncode == 0, published.stdout + published.stderr
    answer = orjson.loads(published.stdout)
    assert answer["publication"]["version"] == "2"
    assert (
        answer["publication"]["manifest"]["sha256"] == answer["publication"]["artifact"]["sha256"]
    )
    steps = [(d["action"], d["accepted"], d["decided_by"]) for d in answer["decisions"]]
    assert steps[1:] == [("validate", True, "controller"), ("deploy", True, "on_publish")]
    assert steps[0][:2] == ("publish", True)
    state = await _state(settings, AUTO)
    assert state.candidate is not None and state.candidate.version == "2"
    assert state.mode == "canary" and state.canary_weight == 0.5

    logs = tmp_path_factory.mktemp("publication-workers")
    with running_workers(kafka_bootstrap, [f"pub-{RUN}-1"], logs, **env):
        previous: list[Any] = []
        deadline = time.monotonic() + 180
        n = 0
        while time.monotonic() < deadline:
            state = await _state(settings, AUTO)
            if state.candidate is None:
                break
            batch = make_requests(300, seed=n, run_id=f"auto-{RUN}-{n}", deployment=AUTO)
            await send(producer, batch, rate=600, topic=settings.topics.name(Topic.REQUESTS))
            await send_feedback(
                producer,
                previous,
                audit_rate=1.0,
                seed=n,
                topic=settings.topics.name(Topic.FEEDBACK),
            )
            previous, n = batch, n + 1
    assert state.candidate is None, f"no decision in time: {state.reason}"
    assert state.production.version == "2", state.reason
    decisions = await _history(settings, AUTO)
    promoted = [d for d in decisions if d.action == "promote"]
    assert promoted and promoted[-1].decided_by == "controller", decisions
    # Nobody moved it but the publication (on_publish) and the controller's evidence.
    assert {d.decided_by for d in decisions if d.action != "publish"} <= {
        "controller",
        "on_publish",
    }, decisions


async def _history(settings: Settings, name: str) -> list[DecisionEvent]:
    """Every DecisionEvent of ``name`` so far."""
    events = reader(settings, client_id="publication-history")
    await events.start()
    try:
        partitions = await partitions_of(events, settings.topics.name(Topic.EVENTS))
        events.assign(partitions)
        await events.seek_to_beginning(*partitions)
        ends = await events.end_offsets(partitions)
        found: list[DecisionEvent] = []
        while any([await events.position(tp) < end for tp, end in ends.items()]):
            batch = await events.getmany(timeout_ms=500)
            for records in batch.values():
                found += [
                    d for r in records if (d := decode(DecisionEvent, r.value)).deployment == name
                ]
        return found
    finally:
        await events.stop()


async def test_a_version_published_while_one_is_in_flight_waits_in_the_queue(
    services: RolloutProcess,
    kafka_bootstrap: str,
    cache: Path,
    settings: Settings,
    producer: AIOKafkaProducer,
) -> None:
    await _state(settings, QUEUE)
    first = await _publish(settings, producer, QUEUE, "2", _model("2"))
    assert _steps(first) == [("publish", True), ("validate", True), ("deploy", True)], first
    second = await _publish(settings, producer, QUEUE, "3", _model("3"))
    assert _steps(second) == [("publish", True), ("validate", True), ("queue", True)], second
    state = await _state(settings, QUEUE)
    assert state.candidate is not None and state.candidate.version == "2"
    assert [q.model.version for q in state.queue] == ["3"]
    assert (cache / QUEUE / "3" / "model.onnx").read_bytes() == _model("3")  # installed
    status = orjson.loads(cli(kafka_bootstrap, "status", QUEUE, "--json").stdout)
    assert [q["model"]["version"] for q in status[QUEUE]["queue"]] == ["3"]

    # The rollout in flight ends (here by an operator's abort): the queued version starts.
    seen = await _answers(
        settings,
        lambda: _abort(settings, producer, QUEUE),
        lambda d: d.deployment == QUEUE,
    )
    assert _steps(seen) == [("abort", True), ("dequeue", True), ("deploy", True)], seen
    assert seen[1].command_id == seen[2].command_id == second[0].command_id
    state = await _state(settings, QUEUE)
    assert state.candidate is not None and state.candidate.version == "3" and not state.queue


async def test_a_version_published_while_one_is_in_flight_supersedes_it(
    services: RolloutProcess, settings: Settings, producer: AIOKafkaProducer
) -> None:
    await _state(settings, SUPER)
    first = await _publish(settings, producer, SUPER, "2", _model("2"))
    assert _steps(first)[-1] == ("deploy", True), first
    second = await _publish(settings, producer, SUPER, "3", _model("3"))
    assert _steps(second) == [
        ("publish", True),
        ("validate", True),
        ("supersede", True),
        ("deploy", True),
    ], second
    assert "candidate 2 retired for version 3" in second[2].reason
    state = await _state(settings, SUPER)
    assert state.candidate is not None and state.candidate.version == "3"
    assert state.production.version == "1" and state.epoch == second[-1].epoch


async def test_bad_publications_are_rejected_and_disturb_nothing(
    services: RolloutProcess,
    store: Path,
    cache: Path,
    settings: Settings,
    producer: AIOKafkaProducer,
) -> None:
    before = await _state(settings, BAD)
    others = {n: (await _state(settings, n)).epoch for n in (QUEUE, SUPER)}
    key = BAD.encode()

    not_json = await _answers(
        settings, _raw(settings, producer, b"{not json", key), lambda d: d.deployment == BAD
    )
    assert _steps(not_json) == [("publish", False)] and "not valid JSON" in not_json[0].reason

    bad_version = {**_event_fields("../1"), "deployment": BAD}
    invalid = await _answers(
        settings,
        _raw(settings, producer, orjson.dumps(bad_version), key),
        lambda d: d.command_id == bad_version["publish_id"],
    )
    assert _steps(invalid) == [("publish", False)] and "version" in invalid[0].reason

    unknown = await _publish(settings, producer, f"nosuch-{RUN}", "2", _model("2"))
    assert _steps(unknown) == [("publish", False)]
    assert "no deployment named" in unknown[0].reason

    unreadable = f"unreadable-{RUN}"  # declared by its folder, but its spec does not parse
    (store / unreadable).mkdir()
    (store / unreadable / "deployment.yaml").write_text("name: [unclosed\n")
    broken_spec = await _publish(settings, producer, unreadable, "2", _model("2"))
    assert _steps(broken_spec) == [("publish", False)]
    assert f"invalid {unreadable}/deployment.yaml" in broken_spec[0].reason
    shutil.rmtree(store / unreadable)

    exists = await _publish(settings, producer, BAD, "1", _model("1"))
    assert _steps(exists) == [("publish", False)]
    assert "exists already: it is production" in exists[0].reason

    data = _model("2")
    forged = describe(data).model_copy(update={"sha256": "0" * 64})
    mismatch = await _publish(settings, producer, BAD, "5", data, artifact=forged)
    assert _steps(mismatch) == [("publish", True), ("validate", False)]
    assert "sha256" in mismatch[1].reason and "refused" in mismatch[1].reason

    garbage = await _publish(settings, producer, BAD, "6", b"not an onnx model at all")
    assert _steps(garbage) == [("publish", True), ("validate", False)]
    assert "not an ONNX model" in garbage[1].reason

    after = await _state(settings, BAD)
    assert after == before  # nothing served, nothing changed
    for root in (store, cache):
        assert not (root / BAD / "5").exists() and not (root / BAD / "6").exists()

    good_id = uuid.uuid4().hex
    good = await _publish(settings, producer, BAD, "2", data, publish_id=good_id)
    assert _steps(good) == [("publish", True), ("validate", True), ("deploy", True)], good
    replay = await _publish(settings, producer, BAD, "2", data, publish_id=good_id)
    assert _steps(replay) == [("publish", True)] and "answered already" in replay[0].reason
    state = await _state(settings, BAD)
    assert state.candidate is not None and state.candidate.version == "2"
    assert state.epoch == before.epoch + 1 and not state.queue  # applied once
    assert {n: (await _state(settings, n)).epoch for n in others} == others


def _event_fields(version: str) -> dict[str, Any]:
    data = _model("2")
    return {
        "publish_id": uuid.uuid4().hex,
        "version": version,
        "artifact": describe(data).model_dump(),
        "published_by": "pipeline",
    }


async def test_rollout_publish_exit_codes(
    services: RolloutProcess, kafka_bootstrap: str, store: Path, settings: Settings
) -> None:
    env = {"ROLLOUT_MODEL_STORE": str(store)}
    model = str(FRAUD / "3" / "model.onnx")
    ghost = f"ghost-{RUN}"
    refused = cli(kafka_bootstrap, "publish", ghost, model, "--version", "2", env=env)
    assert refused.returncode == ExitCode.REJECTED, refused.stdout + refused.stderr
    assert (
        refused.stderr.startswith("error: rejected publish") and "no deployment" in refused.stderr
    )
    no_version = cli(kafka_bootstrap, "publish", ghost, model, env=env)
    assert no_version.returncode == ExitCode.USAGE and "--version" in no_version.stderr
    before = await _state(settings, SUPER)
    offline = cli(
        kafka_bootstrap, "publish", SUPER, model, "--version", "9", "--local-only", env=env
    )
    assert offline.returncode == 0, offline.stderr
    assert (store / SUPER / "9" / "model.onnx").read_bytes() == _model("3")
    assert await _state(settings, SUPER) == before  # the store only: nothing published
