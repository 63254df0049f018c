"""How the aiokafka clients are configured (no broker needed)."""

import logging
import subprocess
import sys

import pytest
from aiokafka.errors import KafkaTimeoutError, NotEnoughReplicasError
from aiokafka.producer import sender

from app.adapters import kafka_clients
from app.settings import Settings


def test_the_concurrent_transactions_backoff_is_the_one_aiokafka_reads() -> None:
    # kafka_clients lowers aiokafka's fixed 20 ms wait after CONCURRENT_TRANSACTIONS; this
    # fails if an aiokafka upgrade stops reading that module global (the lever would be gone).
    handler = sender.AddPartitionsToTxnHandler.handle_response
    assert "BACKOFF_OVERRIDE" in handler.__code__.co_names
    assert sender.BACKOFF_OVERRIDE == kafka_clients.TXN_RETRY_BACKOFF_S < 0.02


async def test_consumers_hold_empty_fetches_only_briefly() -> None:
    settings = Settings(fetch_max_wait_ms=7)
    consumer = kafka_clients.reader(settings)
    assert consumer._fetch_max_wait_ms == 7
    grouped = kafka_clients.group_consumer(settings, "g", fetch_max_wait_ms=3)
    assert grouped._fetch_max_wait_ms == 3  # an explicit argument wins


def test_the_expected_not_enough_replicas_retry_is_not_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger(sender.__name__)
    with caplog.at_level(logging.INFO, logger=sender.__name__):
        log.warning(
            "Got error produce response on topic-partition %s, retrying. Error: %s",
            "t-0",
            NotEnoughReplicasError,
        )
        log.warning(
            "Got error produce response on topic-partition %s, retrying. Error: %s",
            "t-0",
            KafkaTimeoutError,
        )
    assert [r.getMessage().rsplit(": ", 1)[-1] for r in caplog.records] == [str(KafkaTimeoutError)]


def test_importing_the_clients_module_leaves_aiokafka_alone() -> None:
    # A fresh interpreter: this session's conftest has already configured aiokafka.
    probe = (
        "from aiokafka.producer import sender; import logging; before = sender.BACKOFF_OVERRIDE; "
        "import app.adapters.kafka_clients; "
        "assert sender.BACKOFF_OVERRIDE == before, sender.BACKOFF_OVERRIDE; "
        "assert not logging.getLogger(sender.__name__).filters"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_configure_aiokafka_sets_the_backoff_and_one_log_filter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = logging.getLogger(sender.__name__)
    monkeypatch.setattr(sender, "BACKOFF_OVERRIDE", 0.02)
    monkeypatch.setattr(log, "filters", [])
    kafka_clients.configure_aiokafka()
    kafka_clients.configure_aiokafka()  # twice: still one filter
    assert sender.BACKOFF_OVERRIDE == kafka_clients.TXN_RETRY_BACKOFF_S
    assert len(log.filters) == 1
    record = log.makeRecord(
        log.name, logging.WARNING, __file__, 0, "retrying: %s", (NotEnoughReplicasError,), None
    )
    assert log.filter(record) and record.levelno == logging.DEBUG


@pytest.mark.parametrize(
    ("setting", "compression"),
    [("zstd", "zstd"), ("lz4", "lz4"), ("none", None)],
)
async def test_transactional_producers_compress_as_the_settings_say(
    setting: str, compression: str | None
) -> None:
    settings = Settings(bootstrap_servers="127.0.0.1:1", output_compression=setting)
    producer = kafka_clients.transactional_producer(settings, "t")
    try:
        assert producer._compression_type == compression
        # A batch is built compressed (aiokafka refuses a codec whose library is missing).
        batch = producer.create_batch()
        assert batch.append(key=None, value=b'{"a":1}' * 100, timestamp=None) is not None
        built = batch._builder.build()
        assert (len(built) < 200) == (compression is not None)
    finally:
        producer._closed = True  # never started: nothing to close
