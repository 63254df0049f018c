"""Small models of every kind a team may bring, trained with scikit-learn on seeded synthetic
data and exported with skl2onnx (no downloads). Each builder writes ``<name>.onnx`` into a
folder and returns the path with the scikit-learn estimator and the data it was trained on,
so that tests can compare onnxruntime with scikit-learn and make requests and feedback from
the same data; ``rollout bench`` trains two of them at start (``app.bench.kinds``).

- ``iris_like``: a 3-class classifier (classes ``setosa``, ``versicolor``, ``virginica``)
  on one float32 input ``x`` of 4 columns, with ZipMap (skl2onnx's default).
- ``regressor``: a linear regressor on ``x`` (3 columns), one target.
- ``churn``: a pipeline with two named inputs, ``tenure`` (float32) and ``city`` (string,
  one-hot), classes 0/1 (int64, no ZipMap).
- ``digits``: a classifier over an 8x8 float32 ``image`` (a Reshape in front of the model).

``good=False`` makes a worse version of the same model (a classifier trained on shuffled
labels, the regressor on targets with noise added), so that ground truth favours or
disfavours a candidate (``tests/integration/test_model_kinds.py`` rolls out each kind both
ways, in canary and in shadow).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType, StringTensorType
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

OPSET = {"": 17, "ai.onnx.ml": 3}
IRIS_LABELS = ("setosa", "versicolor", "virginica")
CITIES = ("paris", "lyon", "nice", "lille")


@dataclass(frozen=True)
class Built:
    path: Path
    estimator: Any
    x: Any  # the features the estimator takes (array or DataFrame-like dict of arrays)
    y: npt.NDArray[Any]


def _iris_data(n: int, seed: int) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    rng = np.random.default_rng(seed)
    centers = np.array([[5.0, 3.4, 1.5, 0.2], [5.9, 2.8, 4.3, 1.3], [6.6, 3.0, 5.6, 2.0]])
    y = rng.integers(0, 3, n)
    x = (centers[y] + rng.normal(0, 0.35, (n, 4))).astype(np.float32)
    return x, np.array(IRIS_LABELS)[y]


def iris_like(folder: Path, name: str = "iris", *, good: bool = True, seed: int = 0) -> Built:
    x, y = _iris_data(600, seed)
    target = y if good else np.random.default_rng(seed + 1).permutation(y)
    model = LogisticRegression(max_iter=500).fit(x, target)
    onx = to_onnx(model, x[:1], target_opset=OPSET)
    return Built(_save(onx, folder, name), model, x, y)


def iris_requests(n: int, seed: int = 7) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    return _iris_data(n, seed)


def _regression_data(n: int, seed: int) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (n, 3)).astype(np.float32)
    y = 3.0 * x[:, 0] - 2.0 * x[:, 1] + 0.5 * x[:, 2] + 10.0 + rng.normal(0, 0.1, n)
    return x, y


def regressor(folder: Path, name: str = "price", *, good: bool = True, seed: int = 0) -> Built:
    x, y = _regression_data(400, seed)
    target = y if good else y + np.random.default_rng(seed + 1).normal(0, 4.0, len(y))
    model = LinearRegression().fit(x, target)
    onx = to_onnx(model, x[:1], target_opset=OPSET)
    return Built(_save(onx, folder, name), model, x, y)


def regression_requests(n: int, seed: int = 7) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    return _regression_data(n, seed)


def _churn_data(n: int, seed: int) -> tuple[npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any]]:
    rng = np.random.default_rng(seed)
    tenure = rng.uniform(0, 60, n).astype(np.float32)
    city = np.array(CITIES)[rng.integers(0, len(CITIES), n)]
    churn = ((tenure < 12) | (city == "lille")).astype(np.int64)
    return tenure, city, churn


def churn(folder: Path, name: str = "churn", *, good: bool = True, seed: int = 0) -> Built:
    tenure, city, y = _churn_data(500, seed)
    target = y if good else np.random.default_rng(seed + 1).permutation(y)
    columns = {"tenure": tenure.reshape(-1, 1), "city": city.reshape(-1, 1)}
    frame = np.empty((len(tenure), 2), dtype=object)
    frame[:, 0], frame[:, 1] = tenure, city
    model = Pipeline(
        [
            (
                "prep",
                ColumnTransformer(
                    [
                        ("num", "passthrough", [0]),
                        ("cat", OneHotEncoder(handle_unknown="ignore"), [1]),
                    ]
                ),
            ),
            ("clf", LogisticRegression(max_iter=500)),
        ]
    ).fit(frame, target)
    onx = to_onnx(
        model,
        initial_types=[
            ("tenure", FloatTensorType([None, 1])),
            ("city", StringTensorType([None, 1])),
        ],
        target_opset=OPSET,
        options={id(model): {"zipmap": False}},
    )
    return Built(_save(onx, folder, name), model, columns, y)


def churn_requests(
    n: int, seed: int = 7
) -> tuple[npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any]]:
    return _churn_data(n, seed)


def _digits_data(n: int, seed: int) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """8x8 images: a bright vertical bar (class 0), horizontal bar (1) or diagonal (2)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    images = rng.uniform(0, 3, (n, 8, 8)).astype(np.float32)
    for i, label in enumerate(y):
        k = rng.integers(1, 7)
        if label == 0:
            images[i, :, k] += 10
        elif label == 1:
            images[i, k, :] += 10
        else:
            images[i, np.arange(8), np.arange(8)] += 10
    return images, y


def digits(folder: Path, name: str = "digits", *, good: bool = True, seed: int = 0) -> Built:
    images, y = _digits_data(600, seed)
    target = y if good else np.random.default_rng(seed + 1).permutation(y)
    flat = images.reshape(len(images), 64)
    model = LogisticRegression(max_iter=1000).fit(flat, target)
    inner = to_onnx(model, flat[:1], target_opset=OPSET, options={id(model): {"zipmap": False}})
    inner_input = inner.graph.input[0].name
    reshape = helper.make_model(
        helper.make_graph(
            [helper.make_node("Reshape", ["image", "flat_shape"], ["flat"])],
            "reshape",
            [helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, 8, 8])],
            [helper.make_tensor_value_info("flat", TensorProto.FLOAT, [None, 64])],
            [helper.make_tensor("flat_shape", TensorProto.INT64, [2], [-1, 64])],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
        ir_version=inner.ir_version,
    )
    merged = onnx.compose.merge_models(reshape, inner, io_map=[("flat", inner_input)])
    return Built(_save(merged, folder, name), model, images, y)


def digits_requests(n: int, seed: int = 7) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    return _digits_data(n, seed)


def _save(model: Any, folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.onnx"
    path.write_bytes(model.SerializeToString())
    return path
