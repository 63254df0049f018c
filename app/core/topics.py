"""Every Kafka topic Rollout uses, named once. ``topics.yaml`` declares how each is created
(partitions, configs) and is checked against this list (``tests/unit/test_topic_spec.py``);
no other module writes a topic's name. ``Topic`` is the logical name; :class:`TopicNames`
resolves it to the cluster's name (with ``ROLLOUT_TOPIC_PREFIX``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class Topic(StrEnum):
    # The data plane: requests in; predictions, paired comparisons, dead letters out; ground truth.
    REQUESTS = "inference.requests"
    PREDICTIONS = "inference.predictions"
    COMPARISONS = "inference.comparisons"
    DLQ = "inference.dlq"
    FEEDBACK = "inference.feedback"
    # The control plane, keyed by deployment and co-partitioned.
    CONTROL = "deployments.control"
    STATE = "deployments.state"
    EVENTS = "deployments.events"
    # Beyond the design's list: the controller's evidence snapshots
    # (``app.controller.partition_snapshot``).
    ANALYSIS = "deployments.analysis"
    # Continuous deployment: a training pipeline publishes a version (``ModelPublished``, keyed
    # by deployment, co-partitioned with the control plane) and its ONNX bytes (chunks on a
    # compacted topic, so no host needs shared files).
    PUBLISHED = "models.published"
    ARTIFACTS = "models.artifacts"


# Kafka's legal topic characters; a name is at most 249 of them, and the longest logical
# name above leaves 200 for the prefix.
TOPIC_PREFIX_PATTERN = r"^[A-Za-z0-9._-]{0,200}$"
_PREFIX = re.compile(TOPIC_PREFIX_PATTERN)


@dataclass(frozen=True)
class TopicNames:
    """The one resolver from a logical :class:`Topic` to the name a client hands to Kafka:
    ``prefix`` + the logical name (``ROLLOUT_TOPIC_PREFIX``, e.g. ``staging.``, so several
    environments share one cluster); consumer groups and transactional ids take the same
    prefix (:meth:`scoped`). ``Settings.topics`` builds it; every Kafka call goes
    through :meth:`name` (``tests/unit/test_topic_names.py`` checks that), and a record's
    ``topic`` maps back with :meth:`logical`."""

    prefix: str = ""

    def __post_init__(self) -> None:
        if not _PREFIX.match(self.prefix):
            raise ValueError(
                f"topic prefix {self.prefix!r}: at most 200 of the characters A-Z a-z 0-9 . _ -"
            )

    def name(self, topic: Topic) -> str:
        return self.declared(topic.value)

    def declared(self, name: str) -> str:
        """The cluster name of a topic a file declares by its logical name (``topics.yaml``,
        ``acls.yaml``)."""
        return self.prefix + name

    def scoped(self, name: str) -> str:
        """The cluster name of a consumer group or transactional id: the same prefix, so that
        two environments' workers and controllers never join each other's groups nor fence
        each other's transactions."""
        return self.prefix + name

    def logical(self, name: str) -> Topic | None:
        """The logical topic a cluster name stands for here (None: not one of ours, e.g.
        another environment's)."""
        if not name.startswith(self.prefix):
            return None
        try:
            return Topic(name[len(self.prefix) :])
        except ValueError:
            return None
