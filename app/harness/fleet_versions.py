"""The fleet's hidden truth and the versions a training simulator publishes (``rollout fleet``).

Each deployment has a hidden true function of 6 float features (``x``, one float32 input):
a binary classifier (``no``/``yes``: the sign of a linear score plus noise), a 3-class
classifier (``a``/``b``/``c``: the arg-max of three linear scores plus noise) or a regressor
(a linear value plus noise). Traffic and ground truth are drawn from it.

A model version is a scikit-learn model trained on labels from a *corrupted* labelling
function (the true weights turned by an angle towards a random direction: a broken join, a
drifted feature), so that a small angle gives a good model and a large one a bad one, with
the sampling noise of any real training run; its quality is then *measured* with
onnxruntime on held-out data drawn from the truth, on the scale the controller judges by: a
classifier's accuracy, a regressor's ``1 - min(|error|, cap) / cap``. Before the run, each
deployment gets a pool of such models (:func:`model_pool`); the simulator picks from it the
model whose measured difference to the current production falls in the drawn class
(:func:`pick`). What counts at the end is the measured difference, not the draw.

The faulty versions are real artifacts too: bytes that are not a model (``broken``), a
model whose bytes were altered after their sha256 was taken (``tampered``), a model on 7
features (``incompatible``), and a model equal to production with a graph padded by a chain
of matrix products that changes no output but costs milliseconds per row (``slow``, 1.6-4.7
ms a row).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from skl2onnx import to_onnx
from sklearn.linear_model import LinearRegression, LogisticRegression

from app.harness.fleet_tally import Bands

FEATURES = 6
OPSET = {"": 17, "ai.onnx.ml": 3}
BINARY_LABELS = ("no", "yes")
MULTI_LABELS = ("a", "b", "c")
ERROR_CAP = 4.0  # regressors: the loss is min(|error|, cap) / cap
# Regressors: two values agree within this. Two models of equal quality (each turned by ~0.35
# rad, |w| = 3) differ by ~1.5 (one sd) on a request: at 0.5 nearly all pairs "disagreed".
TOLERANCE = 2.5
TRAIN_ROWS = 1500
HELD_OUT_ROWS = 6000
MAX_ANGLE = 1.4  # radians: the most corrupted labelling function in a pool
SLOW_WIDTH = 512
# 256 products of 512x512 per row: ~67 M multiply-adds, 1.6-4.7 ms a row on one core of this
# machine (64, ~0.8 ms, was under the latency guardrail's slack: "slow" must be slow for
# the policy, whose slack is the default 1 ms in the fleet, harness/fleet.py).
SLOW_LAYERS = 256


class Kind(StrEnum):
    BINARY = "binary"
    MULTICLASS = "multiclass"
    REGRESSOR = "regressor"


class Draw(StrEnum):
    """What the simulator means a version to be (its measured truth is what counts)."""

    BETTER = "better"
    EQUAL = "equal"
    WORSE_WITHIN = "worse_within"  # worse, within the margin
    WORSE_BEYOND = "worse_beyond"  # worse than the margin
    MUCH_WORSE = "much_worse"
    BROKEN = "broken"  # not a loadable model
    TAMPERED = "tampered"  # the bytes do not match the published sha256
    INCOMPATIBLE = "incompatible"  # another signature
    SLOW = "slow"  # equal outputs, a slower graph


# The default mix of a day's versions (weights, normalised when drawn).
DEFAULT_MIX: dict[Draw, float] = {
    Draw.BETTER: 0.15,
    Draw.EQUAL: 0.20,
    Draw.WORSE_WITHIN: 0.12,
    Draw.WORSE_BEYOND: 0.15,
    Draw.MUCH_WORSE: 0.10,
    Draw.BROKEN: 0.05,
    Draw.TAMPERED: 0.05,
    Draw.INCOMPATIBLE: 0.06,
    Draw.SLOW: 0.12,
}
QUALITY_DRAWS = (Draw.BETTER, Draw.EQUAL, Draw.WORSE_WITHIN, Draw.WORSE_BEYOND, Draw.MUCH_WORSE)


@dataclass(frozen=True)
class Truth:
    """A deployment's hidden true function."""

    kind: Kind
    weights: npt.NDArray[np.float64]  # (FEATURES,) or (FEATURES, 3)
    bias: float
    noise: float

    @property
    def labels(self) -> tuple[str, ...]:
        if self.kind is Kind.BINARY:
            return BINARY_LABELS
        return MULTI_LABELS if self.kind is Kind.MULTICLASS else ()

    def features(self, n: int, rng: np.random.Generator, width: int = FEATURES) -> Any:
        return rng.normal(0.0, 1.0, (n, width)).astype(np.float32)

    def outcome(self, x: npt.NDArray[Any], rng: np.random.Generator) -> npt.NDArray[Any]:
        """The truth for rows ``x``: class indices (classifiers) or values (a regressor)."""
        return _outcome(self.kind, self.weights, self.bias, self.noise, x, rng)


def _outcome(
    kind: Kind,
    weights: npt.NDArray[np.float64],
    bias: float,
    noise: float,
    x: npt.NDArray[Any],
    rng: np.random.Generator,
) -> npt.NDArray[Any]:
    score: npt.NDArray[Any] = x.astype(np.float64) @ weights + bias
    score = score + rng.normal(0.0, noise, score.shape)
    if kind is Kind.BINARY:
        return (score > 0).astype(np.int64)
    if kind is Kind.MULTICLASS:
        classes: npt.NDArray[Any] = np.argmax(score, axis=1).astype(np.int64)
        return classes
    return score


def make_truth(kind: Kind, seed: int) -> Truth:
    rng = np.random.default_rng(seed)
    if kind is Kind.MULTICLASS:
        return Truth(kind, rng.normal(0.0, 1.0, (FEATURES, 3)), 0.0, 0.5)
    weights = rng.normal(0.0, 1.0, FEATURES)
    weights *= 3.0 / np.linalg.norm(weights)
    if kind is Kind.BINARY:
        return Truth(kind, weights, float(rng.normal(0.0, 0.3)), 0.6)
    return Truth(kind, weights, 10.0, 1.0)


def _turned(weights: npt.NDArray[np.float64], angle: float, rng: np.random.Generator) -> Any:
    """``weights`` (each column) turned by ``angle`` towards a random orthogonal direction."""
    columns = weights.reshape(FEATURES, -1)
    out = np.empty_like(columns)
    for j in range(columns.shape[1]):
        w = columns[:, j]
        u = rng.normal(0.0, 1.0, FEATURES)
        u -= (u @ w) / (w @ w) * w
        u *= np.linalg.norm(w) / np.linalg.norm(u)
        out[:, j] = np.cos(angle) * w + np.sin(angle) * u
    return out.reshape(weights.shape)


@dataclass(frozen=True)
class Model:
    """One trained model: its ONNX bytes and its quality measured on held-out data."""

    onnx: bytes
    quality: float
    angle: float

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.onnx).hexdigest()


def train(truth: Truth, angle: float, seed: int, width: int = FEATURES) -> bytes:
    """A model of ``truth`` trained on labels from its function turned by ``angle``; on
    ``width`` features (another width makes an incompatible signature)."""
    rng = np.random.default_rng(seed)
    x = truth.features(TRAIN_ROWS, rng, width)
    weights = _turned(truth.weights, angle, rng)
    if width != FEATURES:
        weights = np.concatenate([weights, np.zeros((width - FEATURES, *weights.shape[1:]))])
    y = _outcome(truth.kind, weights, truth.bias, truth.noise, x, rng)
    if truth.kind is Kind.REGRESSOR:
        fitted = LinearRegression().fit(x, y)
        return _exported(truth.kind, width, fitted.coef_, np.atleast_1d(fitted.intercept_), seed)
    classifier = LogisticRegression(solver="newton-cholesky", max_iter=200).fit(x, y)
    coef, intercept = classifier.coef_, classifier.intercept_
    if truth.kind is Kind.BINARY:  # skl2onnx's layout for two classes: (-w, w), (-b, b)
        coef, intercept = np.concatenate([-coef, coef]), np.concatenate([-intercept, intercept])
    return _exported(truth.kind, width, coef, intercept, seed)


@functools.lru_cache(maxsize=8)
def _template(kind: Kind, width: int) -> bytes:
    """skl2onnx's graph for a model of ``kind`` on ``width`` features (converted once; each
    trained model is this graph with its own coefficients: the converter takes ~70 ms)."""
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 1.0, (60, width)).astype(np.float32)
    estimator: Any
    options: dict[int, Any] = {}
    if kind is Kind.REGRESSOR:
        estimator = LinearRegression().fit(x, x[:, 0])
    else:
        estimator = LogisticRegression().fit(x, np.arange(60) % (2 if kind is Kind.BINARY else 3))
        options = {id(estimator): {"zipmap": False}}
    serialized: bytes = to_onnx(
        estimator, x[:1], target_opset=OPSET, options=options
    ).SerializeToString()
    return serialized


def _exported(
    kind: Kind, width: int, coef: npt.NDArray[Any], intercept: npt.NDArray[Any], seed: int
) -> bytes:
    model = onnx.load_from_string(_template(kind, width))
    node = next(n for n in model.graph.node if n.op_type in ("LinearClassifier", "LinearRegressor"))
    for attribute in node.attribute:
        if attribute.name == "coefficients":
            attribute.floats[:] = np.asarray(coef, dtype=np.float32).reshape(-1).tolist()
        elif attribute.name == "intercepts":
            attribute.floats[:] = np.asarray(intercept, dtype=np.float32).reshape(-1).tolist()
    model.graph.name = f"fleet_{seed}"
    serialized: bytes = model.SerializeToString()
    return serialized


def quality(truth: Truth, onnx_bytes: bytes, x: npt.NDArray[Any], y: npt.NDArray[Any]) -> float:
    """The model's quality on held-out ``x`` with truth ``y``, run by onnxruntime: accuracy
    (classifiers) or ``1 - mean(min(|error|, cap)) / cap`` (regressor)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    first = session.run(None, {session.get_inputs()[0].name: x})[0]
    if truth.kind is Kind.REGRESSOR:
        errors = np.abs(np.asarray(first, dtype=np.float64).reshape(-1) - y)
        return float(1.0 - np.minimum(errors, ERROR_CAP).mean() / ERROR_CAP)
    return float((np.asarray(first).reshape(-1) == y).mean())


def held_out(truth: Truth, seed: int) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    rng = np.random.default_rng(seed)
    x = truth.features(HELD_OUT_ROWS, rng)
    return x, truth.outcome(x, rng)


@dataclass
class Pool:
    """A deployment's models, each measured on the same held-out data; ``used`` indices
    were published already (index 0 is version 1)."""

    truth: Truth
    seed: int
    x: npt.NDArray[Any]
    y: npt.NDArray[Any]
    models: list[Model] = field(default_factory=list)
    used: set[int] = field(default_factory=set)

    def grow(self, n: int) -> None:
        """``n`` more models at angles drawn over [0, MAX_ANGLE]."""
        rng = np.random.default_rng((self.seed, len(self.models)))
        for angle in rng.uniform(0.0, MAX_ANGLE, n).tolist():
            self._add(angle)

    def _add(self, angle: float) -> None:
        data = train(self.truth, angle, self.seed * 10_000 + len(self.models))
        self.models.append(Model(data, quality(self.truth, data, self.x, self.y), angle))


def model_pool(truth: Truth, size: int, seed: int) -> Pool:
    """``size`` models: the first, at a middling angle, is the deployment's version 1 (so
    that better and worse ones exist), the others at angles spread over [0, MAX_ANGLE]."""
    x, y = held_out(truth, seed + 7_919)
    pool = Pool(truth, seed, x, y, used={0})
    pool._add(0.35)
    pool.grow(size - 1)
    return pool


def interval(bands: Bands, draw: Draw) -> tuple[float, float]:
    """The (low, high] range of measured differences a quality draw stands for."""
    return {
        Draw.BETTER: (bands.equal, 1.0),
        Draw.EQUAL: (-bands.equal, bands.equal),
        Draw.WORSE_WITHIN: (-bands.margin, -bands.equal),
        Draw.WORSE_BEYOND: (-bands.much, -bands.margin),
        Draw.MUCH_WORSE: (-1.0, -bands.much),
    }[draw]


def pick(pool: Pool, production: float, draw: Draw, bands: Bands) -> int:
    """The unused model whose difference to ``production`` is nearest the middle of
    ``draw``'s interval (inside it when one is); marks it used. What counts in the end is
    the measured difference to the production the version faced, not the draw."""
    low, high = interval(bands, draw)
    target = (max(low, -0.3) + min(high, 0.1)) / 2

    def cost(i: int) -> tuple[bool, float]:
        d = pool.models[i].quality - production
        return (not low < d <= high, abs(d - target))

    free = [i for i in range(len(pool.models)) if i not in pool.used]
    if not free:
        pool.grow(8)
        free = [i for i in range(len(pool.models)) if i not in pool.used]
    best = min(free, key=cost)
    pool.used.add(best)
    return best


def broken_bytes(seed: int) -> bytes:
    """Bytes that are not an ONNX model."""
    return b"not a model: " + np.random.default_rng(seed).bytes(600)


def tampered(onnx_bytes: bytes) -> bytes:
    """The same model with one weight's bytes changed (after its sha256 was published)."""
    data = bytearray(onnx_bytes)
    data[len(data) // 2] ^= 0x55
    return bytes(data)


def incompatible(truth: Truth, seed: int) -> bytes:
    """A good model of ``truth`` on 7 features: a signature the deployment does not have."""
    return train(truth, 0.0, seed, width=FEATURES + 1)


def slow(onnx_bytes: bytes) -> bytes:
    """``onnx_bytes`` with its float output plus 0 x a chain of SLOW_LAYERS products of the
    input through a 512x512 matrix: the same outputs, milliseconds more per row."""
    model = onnx.load_from_string(onnx_bytes)
    graph = model.graph
    target = next(o for o in graph.output if o.type.tensor_type.elem_type == TensorProto.FLOAT)
    raw = f"{target.name}_unpadded"
    for node in graph.node:
        node.output[:] = [raw if name == target.name else name for name in node.output]
    rng = np.random.default_rng(0)
    graph.initializer.extend(
        [
            numpy_helper.from_array(
                rng.normal(0, 0.3, (FEATURES, SLOW_WIDTH)).astype(np.float32), "pad_in"
            ),
            numpy_helper.from_array(
                rng.normal(0, 1 / np.sqrt(SLOW_WIDTH), (SLOW_WIDTH, SLOW_WIDTH)).astype(np.float32),
                "pad_w",
            ),
            numpy_helper.from_array(np.zeros((1,), dtype=np.float32), "pad_zero"),
        ]
    )
    source = graph.input[0].name
    nodes = [helper.make_node("MatMul", [source, "pad_in"], ["pad_0"])]
    for i in range(SLOW_LAYERS):
        nodes.append(helper.make_node("MatMul", [f"pad_{i}", "pad_w"], [f"pad_m{i}"]))
        nodes.append(helper.make_node("Tanh", [f"pad_m{i}"], [f"pad_{i + 1}"]))
    nodes += [
        helper.make_node("ReduceSum", [f"pad_{SLOW_LAYERS}"], ["pad_sum"], keepdims=1),
        helper.make_node("Mul", ["pad_sum", "pad_zero"], ["pad_nothing"]),
        helper.make_node("Add", [raw, "pad_nothing"], [target.name]),
    ]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    serialized: bytes = model.SerializeToString()
    return serialized
