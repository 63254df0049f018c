"""The fault scenarios. Each runs real processes under continuous load of known request ids,
injects its faults, reads the outputs back with ``read_committed`` and tallies them per
request: exactly one prediction per valid request, one dead letter per invalid record.

* ``worker-kill`` — ``kill -9`` of one of two workers at random points, ten times, each
  restarted at once under the same id (its transactional id fences the dead incarnation).
* ``rebalance`` — three workers joining and leaving (SIGTERM) while the stream runs.
* ``broker-restart`` — the broker stopped and started again mid-stream; a broker of the
  scenario's own on free ports, never a shared one.
* ``controller-failover`` — two controllers; the one acting for ``fraud`` is killed (-9) in
  the middle of a canary; the other takes the rollout from the same step.
* ``model-file`` — the production model's file corrupted and the rollback target's deleted
  after deployment; a worker restarted meanwhile must neither serve another model nor go back
  to an earlier epoch; the files come back and it serves again.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from app.adapters import kafka_local
from app.adapters.control_client import send_command
from app.adapters.kafka_clients import plain_producer
from app.adapters.kafka_security import client_options
from app.adapters.partitioning import partition_for
from app.adapters.topics import apply_topics, desired_topics
from app.chaos.load import Load, Outputs, read_outputs
from app.chaos.own_broker import dedicated_broker, remove_broker_home
from app.chaos.tally import Tally, recovery_ms, tally
from app.core.events import Action, ControlCommand, DecisionEvent, Mode, now_ms
from app.core.topics import Topic
from app.harness import processes
from app.harness.processes import RolloutProcess
from app.harness.rollout_scenarios import Scenario, ScenarioResult, reset, run_scenario
from app.settings import Settings

ASSIGNED = "partitions assigned"


@dataclass
class ChaosResult:
    scenario: str
    tally: Tally
    faults: int
    recover_s: float | None
    failed_sends: int = 0
    problems: list[str] = field(default_factory=list)  # broken promises beyond the tally
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.tally.ok and not self.problems


@dataclass
class ChaosEnv:
    """Where scenarios run: the cluster and model store of ``settings``, logs in ``work_dir``."""

    settings: Settings
    work_dir: Path
    rate: float = 300.0
    seed: int = 0
    kills: int = 10


Inject = Callable[[Load], Awaitable[list[int]]]


async def _under_load(
    env: ChaosEnv,
    settings: Settings,
    name: str,
    inject: Inject,
    result_notes: list[str],
    check: Callable[[Outputs], list[str]] | None = None,
) -> ChaosResult:
    began = time.monotonic()
    run_id = f"chaos-{name}-{uuid.uuid4().hex[:6]}"
    producer: AIOKafkaProducer = plain_producer(settings)
    await producer.start()
    load = Load(producer, run_id, settings.topics.name(Topic.REQUESTS), rate=env.rate)
    stop = asyncio.Event()
    sender = asyncio.create_task(load.run(stop), name=f"load-{name}")
    try:
        faults_at = await inject(load)
    finally:
        stop.set()
        await sender
        await producer.stop()
    outputs = await read_outputs(settings, load)
    counted = tally(load.valid, load.invalid, outputs.predicted, outputs.dead_letters)
    recovered = recovery_ms(faults_at, load.valid, outputs.served_at)
    result = ChaosResult(
        scenario=name,
        tally=counted,
        faults=len(faults_at),
        recover_s=recovered / 1000 if recovered is not None else None,
        failed_sends=load.failed,
        notes=result_notes,
    )
    result.problems += _wrong_codes(outputs)
    if check is not None:
        result.problems += check(outputs)
    result.seconds = time.monotonic() - began
    return result


def _wrong_codes(outputs: Outputs) -> list[str]:
    """Every malformed record of the load must carry a specific code, never model_error."""
    bad = {k: c for k, c in outputs.codes.items() if c in ("model_error", "invalid_request")}
    return (
        [f"{len(bad)} dead letters with an unspecific code: {sorted(bad.items())[:3]}"]
        if bad
        else []
    )


def _env_for(settings: Settings) -> dict[str, str]:
    return processes.settings_env(settings)


def _controller(name: str, log_dir: Path, env: dict[str, str]) -> RolloutProcess:
    """A controller with a home of its own (faust's data dir) beside its log."""
    home = log_dir / f"controller-{name}"
    return processes.controller(name, log_dir, {**env, "ROLLOUT_HOME": str(home)})


async def _wait_assigned(proc: RolloutProcess, after: int = 0, timeout_s: float = 60.0) -> None:
    await asyncio.to_thread(proc.wait_for, ASSIGNED, timeout_s, after)


# --------------------------------------------------------------------------- worker kill -9


async def worker_kill(env: ChaosEnv) -> ChaosResult:
    rng = random.Random(env.seed)
    tag = uuid.uuid4().hex[:6]
    logs = env.work_dir / "worker-kill"
    workers = [processes.worker(f"kill-{tag}-{i}", logs, _env_for(env.settings)) for i in (1, 2)]
    notes: list[str] = []

    async def inject(load: Load) -> list[int]:
        for w in workers:
            w.start()
        for w in workers:
            await _wait_assigned(w)
        faults: list[int] = []
        marks = {id(w): 0 for w in workers}
        for _ in range(env.kills):
            await asyncio.sleep(rng.uniform(0.3, 2.0))
            victim = rng.choice(workers)
            victim.kill()
            faults.append(now_ms())
            marks[id(victim)] = len(victim.log())
            victim.start()
        for w in workers:  # the last incarnations are back in the group
            await _wait_assigned(w, after=marks[id(w)])
        await asyncio.sleep(2.0)
        return faults

    try:
        return await _under_load(env, env.settings, "worker-kill", inject, notes)
    finally:
        for w in workers:
            w.terminate()


# --------------------------------------------------------------------------- rebalance


async def rebalance(env: ChaosEnv) -> ChaosResult:
    tag = uuid.uuid4().hex[:6]
    logs = env.work_dir / "rebalance"
    w1, w2, w3 = (
        processes.worker(f"reb-{tag}-{i}", logs, _env_for(env.settings)) for i in (1, 2, 3)
    )

    async def inject(load: Load) -> list[int]:
        faults: list[int] = []
        w1.start()
        await _wait_assigned(w1)
        for step in (
            lambda: w2.start(),
            lambda: w3.start(),
            lambda: w1.terminate(),
            lambda: w1.start(),
            lambda: w2.terminate(),
            lambda: w3.terminate(),
        ):
            await asyncio.sleep(2.0)
            faults.append(now_ms())
            await asyncio.to_thread(step)
        await asyncio.sleep(3.0)
        return faults

    try:
        return await _under_load(env, env.settings, "rebalance", inject, [])
    finally:
        for w in (w1, w2, w3):
            w.terminate()


# --------------------------------------------------------------------------- broker restart


async def broker_restart(env: ChaosEnv) -> ChaosResult:
    """On a broker of its own (free ports, a home in ``work_dir``): stopped, then started."""
    config = dedicated_broker(env.work_dir / "broker-home", env.settings)
    await asyncio.to_thread(kafka_local.start, config)
    settings = env.settings.model_copy(update={"bootstrap_servers": config.bootstrap})
    await apply_topics(
        config.bootstrap, desired_topics(settings), security=client_options(settings)
    )
    tag = uuid.uuid4().hex[:6]
    logs = env.work_dir / "broker-restart"
    workers = [processes.worker(f"brk-{tag}-{i}", logs, _env_for(settings)) for i in (1, 2)]
    notes: list[str] = []
    problems: list[str] = []

    async def inject(load: Load) -> list[int]:
        for w in workers:
            w.start()
        for w in workers:
            await _wait_assigned(w)
        await asyncio.sleep(2.0)
        await asyncio.to_thread(kafka_local.stop, config)
        faults = [now_ms()]
        await asyncio.sleep(2.0)
        await asyncio.to_thread(kafka_local.start, config)
        await asyncio.sleep(6.0)
        for w in workers:
            if not w.alive():  # a broken promise; restarted (as a supervisor would) to count
                problems.append(f"worker {w.args[-1]} exited during the outage")
                w.start()
        await asyncio.sleep(2.0)
        return faults

    try:
        out = await _under_load(env, settings, "broker-restart", inject, notes)
        out.problems += problems
        return out
    finally:
        for w in workers:
            w.terminate()
        await asyncio.to_thread(remove_broker_home, config)


# --------------------------------------------------------------------------- controller


async def controller_failover(env: ChaosEnv) -> ChaosResult:
    """Two controllers, two workers, a canary of version 2; the controller acting for
    ``fraud`` is killed after the first step. Known load runs beside the canary's traffic."""
    logs = env.work_dir / "controller-failover"
    penv = _env_for(env.settings)
    controllers = [_controller(n, logs, penv) for n in ("a", "b")]
    tag = uuid.uuid4().hex[:6]
    workers = [processes.worker(f"ctl-{tag}-{i}", logs, penv) for i in (1, 2)]
    problems: list[str] = []
    notes: list[str] = []

    async def inject(load: Load) -> list[int]:
        for p in (*controllers, *workers):
            p.start()
        for c in controllers:
            await asyncio.to_thread(c.wait_for, "acting for control partitions", 90.0)
        await reset(env.settings)
        for w in workers:
            await _wait_assigned(w)
        partition = partition_for("fraud", 3)
        faults: list[int] = []

        def kill_after_first_step(result: ScenarioResult) -> None:
            if faults or not any(d.action == "advance" for d in result.decisions):
                return
            owners = [c for c in controllers if partition in _acting_for(c)]
            if owners:
                owners[-1].kill()
                faults.append(now_ms())

        producer = plain_producer(env.settings)
        await producer.start()
        try:
            scenario = Scenario(
                "chaos-failover", "2", Mode.CANARY, "promote", {"min_samples_per_step": 300}
            )
            result = await run_scenario(
                env.settings, producer, scenario, timeout_s=150, progress=kill_after_first_step
            )
        finally:
            await producer.stop()
        problems.extend(_rollout_problems(result, bool(faults)))
        final = result.final.action if result.final else "none"
        notes.append(f"canary of v2 ended with {final}; {len(result.decisions)} decisions")
        await reset(env.settings)
        return faults

    try:
        out = await _under_load(env, env.settings, "controller-failover", inject, notes)
        out.problems += problems
        return out
    finally:
        for p in (*workers, *controllers):
            p.terminate()


def _acting_for(proc: RolloutProcess) -> set[int]:
    marker = "acting for control partitions ["
    log = proc.log()
    at = log.rfind(marker)
    if at < 0:
        return set()
    inside = log[at + len(marker) : log.find("]", at)]
    return {int(p) for p in inside.split(",") if p.strip()}


def _rollout_problems(result: ScenarioResult, killed: bool) -> list[str]:
    """Step and epoch only move forward: decision epochs consecutive, weights increasing."""
    problems = []
    if not killed:
        problems.append("the rollout ended before the first step: no controller was killed")
    if not result.ok:
        problems.append(f"the canary did not promote: {[d.reason for d in result.decisions]}")
    epochs = [d.epoch for d in result.decisions]
    if epochs != list(range(epochs[0], epochs[0] + len(epochs))) if epochs else False:
        problems.append(f"a decision was repeated or lost: epochs {epochs}")
    weights = [d.to.weight for d in result.decisions if d.action == "advance" and d.to]
    if weights != sorted(set(weights)):
        problems.append(f"a step was repeated: weights {weights}")
    return problems


# --------------------------------------------------------------------------- model file


async def model_file(env: ChaosEnv) -> ChaosResult:
    """Version 2 deployed from a copy of the store; then its file is corrupted and version
    1's (the rollback target) deleted, and a worker is killed and restarted."""
    store = env.work_dir / "model-file" / "models"
    shutil.rmtree(store, ignore_errors=True)
    shutil.copytree(Path(env.settings.model_store) / "fraud", store / "fraud")
    settings = env.settings.model_copy(update={"model_store": store})
    logs = env.work_dir / "model-file"
    # The workers' artifact cache is the scenario's own: a copy of version 2 that an earlier
    # run fetched (by its sha256) is a good file, and a worker would rightly load it.
    shutil.rmtree(logs / "artifact-cache", ignore_errors=True)
    penv = {**_env_for(settings), "ROLLOUT_ARTIFACT_CACHE": str(logs / "artifact-cache")}
    ctl = _controller("m", logs, penv)
    tag = uuid.uuid4().hex[:6]
    workers = [processes.worker(f"mdl-{tag}-{i}", logs, penv) for i in (1, 2)]
    problems: list[str] = []
    notes: list[str] = []
    v2 = store / "fraud" / "2" / "model.onnx"
    v1 = store / "fraud" / "1" / "model.onnx"
    originals = {v2: v2.read_bytes(), v1: v1.read_bytes()}

    async def inject(load: Load) -> list[int]:
        ctl.start()
        await asyncio.to_thread(ctl.wait_for, "acting for control partitions", 90.0)
        await reset(settings)
        deployed = await _command(settings, Action.DEPLOY, version="2", mode=Mode.AUTOMATIC)
        if deployed is None or not deployed.accepted:
            raise RuntimeError(f"deploying version 2 failed: {deployed}")
        floor.append((now_ms(), deployed.epoch))
        for w in workers:
            w.start()
        for w in workers:
            await _wait_assigned(w)
        await asyncio.sleep(1.0)
        blob = bytearray(originals[v2])
        blob[len(blob) // 2] ^= 0xFF
        v2.write_bytes(bytes(blob))
        v1.unlink()
        faults = [now_ms()]
        await asyncio.sleep(1.0)
        w1 = workers[0]
        w1.kill()
        faults.append(now_ms())
        mark = len(w1.log())
        w1.start()
        await asyncio.sleep(8.0)  # w2 serves; w1 must not serve another model meanwhile
        if ASSIGNED in w1.log()[mark:]:
            problems.append("a worker that cannot load the deployed model joined the group")
        for path, data in originals.items():
            path.write_bytes(data)
        faults.append(now_ms())
        await _wait_assigned(w1, after=mark, timeout_s=60)
        await asyncio.sleep(2.0)
        return faults

    floor: list[tuple[int, int]] = []
    try:
        out = await _under_load(
            env, settings, "model-file", inject, notes, lambda o: _epochs_never_go_back(o, floor)
        )
        out.problems += problems
        return out
    finally:
        for path, data in originals.items():
            path.write_bytes(data)
        for p in workers:
            p.terminate()
        try:
            await reset(settings)
        finally:
            ctl.terminate()


def _epochs_never_go_back(outputs: Outputs, floor: list[tuple[int, int]]) -> list[str]:
    """Once every worker has taken the deployment (workers start after it: ``floor`` holds
    when it was deployed, and its epoch), no prediction may come from an earlier epoch: a
    restarted worker must not fall back."""
    if not floor:
        return ["version 2 was never deployed"]
    at, epoch = floor[0]
    behind = [e for served, e in outputs.epochs if served > at + 3000 and e < epoch]
    return [f"{len(behind)} predictions served under an epoch before {epoch}"] if behind else []


async def _command(settings: Settings, action: Action, **fields: object) -> DecisionEvent | None:
    return await send_command(
        settings,
        ControlCommand(
            command_id=uuid.uuid4().hex,
            deployment="fraud",
            action=action,
            issued_by="chaos",
            **fields,
        ),
        timeout_s=30,
    )


SCENARIOS: dict[str, Callable[[ChaosEnv], Coroutine[Any, Any, ChaosResult]]] = {
    "worker-kill": worker_kill,
    "rebalance": rebalance,
    "broker-restart": broker_restart,
    "controller-failover": controller_failover,
    "model-file": model_file,
}
