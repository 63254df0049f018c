"""The situations ``rollout simulate`` replays: how requests, the two models and ground truth
behave, and the policy the rollout runs under.

A request is a transaction with a true class (fraud with probability ``prevalence``) and an
entity (its canary hash, uniform in [0, 1)). Production flags a fraud with probability
``recall`` and a legit one with ``1 - specificity``; the candidate likewise with its own
figures, which may depend on the entity and on how many requests have been compared
(drift); most requests are equally easy or hard for both (``shared``). Labels come for some
requests (all, a random share, only those production flagged, only frauds), after a delay
in requests. Pure data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from app.core.events import ModelOutput, ModelRef, SourceOffset
from app.core.policy import Policy
from app.core.topics import Topic, TopicNames

# What the simulated events carry: the two versions, where a request came from, and a
# model's output for a request it flags (True) or lets through (False).
V1 = ModelRef(name="sim", version="1", uri="sim/1/model.onnx", sha256="1" * 64)
V2 = ModelRef(name="sim", version="2", uri="sim/2/model.onnx", sha256="2" * 64)
SOURCE = SourceOffset(topic=TopicNames().name(Topic.REQUESTS), partition=0, offset=0)
OUTPUT = {
    True: ModelOutput.model_construct(label="fraud", scores=[0.2, 0.8]),
    False: ModelOutput.model_construct(label="legit", scores=[0.8, 0.2]),
}

Labels = Literal["all", "random", "flagged", "frauds", "none"]


@dataclass(frozen=True)
class Model:
    recall: float
    specificity: float
    error_rate: float = 0.0
    latency_ms: float = 0.02

    def accuracy(self, prevalence: float) -> float:
        return prevalence * self.recall + (1 - prevalence) * self.specificity


PRODUCTION = Model(recall=0.70, specificity=0.98)
PREVALENCE = 0.07

# A candidate by (compared so far, entity) -> its model.
CandidateOf = Callable[[int, float], Model]


def accuracy_shift(delta: float, base: Model = PRODUCTION) -> Model:
    """A candidate ``delta`` accuracy points from production (by specificity and recall
    moving together, so both classes share the change)."""
    return Model(
        recall=min(max(base.recall + delta, 0.0), 1.0),
        specificity=min(max(base.specificity + delta, 0.0), 1.0),
    )


def fixed(model: Model) -> CandidateOf:
    return lambda _i, _h: model


@dataclass(frozen=True)
class Situation:
    name: str
    candidate: CandidateOf
    truth: str  # "worse" (promotion would be false), "equal", "better"
    truly_worse_by: float  # accuracy points (negative: worse) or a label for the table
    policy: dict[str, Any] = field(default_factory=dict)
    labels: Labels = "all"
    label_share: float = 1.0
    delay: int = 0  # labels arrive this many compared requests later
    look_every: int = 50
    max_compared: int = 7_000
    replications: int = 80

    def policy_model(self) -> Policy:
        base = {
            "canary_steps": [0.05, 0.10, 0.25, 0.50, 1.0],
            "min_samples_per_step": 500,
            "non_inferiority_margin": 0.02,
            "feedback_horizon_s": 4_000,  # one compared request per simulated second
        }
        return Policy.model_validate(base | self.policy)


ACCURACY = {"metric": {"kind": "accuracy"}}
# The fraud deployment's default (app.training.train.fraud_policy; a unit test keeps them
# equal): per-class recall, fraud 5 points, legit 2.
FRAUD = {
    "metric": {
        "kind": "recall",
        "classes": ["legit", "fraud"],
        "class_margins": {"fraud": 0.05, "legit": 0.02},
    }
}
# An alternative, for comparison: expected cost, a missed fraud 10, a false alarm 1, margin
# 0.005 of the largest cost (not the default: see app.training.train).
COST = {
    "metric": {
        "kind": "expected_cost",
        "costs": {"fraud": {"legit": 10.0}, "legit": {"fraud": 1.0}},
    },
    "non_inferiority_margin": 0.005,
}


def _drift(i: int, _h: float) -> Model:
    return PRODUCTION if i < 2_000 else accuracy_shift(-0.10)


def _entities(_i: int, h: float) -> Model:
    # better on the first 10% of entities, worse on the rest: -4.2 points overall
    return accuracy_shift(+0.04) if h < 0.10 else accuracy_shift(-0.051)


SITUATIONS: list[Situation] = [
    Situation(
        "at the margin (-2 pts), labels at once",
        fixed(accuracy_shift(-0.02)),
        "worse",
        -2,
        ACCURACY,
        replications=400,
    ),
    Situation(
        "at the margin, looks after every record",
        fixed(accuracy_shift(-0.02)),
        "worse",
        -2,
        ACCURACY,
        look_every=1,
        max_compared=4_000,
        replications=200,
    ),
    Situation("-3 pts, labels at once", fixed(accuracy_shift(-0.03)), "worse", -3, ACCURACY),
    Situation(
        "-5 pts, every label 3,000 requests late",
        fixed(accuracy_shift(-0.05)),
        "worse",
        -5,
        ACCURACY,
        delay=3_000,
    ),
    Situation(
        "-5 pts, labels for a random 40%",
        fixed(accuracy_shift(-0.05)),
        "worse",
        -5,
        ACCURACY,
        labels="random",
        label_share=0.4,
    ),
    Situation(
        "-10 pts, labels only where production flagged",
        fixed(accuracy_shift(-0.10)),
        "worse",
        -10,
        ACCURACY,
        labels="flagged",
    ),
    Situation(
        "-10 pts, labels only for true frauds",
        fixed(accuracy_shift(-0.10)),
        "worse",
        -10,
        ACCURACY,
        labels="frauds",
    ),
    Situation(
        "equal 2,000 pairs, then -10 pts (steps of 1,000)",
        _drift,
        "worse",
        -10,
        ACCURACY | {"min_samples_per_step": 1_000},
    ),
    Situation(
        "better on 10% of entities, worse on the rest (-4.2)",
        _entities,
        "worse",
        -4.2,
        ACCURACY,
    ),
    Situation(
        "error rate 2% against a 1% guardrail",
        fixed(Model(PRODUCTION.recall, PRODUCTION.specificity, error_rate=0.02)),
        "worse",
        0,
        ACCURACY,
    ),
    Situation(
        "latency 3x against a 2x guardrail",
        fixed(Model(PRODUCTION.recall, PRODUCTION.specificity, latency_ms=1.5)),
        "worse",
        0,
        ACCURACY,
    ),
    Situation(
        "never flags fraud, accuracy metric",
        fixed(Model(recall=0.0, specificity=1.0)),
        "worse",
        -2.9,
        ACCURACY,
    ),
    Situation(
        "never flags fraud, fraud default (per-class recall)",
        fixed(Model(recall=0.0, specificity=1.0)),
        "worse",
        -2.9,
        FRAUD,
    ),
    Situation(
        "never flags fraud, expected cost 10:1",
        fixed(Model(recall=0.0, specificity=1.0)),
        "worse",
        -2.9,
        COST,
    ),
    Situation(
        "fraud recall -10 pts, fraud default (per-class recall)",
        fixed(Model(recall=PRODUCTION.recall - 0.10, specificity=PRODUCTION.specificity)),
        "worse",
        -0.7,
        FRAUD,
    ),
    Situation(
        "equal, no labels at all",
        fixed(PRODUCTION),
        "equal",
        0,
        ACCURACY,
        labels="none",
    ),
    Situation("equal, labels at once", fixed(PRODUCTION), "equal", 0, ACCURACY),
    Situation(
        "equal, fraud default (per-class recall)",
        fixed(PRODUCTION),
        "equal",
        0,
        FRAUD,
        max_compared=30_000,
    ),
    Situation(
        "equal, expected cost 10:1", fixed(PRODUCTION), "equal", 0, COST, max_compared=30_000
    ),
    Situation(
        "equal, every label 3,000 requests late",
        fixed(PRODUCTION),
        "equal",
        0,
        ACCURACY,
        delay=3_000,
    ),
    Situation(
        "+2 pts, labels 3,000 late",
        fixed(accuracy_shift(+0.02)),
        "better",
        2,
        ACCURACY,
        delay=3_000,
    ),
]
