"""Convert a model object to ONNX: scikit-learn via skl2onnx, LightGBM/XGBoost via onnxmltools.

Classifiers give two outputs, ``label`` [-1] and ``probabilities`` [-1, n_classes] (no ZipMap);
regressors give ``variable`` [-1, 1]. `Original` wraps the source model so the parity check can ask
it the same questions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from converters.errors import UnsupportedModelError
from converters.inputs import TENSOR_INPUT, PreparedInputs
from converters.opsets import BOOST_OPSET, SKLEARN_OPSET
from converters.signature import normalize_batch_dim

LABEL, PROBABILITIES, VARIABLE = "label", "probabilities", "variable"


@dataclass
class Original:
    """The source model, asked for labels/probabilities (classifiers) or values (regressors)."""

    task: str
    predict: Callable[[Any], np.ndarray]
    predict_proba: Callable[[Any], np.ndarray] | None
    classes: list[int | str] | None
    converter: str


def kind_of(model: Any) -> str:
    module = type(model).__module__.split(".")[0]
    if module in ("lightgbm", "xgboost"):
        return module
    if module == "sklearn" or (hasattr(model, "fit") and hasattr(model, "predict")):
        return "sklearn"
    raise UnsupportedModelError(
        f"no converter for {type(model).__module__}.{type(model).__name__}; supported: "
        "scikit-learn estimators and pipelines, LightGBM, XGBoost, ONNX"
    )


def original_of(model: Any) -> Original:
    kind = kind_of(model)
    if kind == "lightgbm" and not hasattr(model, "predict_proba") and hasattr(model, "num_feature"):
        return _booster_original(model)
    from sklearn.base import is_classifier

    converter = "skl2onnx" if kind == "sklearn" else "onnxmltools"
    if is_classifier(model):
        proba = model.predict_proba if _has_proba(model) else None
        classes = [c.item() if hasattr(c, "item") else c for c in model.classes_]
        return Original("classification", model.predict, proba, classes, converter)
    return Original("regression", model.predict, None, None, converter)


def _has_proba(model: Any) -> bool:
    try:
        return hasattr(model, "predict_proba")
    except AttributeError:  # SVC(probability=False) raises from the property
        return False


def _booster_original(booster: Any) -> Original:
    objective = str(booster.dump_model().get("objective", "")).split(" ")[0]
    if objective in ("binary", "multiclass", "multiclassova"):

        def proba(x: Any) -> np.ndarray:
            p = np.asarray(booster.predict(x))
            return np.column_stack([1 - p, p]) if p.ndim == 1 else p

        n_classes = 2 if objective == "binary" else int(booster.dump_model()["num_class"])
        return Original(
            "classification",
            lambda x: proba(x).argmax(axis=1),
            proba,
            list(range(n_classes)),
            "onnxmltools",
        )
    return Original("regression", booster.predict, None, None, "onnxmltools")


def to_onnx(model: Any, inputs: PreparedInputs) -> onnx.ModelProto:
    kind = kind_of(model)
    if kind == "sklearn":
        proto = _sklearn_to_onnx(model, inputs)
    elif kind == "lightgbm":
        proto = _lightgbm_to_onnx(model, inputs)
    else:
        proto = _xgboost_to_onnx(model, inputs)
    normalize_batch_dim(proto)
    return proto


def _initial_types(inputs: PreparedInputs) -> list[tuple[str, Any]]:
    from skl2onnx.common.data_types import FloatTensorType, Int64TensorType, StringTensorType

    types: list[tuple[str, Any]] = []
    for name, value in inputs.feeds.items():
        if value.dtype == np.float32:
            types.append((name, FloatTensorType([None, value.shape[1]])))
        elif value.dtype == np.int64:
            types.append((name, Int64TensorType([None, value.shape[1]])))
        else:
            types.append((name, StringTensorType([None, value.shape[1]])))
    return types


def _sklearn_to_onnx(model: Any, inputs: PreparedInputs) -> onnx.ModelProto:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.exceptions import MissingShapeCalculator
    from sklearn.base import is_classifier

    final = model.steps[-1][1] if hasattr(model, "steps") else model
    options = {id(final): {"zipmap": False}} if is_classifier(final) else None
    try:
        proto = convert_sklearn(
            model, initial_types=_initial_types(inputs), target_opset=SKLEARN_OPSET, options=options
        )
    except (MissingShapeCalculator, RuntimeError, NotImplementedError) as exc:
        raise UnsupportedModelError(
            f"skl2onnx cannot convert {_describe(model)}: {str(exc).splitlines()[0]}. Supported: "
            "linear models, trees and ensembles (incl. HistGradientBoosting), SVM, kNN, "
            "scalers, encoders, ColumnTransformer and Pipeline"
        ) from exc
    return _rename_outputs(proto)


def _lightgbm_to_onnx(model: Any, inputs: PreparedInputs) -> onnx.ModelProto:
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    width = inputs.feeds[TENSOR_INPUT].shape[1]
    proto = onnxmltools.convert_lightgbm(
        model,
        initial_types=[(TENSOR_INPUT, FloatTensorType([None, width]))],
        target_opset=BOOST_OPSET,
        zipmap=False,
    )
    return _rename_outputs(proto)


def _xgboost_to_onnx(model: Any, inputs: PreparedInputs) -> onnx.ModelProto:
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    width = inputs.feeds[TENSOR_INPUT].shape[1]
    proto = onnxmltools.convert_xgboost(
        model,
        initial_types=[(TENSOR_INPUT, FloatTensorType([None, width]))],
        target_opset=BOOST_OPSET,
    )
    return _rename_outputs(proto)


def _rename_outputs(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Give outputs the names modelgate promises (label/probabilities, variable)."""
    outputs = list(proto.graph.output)
    if len(outputs) == 2:
        wanted = [LABEL, PROBABILITIES]
    elif len(outputs) == 1:
        wanted = [VARIABLE]
    else:
        return proto
    for value_info, new in zip(outputs, wanted, strict=True):
        old = value_info.name
        if old == new:
            continue
        for node in proto.graph.node:
            for names in (node.input, node.output):
                for i, name in enumerate(names):
                    if name == old:
                        names[i] = new
        value_info.name = new
    return proto


def _describe(model: Any) -> str:
    return f"{type(model).__module__}.{type(model).__name__}"
