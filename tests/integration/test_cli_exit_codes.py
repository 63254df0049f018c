"""The real ``rollout`` CLI (a subprocess) exits with the documented code for each outcome
(``app.cli.failures``) and says why in one line on stderr; ``--json`` prints what scripts
read; ``history`` and ``explain`` show who decided and on what evidence. Authentication and
authorization refusals (exit 4) are in ``test_kafka_acls.py``, on a secured broker."""

from __future__ import annotations

import asyncio
import shutil
import socket
import uuid
from pathlib import Path

import orjson
import pytest

from app.adapters.control_client import send_command
from app.cli.failures import ExitCode
from app.core.events import Action, ControlCommand
from app.core.topics import Topic
from app.harness.processes import CONTROLLER_READY, RolloutProcess
from app.settings import Settings
from tests.builders import controller_process, running_workers
from tests.integration.control import cli

pytestmark = pytest.mark.kafka


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # nothing listens on it once the socket is closed


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    return lines[0]


@pytest.mark.parametrize(
    "args",
    [("status",), ("promote", "fraud"), ("history", "fraud"), ("topics", "apply")],
)
def test_an_unreachable_broker_is_exit_3_in_one_line(args: tuple[str, ...]) -> None:
    address = f"127.0.0.1:{closed_port()}"
    result = cli(address, *args)
    assert result.returncode == ExitCode.UNREACHABLE, result.stderr
    assert "unreachable" in one_line(result.stderr) and address in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("deploy", "fraud", "2"),  # --mode missing
        ("set-weight", "fraud", "1.5"),
        ("history", "fraud", "--since", "yesterday"),
        ("status", "--no-such-option"),
        ("deploy", "fraud", "2", "--mode", "canary", "--policy", "{not json"),
    ],
)
def test_a_usage_error_is_exit_64(kafka_bootstrap: str, args: tuple[str, ...]) -> None:
    result = cli(kafka_bootstrap, *args)
    assert result.returncode == ExitCode.USAGE, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr


def test_a_bad_setting_is_exit_64(kafka_bootstrap: str) -> None:
    result = cli(kafka_bootstrap, "status", env={"ROLLOUT_DASHBOARD_PORT": "eighty"})
    assert result.returncode == ExitCode.USAGE
    assert "dashboard_port" in one_line(result.stderr)


def test_no_controller_is_exit_2(kafka_bootstrap: str) -> None:
    """Before this module's controller starts (a deployment nobody serves: the controller
    that reads the command later rejects it, harmlessly)."""
    ghost = f"ghost-{uuid.uuid4().hex[:8]}"
    result = cli(kafka_bootstrap, "pause", ghost, "--wait", "2")
    assert result.returncode == ExitCode.NO_ANSWER, result.stderr
    assert "no answer" in one_line(result.stderr)


def test_a_rejected_command_is_exit_1_and_json_prints_the_decision(
    kafka_bootstrap: str, controller: RolloutProcess
) -> None:
    result = cli(kafka_bootstrap, "deploy", "fraud", "99", "--mode", "canary", "--json")
    assert result.returncode == ExitCode.REJECTED, result.stderr
    assert "rejected deploy fraud" in one_line(result.stderr)
    decision = orjson.loads(result.stdout)
    assert decision["accepted"] is False and decision["action"] == "deploy"

    missing = cli(kafka_bootstrap, "status", "no-such-deployment")
    assert missing.returncode == ExitCode.REJECTED
    one_line(missing.stderr)

    history = cli(kafka_bootstrap, "history", "fraud", "--since", "10m", "--json")
    assert history.returncode == ExitCode.OK, history.stderr
    decisions = orjson.loads(history.stdout)
    mine = [d for d in decisions if d["command_id"] == decision["command_id"]]
    assert len(mine) == 1 and mine[0]["decided_by"]  # who asked, as the command said
    table = cli(kafka_bootstrap, "history", "fraud")
    assert table.returncode == ExitCode.OK and "deploy" in table.stdout

    epoch = decisions[-1]["epoch"]
    explained = cli(kafka_bootstrap, "explain", "fraud", str(epoch), "--json")
    assert explained.returncode == ExitCode.OK, explained.stderr
    assert orjson.loads(explained.stdout)["epoch"] == epoch
    text = cli(kafka_bootstrap, "explain", "fraud", str(epoch))
    assert "samples" in text.stdout and "reason:" in text.stdout
    nowhere = cli(kafka_bootstrap, "explain", "fraud", "999999")
    assert nowhere.returncode == ExitCode.REJECTED
    assert "no decision" in one_line(nowhere.stderr)


async def test_a_create_for_a_deployment_no_store_holds_is_rejected_and_changes_nothing(
    kafka_bootstrap: str,
    controller: RolloutProcess,
    settings_: Settings,
    model_store: Path,
    tmp_path: Path,
) -> None:
    """A ``create`` whose deployment has no files here nor on the artifacts topic (a stale or
    mistyped command) gets a rejecting answer; the controller keeps answering after it."""
    ghost = f"ghost-{uuid.uuid4().hex[:6]}"
    command = ControlCommand(
        command_id=uuid.uuid4().hex, deployment=ghost, action=Action.CREATE, issued_by="tests"
    )
    decision = await send_command(settings_, command, timeout_s=30)
    assert decision is not None and not decision.accepted
    assert decision.reason.startswith(f"cannot create {ghost!r}"), decision.reason
    after = cli(kafka_bootstrap, "status", ghost)
    assert after.returncode == ExitCode.REJECTED, after.stdout  # no state was made
    assert cli(kafka_bootstrap, "status", "fraud").returncode == ExitCode.OK
    again = await send_command(settings_, command.model_copy(update={"command_id": "again"}))
    assert again is not None and again.reason == decision.reason  # still answering
    assert controller.alive()

    # A folder whose deployment.yaml does not read: rejected with the reason, nothing made;
    # a controller and a worker started beside it serve the other deployments.
    broken = f"broken-{uuid.uuid4().hex[:6]}"
    (model_store / broken).mkdir()
    try:
        (model_store / broken / "deployment.yaml").write_text("name: [unclosed\n")
        refused = await send_command(
            settings_, command.model_copy(update={"command_id": "broken", "deployment": broken})
        )
        assert refused is not None and not refused.accepted
        assert refused.reason.startswith(f"cannot create {broken!r}"), refused.reason
        assert cli(kafka_bootstrap, "status", broken).returncode == ExitCode.REJECTED
        deploy = cli(kafka_bootstrap, "deploy", broken, "2", "--mode", "canary")
        assert deploy.returncode == ExitCode.REJECTED, deploy.stdout + deploy.stderr
        said = one_line(deploy.stderr)
        assert f"deployment {broken!r}: invalid {broken}/deployment.yaml" in said, said
        assert "Crashed" not in controller.log()
        env = {"ROLLOUT_MODEL_STORE": str(model_store), "ROLLOUT_HOME": str(tmp_path)}
        with running_workers(kafka_bootstrap, ["beside-broken"], tmp_path, **env) as (worker,):
            second = controller_process(kafka_bootstrap, tmp_path, "beside-broken", **env)
            second.start()
            try:
                await asyncio.to_thread(second.wait_for, CONTROLLER_READY)
                await asyncio.to_thread(worker.wait_for, "partitions assigned")
                await asyncio.to_thread(worker.wait_for, f"deployment {broken} not served")
                assert worker.alive() and second.alive()
                served = cli(kafka_bootstrap, "deploy", "fraud", "99", "--mode", "canary")
                assert served.returncode == ExitCode.REJECTED, served.stderr
                assert "Crashed" not in second.log() + controller.log()
            finally:
                second.terminate()
    finally:
        shutil.rmtree(model_store / broken)


def test_status_and_topics_print_json(kafka_bootstrap: str) -> None:
    applied = cli(kafka_bootstrap, "topics", "apply", "--json")
    assert applied.returncode == ExitCode.OK, applied.stderr
    assert Settings().topics.name(Topic.CONTROL) in orjson.loads(applied.stdout)["present"]
    status = cli(kafka_bootstrap, "status", "--json")
    assert status.returncode == ExitCode.OK
    assert "fraud" in orjson.loads(status.stdout)
