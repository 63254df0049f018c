"""The Apache Kafka runtime for the local broker: its jars, fetched once from Maven Central
with ``mvn`` into a folder of ours (a marker file records the fetched version)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

KAFKA_VERSION = "4.1.1"
SCALA_VERSION = "2.13"
SLF4J_VERSION = "2.0.17"
LOG4J_VERSION = "2.24.3"


class FetchError(RuntimeError):
    """The jars could not be fetched (no ``mvn``, or it failed); the message says why."""


_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.rollout</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_{scala}</artifactId>
      <version>{kafka}</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId>
      <version>{slf4j}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j2-impl</artifactId><version>{log4j}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId><version>{log4j}</version></dependency>
  </dependencies>
</project>
"""


def fetch(libs: Path, build: Path, *, timeout: float = 900.0) -> Path:
    """Copy Kafka's runtime closure (plus slf4j2 → log4j2 logging) into ``libs`` with
    ``mvn dependency:copy-dependencies``, run in ``build``. A no-op when the marker file says
    this version was already fetched. Returns ``libs``; raises :class:`FetchError`."""
    marker = libs / ".fetched"
    if marker.is_file() and marker.read_text().strip() == KAFKA_VERSION:
        return libs
    if shutil.which("mvn") is None:
        raise FetchError("`mvn` is not on PATH; it is needed once to fetch the Kafka jars")
    build.mkdir(parents=True, exist_ok=True)
    (build / "pom.xml").write_text(
        _POM.format(
            scala=SCALA_VERSION, kafka=KAFKA_VERSION, slf4j=SLF4J_VERSION, log4j=LOG4J_VERSION
        )
    )
    shutil.rmtree(libs, ignore_errors=True)
    cmd = [
        "mvn", "-q", "-B", "dependency:copy-dependencies",
        "-DincludeScope=runtime", f"-DoutputDirectory={libs}",
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=build, capture_output=True, text=True, timeout=timeout, check=False
    )
    jar = libs / f"kafka_{SCALA_VERSION}-{KAFKA_VERSION}.jar"
    if proc.returncode != 0 or not jar.is_file():
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise FetchError(f"fetching Kafka {KAFKA_VERSION} jars failed:\n{tail}")
    marker.write_text(KAFKA_VERSION + "\n")
    return libs
