"""Every Kafka topic Rollout uses, named once. ``topics.yaml`` declares how each is created
(partitions, configs) and is checked against this list (``tests/unit/test_topic_spec.py``);
no other module writes a topic's name.
"""

from __future__ import annotations

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
    # Beyond the design's list: the controller's evidence snapshots (``app.controller.analyst``).
    ANALYSIS = "deployments.analysis"
