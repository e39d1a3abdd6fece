"""A model slow on purpose, so that a test can reach its capacity without a load generator
faster than the machine: an ONNX graph of `layers` dense tanh layers that all share one weight
(a small file, a known amount of work per row), served through the ONNX pass-through converter."""

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


def slow_artifact(folder: Path, layers: int = 100) -> Path:
    """A verified artifact (model.onnx + manifest) of the slow model, under `folder`."""
    registry = LocalRegistry(folder / "registry")
    version_dir = folder / "registry" / "slow" / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(slow_onnx(layers), version_dir / "model.onnx")
    result = convert_uri(registry, "models:/slow/1", ConvertOptions(out=folder / "artifacts"))
    return result.path.resolve()
