"""A model slow on purpose, so that a test can reach its capacity without a load generator
faster than the machine, served through the ONNX pass-through converter. Two kinds:

- `slow_onnx`: `layers` dense tanh layers that all share one weight (a small file). Each of its
  thousands of nodes costs ONNX Runtime a few microseconds whatever the batch, so a call has a
  large fixed cost (about 40 ms at 4,800 layers) and larger batches answer more rows a second;
- `row_bound_onnx`: `layers` element-wise sines over a row widened to `width` values, so that
  a call costs the same per row at any batch size (a sine costs far more than its node, and
  no weight is reread):
  a batch of 1 row and one of 32 answer as many rows a second. Where a test's claim is about
  capacity, this one keeps the batch size out of it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from converters.local_registry import LocalRegistry
from converters.pipeline import ConvertOptions, convert_uri

FEATURES = 30


def slow_onnx(layers: int, width: int = 512, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(
            (rng.standard_normal((FEATURES, width)) / FEATURES**0.5).astype(np.float32), "w_in"
        ),
        numpy_helper.from_array(
            (rng.standard_normal((width, width)) / width**0.5).astype(np.float32), "w"
        ),
        numpy_helper.from_array(
            (rng.standard_normal((width, 1)) / width**0.5).astype(np.float32), "w_out"
        ),
    ]
    nodes = [helper.make_node("MatMul", ["input", "w_in"], ["h0"])]
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [f"h{i}", "w"], [f"m{i}"]))
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [f"h{i + 1}"]))
    nodes.append(helper.make_node("MatMul", [f"h{layers}", "w_out"], ["variable"]))
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, FEATURES])],
        [helper.make_tensor_value_info("variable", TensorProto.FLOAT, [None, 1])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def row_bound_onnx(layers: int, width: int = 8192, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    widen = (rng.standard_normal((FEATURES, width)) / FEATURES**0.5).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["input", "w_in"], ["h0"])]
    for i in range(layers):
        nodes.append(helper.make_node("Sin", [f"h{i}"], [f"h{i + 1}"]))
    nodes.append(helper.make_node("ReduceMean", [f"h{layers}"], ["variable"], axes=[1], keepdims=1))
    graph = helper.make_graph(
        nodes,
        "row_bound",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, FEATURES])],
        [helper.make_tensor_value_info("variable", TensorProto.FLOAT, [None, 1])],
        [numpy_helper.from_array(widen, "w_in")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def slow_artifact(folder: Path, layers: int = 100, row_bound: bool = False) -> Path:
    """A verified artifact (model.onnx + manifest) of the slow model (`row_bound_onnx` with
    `row_bound`), under `folder`."""
    registry = LocalRegistry(folder / "registry")
    version_dir = folder / "registry" / "slow" / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    model = row_bound_onnx(layers) if row_bound else slow_onnx(layers)
    onnx.save(model, version_dir / "model.onnx")
    result = convert_uri(registry, "models:/slow/1", ConvertOptions(out=folder / "artifacts"))
    return result.path.resolve()
