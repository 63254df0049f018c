"""Event contracts: every record Rollout reads or writes on Kafka.

Field names follow ``docs/contracts.md`` and are part of the wire contract. Each event is
a frozen pydantic v2 model; ``encode`` and ``decode`` are the one symmetric pair of
codecs (orjson, UTF-8) used by every adapter. ``decode`` raises
``pydantic.ValidationError`` (a ``ValueError``) for anything that is not a valid
event of the asked type, so callers can turn it into a reason.

Times are epoch milliseconds.
"""

from __future__ import annotations

import math
import time
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from app.core.manifest import ModelManifest
from app.core.policy import Policy

MAX_REQUEST_ID_CHARS = 128
MAX_DEPLOYMENT_CHARS = 128


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Role(StrEnum):
    PRODUCTION = "production"
    CANDIDATE = "candidate"


class Mode(StrEnum):
    MANUAL = "manual"
    AUTOMATIC = "automatic"
    CANARY = "canary"
    SHADOW = "shadow"


class Phase(StrEnum):
    STABLE = "stable"
    PROGRESSING = "progressing"
    PAUSED = "paused"
    AWAITING_APPROVAL = "awaiting_approval"


class Action(StrEnum):
    DEPLOY = "deploy"
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    ABORT = "abort"
    PAUSE = "pause"
    RESUME = "resume"
    SET_WEIGHT = "set_weight"
    SET_MODE = "set_mode"
    CREATE = "create"  # a new deployment of the model store: its first state


class DecisionAction(StrEnum):
    """What a ``DecisionEvent`` records: an operator's command (the ``Action`` values), one
    of the controller's own steps, ``initialize`` (epoch 0), or ``unknown`` (a command too
    malformed to name a known action). The wire form is the value."""

    DEPLOY = "deploy"
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    ABORT = "abort"
    PAUSE = "pause"
    RESUME = "resume"
    SET_WEIGHT = "set_weight"
    SET_MODE = "set_mode"
    CREATE = "create"
    ADVANCE = "advance"
    RETIRE = "retire"
    AWAIT_APPROVAL = "await_approval"
    RECOMMEND = "recommend"
    INITIALIZE = "initialize"
    WATCH_ENDED = "watch_ended"  # the post-promotion watch passed: production stays
    # A published version's life (``ModelPublished`` on ``models.published``): received and
    # checked (accepted, or refused with the reason: malformed, unknown deployment, version
    # exists), its artifact fetched and validated (sha256, signature, smoke run) or rejected,
    # queued behind a rollout in flight, taken from the queue, or superseded by a newer one.
    PUBLISH = "publish"
    VALIDATE = "validate"
    QUEUE = "queue"
    DEQUEUE = "dequeue"
    SUPERSEDE = "supersede"
    UNKNOWN = "unknown"

    @classmethod
    def parse(cls, value: object) -> DecisionAction:
        """The action named by ``value``; ``unknown`` for anything else."""
        try:
            return cls(str(value))
        except ValueError:
            return cls.UNKNOWN


class DeadLetterCode(StrEnum):
    """Why a record was rejected. Stable strings: dashboards and tests match on them."""

    PAYLOAD_TOO_LARGE = "payload_too_large"
    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"
    INVALID_REQUEST = "invalid_request"  # JSON, but not an InferenceRequest (schema)
    MISSING_REQUEST_ID = "missing_request_id"
    UNKNOWN_DEPLOYMENT = "unknown_deployment"
    # The deployment exists (its state names a production version) but this worker could not
    # fetch or load that version (artifact missing, tampered, incompatible): never served.
    MODEL_UNAVAILABLE = "model_unavailable"
    MISSING_FEATURE = "missing_feature"
    EXTRA_FEATURE = "extra_feature"
    WRONG_TYPE = "wrong_type"
    NON_FINITE = "non_finite"
    WRONG_FEATURE_COUNT = "wrong_feature_count"
    MODEL_ERROR = "model_error"
    # Named, typed and multi-dimensional inputs (app.core.tensors).
    MISSING_INPUT = "missing_input"
    UNKNOWN_INPUT = "unknown_input"
    WRONG_SHAPE = "wrong_shape"
    # Open Inference Protocol v2 requests (app.core.oip).
    DATATYPE_MISMATCH = "datatype_mismatch"
    MISSING_DEPLOYMENT = "missing_deployment"


FeatureValue = float | int
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Features = dict[str, Any] | list[Any]


class InferenceRequest(_Event):
    """A request to score one record. ``features`` are checked against the model later
    (by name or in the model's order), so their values are left loose here."""

    request_id: Annotated[str, Field(min_length=1, max_length=MAX_REQUEST_ID_CHARS)]
    deployment: Annotated[str, Field(min_length=1, max_length=MAX_DEPLOYMENT_CHARS)]
    features: Features
    entity_key: str | None = None
    sent_at: int | None = None


class ModelIdentity(_Event):
    name: str
    version: str
    sha256: str


class ModelOutput(_Event):
    """A classifier's ``label`` and per-class ``scores`` (label order), or a regressor's
    ``values`` (one per target); the other fields are null."""

    label: str | None = None
    scores: list[float] | None = None
    values: list[float] | None = None


class OipOutput(_Event):
    """One output tensor of an Open Inference Protocol v2 inference response: ``data`` flat
    (row-major) and filling ``shape``."""

    name: str
    shape: list[int]
    datatype: str
    data: list[str] | list[float]


class Prediction(_Event):
    request_id: str
    deployment: str
    entity_key: str
    model: ModelIdentity
    role: Role
    mode: Mode
    epoch: int
    output: ModelOutput
    latency_ms: float
    served_at: int
    # In the deployment's audit sample (``app.core.audit``): the labels that the promotion
    # criterion and the post-promotion watch rest on. Label every audit request.
    audit: bool = False
    # The prediction of an Open Inference Protocol v2 request (``app.core.oip``) is also its
    # OIP inference response: these fields are written then, and absent from the prediction
    # of a native request.
    model_name: str | None = None  # the deployment
    model_version: str | None = None  # the version that served
    id: str | None = None  # the request's ``id`` (= ``request_id``)
    outputs: list[OipOutput] | None = None


class SourceOffset(_Event):
    topic: str
    partition: int
    offset: int


class ArmResult(_Event):
    version: str
    sha256: str
    output: ModelOutput | None
    # Wall time of the model call, per row: what the request waited for the model.
    latency_ms: float | None
    error: str | None = None
    # CPU time of the model call on the scoring thread, per row: the model's own cost, which
    # a stall of the host does not inflate (absent from records of older workers). The
    # latency guardrail's paired test compares these when both arms carry them.
    cpu_ms: float | None = None


class Comparison(_Event):
    request_id: str
    deployment: str
    mode: Mode
    epoch: int
    source: SourceOffset
    served_by: Role
    production: ArmResult
    candidate: ArmResult
    agree: bool
    score_delta: float
    audit: bool = False  # in the deployment's audit sample, as on the prediction
    # A post-promotion watch comparison: ``production`` is the production that served (the
    # version just promoted), ``candidate`` the previous production scored beside it (the
    # version an automatic rollback restores).
    watch: bool = False


class ShedReport(_Event):
    """Written to ``inference.comparisons`` (header ``kind: shed``) by a worker that skipped
    shadow scoring because it was behind: ``shed`` of the ``sampled`` requests of one batch
    that shadow mode would have compared were not."""

    deployment: str
    epoch: int
    worker_id: str
    sampled: int
    shed: int
    lag: int
    at: int


class Feedback(_Event):
    """The truth about one request: a ``label`` (classifiers) or the true ``values`` (a
    regressor, one per target; a bare number for a single target)."""

    request_id: str
    deployment: str
    label: str | None = None
    value: FiniteFloat | list[FiniteFloat] | None = None
    observed_at: int

    @model_validator(mode="after")
    def _one_truth(self) -> Feedback:
        if (self.label is None) == (self.value is None):
            raise ValueError("feedback carries exactly one of label (classifier) and value")
        return self

    @property
    def values(self) -> list[float] | None:
        """The true values as a list (``value`` may be a bare number), or None."""
        if self.value is None:
            return None
        return self.value if isinstance(self.value, list) else [self.value]


class DeadLetterError(_Event):
    code: DeadLetterCode
    message: str


PayloadEncoding = Literal["utf-8", "base64"]


class DeadLetter(_Event):
    error: DeadLetterError
    request_id: str | None = None  # when the record had a readable one
    source: SourceOffset
    payload: str
    payload_encoding: PayloadEncoding
    rejected_at: int


class ModelRef(_Event):
    name: str
    version: str
    uri: str  # relative to the model store
    sha256: str

    def identity(self) -> ModelIdentity:
        return ModelIdentity(name=self.name, version=self.version, sha256=self.sha256)


class ArtifactRef(_Event):
    """Where a version's ONNX bytes travel: on ``models.artifacts``, ``chunks`` records keyed
    ``<deployment>/<version>/<index>`` (index 0 .. chunks-1, each value at most 1 MiB of raw
    bytes), in the partition of the deployment. ``sha256`` and ``size`` are of the whole
    file; a reader joins the chunks in index order and refuses the artifact unless both
    match."""

    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    size: int = Field(ge=1)
    chunks: int = Field(ge=1)


class ModelPublished(_Event):
    """A new version of a deployment (``models.published``, keyed by deployment): written by
    ``rollout publish`` or by any training pipeline, after the artifact's chunks. The
    controller answers every one with ``DecisionEvent``s (``publish``, ``validate``, then the
    rollout's own), and starts the rollout its policy's ``on_publish`` names.

    ``manifest`` is the version's ``model.json`` (``app.core.manifest.ModelManifest``) as
    ``rollout publish`` generates it; a pipeline may leave it out and give ``labels``
    instead: the controller then derives it from the graph, as ``rollout publish`` does."""

    publish_id: Annotated[str, Field(min_length=1, max_length=128)]
    deployment: Annotated[str, Field(min_length=1, max_length=MAX_DEPLOYMENT_CHARS)]
    version: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    artifact: ArtifactRef
    manifest: ModelManifest | None = None
    labels: list[str] | None = None
    description: str = ""
    published_by: str = "unknown"
    published_at: int = Field(default_factory=now_ms)


class ControlCommand(_Event):
    command_id: Annotated[str, Field(min_length=1, max_length=128)]
    deployment: Annotated[str, Field(min_length=1, max_length=128)]
    action: Action
    version: str | None = None
    mode: Mode | None = None
    weight: float | None = None
    sample_rate: float | None = None
    policy: dict[str, Any] | None = None
    issued_by: str = "unknown"
    reason: str = ""
    issued_at: int = Field(default_factory=now_ms)

    @field_validator("weight", "sample_rate")
    @classmethod
    def _unit_interval(cls, value: float | None) -> float | None:
        if value is not None and (not math.isfinite(value) or not 0.0 <= value <= 1.0):
            raise ValueError("must be within [0, 1]")
        return value


class Watch(_Event):
    """A promotion under watch (``app.core.watch``): ``previous`` (the production it replaced)
    stays loaded and scores the audit sample beside the production until ``until``; the
    controller restores it if the new production degrades."""

    previous: ModelRef
    epoch: int  # the promotion's epoch: watch comparisons from it on count
    started_at: int
    until: int


class QueuedVersion(_Event):
    """A published version, validated and installed, waiting for the rollout in flight to
    end (the policy's ``on_publish.in_flight`` is ``queue``)."""

    model: ModelRef
    publish_id: str
    published_by: str = "unknown"
    queued_at: int


class DeploymentState(_Event):
    deployment: str
    epoch: int
    mode: Mode
    phase: Phase
    production: ModelRef
    candidate: ModelRef | None = None
    canary_weight: float = 0.0
    shadow_sample_rate: float = 1.0
    policy: Policy = Field(default_factory=Policy)
    history: list[ModelRef] = Field(default_factory=list)
    updated_at: int = Field(default_factory=now_ms)
    reason: str = ""
    watch: Watch | None = None  # set while a promotion is being watched
    # Published versions waiting for the rollout in flight to end, first out first; the
    # first starts when it ends (``app.core.publication``). Not written while empty.
    queue: list[QueuedVersion] = Field(default_factory=list)

    @model_serializer(mode="wrap")
    def _empty_queue_unwritten(self, handler: SerializerFunctionWrapHandler) -> Any:
        # States without a queue stay byte for byte what they were before the queue existed,
        # so readers built before it still read them.
        data = handler(self)
        if isinstance(data, dict) and not self.queue:
            data.pop("queue", None)
        return data


class StateSummary(_Event):
    mode: Mode
    phase: Phase
    weight: float


class Evidence(_Event):
    samples: dict[str, int] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    tests: dict[str, Any] = Field(default_factory=dict)


class DecisionEvent(_Event):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    deployment: str
    epoch: int
    action: DecisionAction
    command_id: str | None
    accepted: bool
    reason: str
    decided_by: str
    from_: StateSummary | None = Field(default=None, alias="from")
    to: StateSummary | None = None
    evidence: Evidence = Field(default_factory=Evidence)
    at: int = Field(default_factory=now_ms)

    @field_validator("action", mode="before")
    @classmethod
    def _known_action(cls, value: object) -> DecisionAction:
        return DecisionAction.parse(value)


E = TypeVar("E", bound=BaseModel)


def encode(event: BaseModel) -> bytes:
    """Serialise an event to its wire form (UTF-8 JSON, contract field names)."""
    return orjson.dumps(event.model_dump(mode="json", by_alias=True))


def decode(kind: type[E], data: bytes | str) -> E:
    """Parse the wire form of ``kind``; raises ``pydantic.ValidationError`` on a bad record."""
    return kind.model_validate_json(data)
