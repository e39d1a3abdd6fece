"""How a model's inputs look to the original model and to its ONNX twin.

Two layouts:
- **tensor**: one FP32 input named ``input`` of shape [-1, n_features] (numeric models);
- **columns**: one input per data-frame column, shape [-1, 1] (FP32 for floats, INT64 for
  integers, BYTES for strings), for pipelines that select columns by name (ColumnTransformer).
The original model is fed the same values the ONNX model sees (floats rounded through float32), so
the parity check measures the conversion, not float32 rounding of the inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from converters.errors import ConversionError

TENSOR_INPUT = "input"
GENERATED_ROWS = 256


@dataclass
class PreparedInputs:
    layout: str  # "tensor" or "columns"
    original: Any  # what the original model's predict takes
    feeds: dict[str, np.ndarray]  # what the ONNX session takes
    rows: int


def uses_columns(model: Any, sample: Any) -> bool:
    """Whether the model wants named per-column inputs rather than one numeric tensor."""
    if not hasattr(sample, "columns"):
        return False
    from pandas.api.types import is_numeric_dtype

    numeric = all(is_numeric_dtype(dtype) for dtype in sample.dtypes)
    return not numeric or _has_column_transformer(model)


def _has_column_transformer(model: Any) -> bool:
    from sklearn.compose import ColumnTransformer

    if isinstance(model, ColumnTransformer):
        return True
    steps = getattr(model, "steps", None) or []
    return any(_has_column_transformer(step) for _, step in steps)


def prepare(model: Any, sample: Any, name: str) -> PreparedInputs:
    if uses_columns(model, sample):
        return _prepare_columns(sample)
    array = np.asarray(sample, dtype=np.float64)
    if array.ndim != 2:
        raise ConversionError(f"{name}: sample rows must be 2-D, got shape {list(array.shape)}")
    expected = n_features(model)
    if expected is not None and array.shape[1] != expected:
        raise ConversionError(
            f"{name}: feature-count mismatch: the model takes {expected} features, "
            f"the sample rows have {array.shape[1]}"
        )
    x32 = array.astype(np.float32)
    return PreparedInputs("tensor", x32.astype(np.float64), {TENSOR_INPUT: x32}, len(x32))


def _prepare_columns(frame: Any) -> PreparedInputs:
    original = frame.copy()
    feeds: dict[str, np.ndarray] = {}
    for column in frame.columns:
        values = frame[column].to_numpy()
        if values.dtype.kind == "f":
            values32 = values.astype(np.float32)
            original[column] = values32.astype(np.float64)
            feeds[str(column)] = values32.reshape(-1, 1)
        elif values.dtype.kind in "iu":
            feeds[str(column)] = values.astype(np.int64).reshape(-1, 1)
        else:
            feeds[str(column)] = values.astype(str).astype(object).reshape(-1, 1)
    return PreparedInputs("columns", original, feeds, len(frame))


def n_features(model: Any) -> int | None:
    """How many features a numeric model takes, if it says."""
    if hasattr(model, "n_features_in_"):
        return int(model.n_features_in_)
    if hasattr(model, "num_feature"):  # lightgbm.Booster
        return int(model.num_feature())
    return None


def generated_sample(model: Any, name: str, seed: int = 0) -> np.ndarray:
    """Rows drawn from N(0, 1) when the registry holds no sample: a weaker check, said as such."""
    count = n_features(model)
    if count is None:
        raise ConversionError(
            f"{name}: no sample rows in the registry and the model does not say how many features "
            "it takes; log an input_example (MLflow) or add sample.json (folder registry)"
        )
    return np.random.default_rng(seed).normal(size=(GENERATED_ROWS, count))
