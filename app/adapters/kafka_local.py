"""A local single-node Kafka broker (KRaft, broker and controller in one JVM) for development
and tests.

Layout under ``<home>/kafka``::

    libs/           Kafka 4.1 runtime jars, fetched once with ``mvn`` (``app.adapters.kafka_jars``)
    data/           KRaft log dirs, formatted once (``--standalone``)
    server.properties, log4j2.properties, broker.log, broker.pid

Contracts:

* :func:`start` returns only once the broker answers a metadata request; it is idempotent (our
  live broker is reused), never starts a second broker when something else already answers on
  the port, and raises :class:`KafkaLocalError` with the tail of ``broker.log`` on failure.
* :func:`stop` ends only the broker this module started: the pidfile's process must have
  ``kafka.Kafka`` and our data dir on its command line.
* All functions are synchronous and safe to call from inside a running event loop.
* With ``BrokerConfig.scram`` set (``rollout kafka start --secure``), the broker's only client
  listener is ``SASL_PLAINTEXT`` with SCRAM: the user is created when the storage is formatted
  (``kafka-storage format --add-scram``), the broker talks to itself as that user, and every
  call here authenticates as it. ``server.properties`` then holds the password (mode 0600).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from app.adapters import kafka_jars
from app.adapters.kafka_broker_files import BrokerConfig as BrokerConfig
from app.adapters.kafka_broker_files import KafkaLocalError as KafkaLocalError
from app.adapters.kafka_broker_files import ScramUser as ScramUser
from app.adapters.kafka_broker_files import format_storage, jvm_base, write_configs

MAIN_CLASS = "kafka.Kafka"
_DATA_DIR_PROP = "-Drollout.kafka.data="

_T = TypeVar("_T")


@dataclass(frozen=True)
class BrokerStatus:
    """``running``: the broker answers on ``bootstrap``. ``managed``: it is the process in our
    pidfile (``pid``); an answering broker with ``managed=False`` was not started by us."""

    running: bool
    managed: bool
    pid: int | None
    bootstrap: str
    data_dir: Path
    log_file: Path


@dataclass(frozen=True)
class StartResult:
    """What :func:`start` did: ``started`` a new broker, found ours ``already_running``, or found
    an ``external`` broker (not ours) answering on the port and left it alone."""

    action: Literal["started", "already_running", "external"]
    status: BrokerStatus
    seconds: float


# --------------------------------------------------------------------------- jars


def fetch_jars(config: BrokerConfig, *, timeout: float = 900.0) -> Path:
    """The Kafka runtime in ``config.libs_dir`` (see :mod:`app.adapters.kafka_jars`)."""
    try:
        return kafka_jars.fetch(config.libs_dir, config.kafka_dir / "fetch", timeout=timeout)
    except kafka_jars.FetchError as exc:
        raise KafkaLocalError(str(exc)) from exc


# --------------------------------------------------------------------------- process helpers


def _read_pid(config: BrokerConfig) -> int | None:
    try:
        return int(config.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def _proc_state(pid: int) -> str | None:
    """The process's state letter from /proc (``Z`` for a zombie), or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[0]


def _cmdline(pid: int) -> list[str]:
    """The process's arguments; [] when it is gone or a zombie. A live process's cmdline reads
    empty for a moment while it execs, so an empty read is retried briefly."""
    for _ in range(20):
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return []
        if raw:
            return [part.decode(errors="replace") for part in raw.split(b"\0") if part]
        if _proc_state(pid) in (None, "Z", "X"):
            return []
        time.sleep(0.05)
    return []


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as dead; our own dead child is reaped)."""
    child = _CHILDREN.get(pid)
    if child is not None:
        return child.poll() is None
    return _proc_state(pid) not in (None, "Z", "X")


def _is_ours(config: BrokerConfig, pid: int) -> bool:
    """True when ``pid`` is alive and is the broker of ``config.data_dir`` (its command line has
    ``kafka.Kafka`` and our data-dir marker property)."""
    if not _alive(pid):
        return False
    args = _cmdline(pid)
    return MAIN_CLASS in args and f"{_DATA_DIR_PROP}{config.data_dir}" in args


def _find_ours(config: BrokerConfig) -> int | None:
    """The pid of the broker of ``config.data_dir``: the pidfile's, or else found by scanning
    /proc (then the pidfile is rewritten), so that a lost pidfile never orphans a broker."""
    pid = _read_pid(config)
    if pid is not None and _is_ours(config, pid):
        return pid
    marker = f"{_DATA_DIR_PROP}{config.data_dir}\0".encode()
    for entry in Path("/proc").iterdir():
        try:
            quick = entry.name.isdigit() and marker in (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if quick and _is_ours(config, int(entry.name)):
            config.pid_file.write_text(f"{entry.name}\n")
            return int(entry.name)
    config.pid_file.unlink(missing_ok=True)
    return None


def _port_open(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port_pair() -> int:
    """A port p such that p and p + 1 (a broker and its KRaft controller) are both free on
    127.0.0.1: for brokers of their own that tests and `rollout chaos` start."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port < 65535 and not _port_open(port + 1):
            return port
    raise RuntimeError("no free port pair")


def run_sync(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coro`` to completion on a fresh loop in a helper thread, so that it works inside a
    running event loop and leaves the calling thread's current loop untouched."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _metadata_ok(bootstrap: str, timeout_ms: int, security: dict[str, Any]) -> bool:
    from aiokafka.client import AIOKafkaClient  # type: ignore[import-untyped,unused-ignore]

    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=timeout_ms, **security)
    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        await client.bootstrap()
        return len(client.cluster.brokers()) > 0
    except Exception:
        return False
    finally:
        quiet.setLevel(level)
        await client.close()


def answers(
    bootstrap: str, *, timeout: float = 5.0, security: dict[str, Any] | None = None
) -> bool:
    """True when a Kafka broker at ``bootstrap`` answers a metadata request within ``timeout``
    (authenticating with ``security``, aiokafka keyword arguments, when given)."""
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    if host in ("127.0.0.1", "localhost") and not _port_open(int(port)):
        return False
    return run_sync(_metadata_ok(bootstrap, int(timeout * 1000), security or {}))


def _log_tail(config: BrokerConfig, lines: int = 40) -> str:
    try:
        text = config.log_file.read_text(errors="replace")
    except OSError:
        return "(no broker log)"
    return "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def _home_lock(config: BrokerConfig) -> Iterator[None]:
    config.kafka_dir.mkdir(parents=True, exist_ok=True)
    with (config.kafka_dir / ".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- public API


def status(config: BrokerConfig | None = None) -> BrokerStatus:
    """Report whether a broker answers on the configured port and whether it is ours."""
    config = config or BrokerConfig()
    pid = _find_ours(config)
    return BrokerStatus(
        running=answers(config.bootstrap, security=config.client_options()),
        managed=pid is not None,
        pid=pid,
        bootstrap=config.bootstrap,
        data_dir=config.data_dir,
        log_file=config.log_file,
    )


def start(
    config: BrokerConfig | None = None, *, fresh: bool = False, timeout: float = 90.0
) -> StartResult:
    """Start the local broker (fetching jars and formatting storage on first use) and return once
    it answers metadata requests, or raise :class:`KafkaLocalError` (with the log's tail) when it
    dies or does not answer within ``timeout`` seconds. ``fresh=True`` stops our broker if it runs
    and wipes the data dir first. Idempotent; never starts a second broker on a busy port.
    Concurrent callers on one home (e.g. parallel test sessions) are serialised by a file lock."""
    config = config or BrokerConfig()
    with _home_lock(config):
        return _start_locked(config, fresh=fresh, timeout=timeout)


def _start_locked(config: BrokerConfig, *, fresh: bool, timeout: float) -> StartResult:
    began = time.monotonic()
    if fresh:
        _stop_locked(config, timeout=30.0)
        shutil.rmtree(config.data_dir, ignore_errors=True)
    pid = _find_ours(config)
    if pid is not None:
        if _wait_answering(config, pid, timeout):
            return StartResult("already_running", status(config), time.monotonic() - began)
        raise KafkaLocalError(
            f"broker pid {pid} is running but does not answer on {config.bootstrap}:\n"
            + _log_tail(config)
        )
    if _port_open(config.port) or _port_open(config.controller_port):
        if answers(config.bootstrap, security=config.client_options()):
            return StartResult("external", status(config), time.monotonic() - began)
        raise KafkaLocalError(
            f"port {config.port} or {config.controller_port} is in use by something that is not"
            " a Kafka broker started by rollout"
        )
    fetch_jars(config)
    write_configs(config)
    format_storage(config)
    pid = _spawn(config)
    if not _wait_answering(config, pid, timeout):
        _kill(config, pid, grace=10.0)
        raise KafkaLocalError(
            f"the broker did not answer on {config.bootstrap} within {timeout:.0f}s; "
            f"log tail ({config.log_file}):\n{_log_tail(config)}"
        )
    return StartResult("started", status(config), time.monotonic() - began)


def stop(config: BrokerConfig | None = None, *, timeout: float = 30.0) -> bool:
    """Stop our broker (SIGTERM, then SIGKILL after ``timeout`` s) and remove the pidfile.
    Returns False when none of ours was running. Never signals a process whose command line is
    not the broker of our data dir."""
    config = config or BrokerConfig()
    with _home_lock(config):
        return _stop_locked(config, timeout=timeout)


def _stop_locked(config: BrokerConfig, *, timeout: float) -> bool:
    pid = _find_ours(config)
    if pid is None:
        return False
    _kill(config, pid, grace=timeout)
    config.pid_file.unlink(missing_ok=True)
    return True


def _spawn(config: BrokerConfig) -> int:
    if config.log_file.exists():
        config.log_file.replace(config.log_file.with_suffix(".log.1"))
    cmd = [*jvm_base(config), _DATA_DIR_PROP + str(config.data_dir), MAIN_CLASS]
    cmd.append(str(config.server_properties))
    with config.log_file.open("wb") as log:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=config.kafka_dir,
        )
    _CHILDREN[proc.pid] = proc  # keep a reference so it is not reported as leaked
    config.pid_file.write_text(f"{proc.pid}\n")
    return proc.pid


_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _wait_answering(config: BrokerConfig, pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            config.pid_file.unlink(missing_ok=True)
            child = _CHILDREN.pop(pid, None)
            code = child.returncode if child is not None else "?"
            time.sleep(0.5)  # let the log reach the disk
            raise KafkaLocalError(
                f"the broker (pid {pid}) exited with code {code}; log tail ({config.log_file}):\n"
                + _log_tail(config)
            )
        if _port_open(config.port) and answers(config.bootstrap, security=config.client_options()):
            return True
        time.sleep(0.25)
    return False


def _kill(config: BrokerConfig, pid: int, *, grace: float) -> None:
    if not _is_ours(config, pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    for _ in range(50):
        if not _alive(pid):
            return
        time.sleep(0.1)
