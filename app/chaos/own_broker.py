"""A broker of a fault scenario's own, on free ports (so a restart never touches anyone
else's), reusing the jars already fetched."""

from __future__ import annotations

import shutil
from pathlib import Path

from app.adapters import kafka_local
from app.adapters.kafka_local import BrokerConfig
from app.settings import Settings


def dedicated_broker(home: Path, settings: Settings) -> BrokerConfig:
    """A broker config of its own in ``home`` on free ports, reusing the already fetched jars
    of ``settings.home`` when there are any (a symlink), so nothing is downloaded again."""
    shared = (Path(settings.home) / "kafka" / "libs").resolve()
    libs = home / "kafka" / "libs"
    if (shared / ".fetched").is_file() and not libs.exists():
        libs.parent.mkdir(parents=True, exist_ok=True)
        libs.symlink_to(shared)
    port = kafka_local.free_port_pair()
    return BrokerConfig(home=home, port=port, controller_port=port + 1)


def remove_broker_home(config: BrokerConfig) -> None:
    kafka_local.stop(config)
    shutil.rmtree(config.data_dir, ignore_errors=True)
