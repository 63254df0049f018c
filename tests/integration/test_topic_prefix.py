"""Two environments on one cluster (``ROLLOUT_TOPIC_PREFIX``): ``rollout topics apply`` creates
only the prefixed topics; a real controller and worker with the prefix serve requests and answer
a command on them in consumer groups (and transactions) of their own; a worker without it, on
the same broker, never sees those requests (and serves its own)."""

from __future__ import annotations

import uuid
from pathlib import Path

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from app.adapters.control_client import current_states
from app.adapters.kafka_clients import plain_producer
from app.core.events import Action, Mode
from app.core.topics import Topic, TopicNames
from app.harness import processes
from app.harness.processes import CONTROLLER_READY, running
from app.harness.rollout_scenarios import HANDS_OFF
from app.harness.traffic import make_requests, send
from app.settings import Settings
from tests.builders import controller_process
from tests.integration.control import cli, command, state
from tests.integration.outputs import predictions

pytestmark = pytest.mark.kafka


async def _topics(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def _groups(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return {group for group, _ in await admin.list_consumer_groups()}
    finally:
        await admin.close()


async def test_two_environments_share_one_cluster(
    kafka_bootstrap: str, model_store: Path, tmp_path: Path
) -> None:
    prefix = f"env{uuid.uuid4().hex[:6]}."
    names = TopicNames(prefix)
    env = {"ROLLOUT_TOPIC_PREFIX": prefix, "ROLLOUT_MODEL_STORE": str(model_store)}

    before = await _topics(kafka_bootstrap)
    applied = cli(kafka_bootstrap, "topics", "apply", "--json", env=env)
    assert applied.returncode == 0, applied.stderr
    created = set(orjson.loads(applied.stdout)["created"])
    assert created == {names.name(t) for t in Topic}
    assert await _topics(kafka_bootstrap) - before == created  # nothing unprefixed

    staging = Settings(
        bootstrap_servers=kafka_bootstrap, model_store=model_store, topic_prefix=prefix
    )
    plain = Settings(bootstrap_servers=kafka_bootstrap, model_store=model_store)
    controller = controller_process(
        kafka_bootstrap, tmp_path, name="staging", ROLLOUT_HOME=str(tmp_path), **env
    )
    staging_worker = processes.worker(
        "staging-w1",
        tmp_path,
        {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, **env},
    )
    plain_worker = processes.worker(
        "plain-w1",
        tmp_path,
        {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "ROLLOUT_MODEL_STORE": str(model_store)},
    )
    plain_states = await current_states(plain)
    with running([controller, staging_worker, plain_worker]):
        controller.wait_for(CONTROLLER_READY)
        # The controller publishes the initial state on the prefixed state topic only.
        initial = await state(staging)
        assert initial.epoch == 0

        run = uuid.uuid4().hex[:8]
        to_staging = make_requests(40, seed=1, run_id=f"stg-{run}")
        to_plain = make_requests(40, seed=2, run_id=f"pln-{run}")
        producer = plain_producer(plain)
        await producer.start()
        try:
            await send(producer, to_staging, topic=staging.topics.name(Topic.REQUESTS))
            await send(producer, to_plain, topic=plain.topics.name(Topic.REQUESTS))
        finally:
            await producer.stop()

        served = await predictions(staging, f"stg-{run}-", len(to_staging), settle_s=1)
        assert sorted(p.request_id for _, p in served) == sorted(
            s.request.request_id for s in to_staging
        )
        assert {r.topic for r, _ in served} == {names.name(Topic.PREDICTIONS)}
        # The unprefixed worker is alive and serves its own environment's requests ...
        own = await predictions(plain, f"pln-{run}-", len(to_plain), settle_s=1)
        assert len(own) == len(to_plain)
        # ... and never saw the prefixed environment's (nor the other way round).
        assert await predictions(plain, f"stg-{run}-", 1, settle_s=2, timeout_s=5) == []
        assert await predictions(staging, f"pln-{run}-", 1, settle_s=0, timeout_s=5) == []

        # A command on the prefixed control topic is answered on the prefixed events topic.
        decision = await command(
            staging, Action.DEPLOY, version="2", mode=Mode.SHADOW, policy=HANDS_OFF
        )
        assert decision.accepted, decision.reason
        assert (await state(staging)).epoch == decision.epoch
        assert (await state(staging)).candidate is not None
        assert await current_states(plain) == plain_states  # the other environment: untouched

        # The environment's worker and controller groups carry its prefix: they never join
        # (nor rebalance) the unprefixed environment's groups on the same cluster.
        groups = await _groups(kafka_bootstrap)
        assert {names.scoped("rollout-workers"), names.scoped("rollout-controller")} <= groups
        assert {"rollout-workers"} <= groups  # the plain worker's, apart
