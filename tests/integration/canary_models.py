"""Candidates for progressive delivery: small ONNX classifiers (30 features in; `label` and
`probabilities` out, as scikit-learn's converters name them), each fault a property of the graph
that shows only when it runs, never a flag in the replica:

- `good`: the stable model's own weights (a retrained version that learnt the same);
- `erroring`: the same answers, but a Gather whose index leaves its table for rows whose first
  feature is above 1.28 (about one row in ten of N(0, 1) inputs): ONNX Runtime fails the run;
- `slow`: the same answers, through a tower of identity matrix products (exact in float32);
- `disagreeing`: the output layer's sign flipped: every label the other way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from converters.local_registry import LocalRegistry
from converters.pipeline import ConvertOptions, convert_uri

FEATURES, WIDTH = 30, 256
#: Rows whose first feature is above this fail on the erroring candidate.
ERROR_ABOVE = 1.28
KINDS = ("stable", "good", "erroring", "slow", "disagreeing")


def classifier(kind: str, slow_layers: int = 2400) -> onnx.ModelProto:
    rng = np.random.default_rng(7)
    w_in = (rng.standard_normal((FEATURES, WIDTH)) / FEATURES**0.5).astype(np.float32)
    w_out = (rng.standard_normal((WIDTH, 1)) / WIDTH**0.5).astype(np.float32)
    if kind == "disagreeing":
        w_out = -w_out
    inits = [numpy_helper.from_array(w_in, "w_in"), numpy_helper.from_array(w_out, "w_out")]
    nodes = [
        helper.make_node("MatMul", ["input", "w_in"], ["m"]),
        helper.make_node("Tanh", ["m"], ["h0"]),
    ]
    hidden = "h0"
    if kind == "slow":
        inits.append(numpy_helper.from_array(np.eye(WIDTH, dtype=np.float32), "eye"))
        for i in range(slow_layers):
            nodes.append(helper.make_node("MatMul", [hidden, "eye"], [f"h{i + 1}"]))
            hidden = f"h{i + 1}"
    nodes.append(helper.make_node("MatMul", [hidden, "w_out"], ["logit"]))
    if kind == "erroring":
        # index 0 (a zero) for most rows; 1000 (outside the 2-entry table) above the bound
        inits += [
            numpy_helper.from_array(np.array([0.0, 0.0], np.float32), "table"),
            numpy_helper.from_array(np.array([0], np.int64), "first"),
            numpy_helper.from_array(np.array([1], np.int64), "one"),
            numpy_helper.from_array(np.array([1], np.int64), "axis1"),
            numpy_helper.from_array(np.array(ERROR_ABOVE, np.float32), "bound"),
            numpy_helper.from_array(np.array(1000, np.int64), "far"),
        ]
        nodes += [
            helper.make_node("Slice", ["input", "first", "one", "axis1"], ["x0"]),
            helper.make_node("Greater", ["x0", "bound"], ["above"]),
            helper.make_node("Cast", ["above"], ["above_i"], to=TensorProto.INT64),
            helper.make_node("Mul", ["above_i", "far"], ["index"]),
            helper.make_node("Gather", ["table", "index"], ["zero"], axis=0),
            helper.make_node("Add", ["logit", "zero"], ["logit_checked"]),
        ]
        logit = "logit_checked"
    else:
        logit = "logit"
    inits.append(numpy_helper.from_array(np.array(1.0, np.float32), "one_f"))
    inits.append(numpy_helper.from_array(np.array(0.5, np.float32), "half"))
    nodes += [
        helper.make_node("Sigmoid", [logit], ["p1"]),
        helper.make_node("Sub", ["one_f", "p1"], ["p0"]),
        helper.make_node("Concat", ["p0", "p1"], ["probabilities"], axis=1),
        helper.make_node("Greater", ["p1", "half"], ["positive"]),
        helper.make_node("Cast", ["positive"], ["label_2d"], to=TensorProto.INT64),
        helper.make_node("Squeeze", ["label_2d", "axis1"], ["label"]),
    ]
    if "axis1" not in {i.name for i in inits}:
        inits.append(numpy_helper.from_array(np.array([1], np.int64), "axis1"))
    graph = helper.make_graph(
        nodes,
        f"canary_{kind}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, FEATURES])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2]),
        ],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def canary_artifacts(folder: Path, model: str = "canary") -> dict[str, Path]:
    """Each kind as a version of `model` (1: stable, 2: good, …) converted to a verified
    artifact (the ONNX pass-through converter) under `folder`: kind -> artifact folder."""
    registry = LocalRegistry(folder / "registry")
    out = {}
    for number, kind in enumerate(KINDS, 1):
        version_dir = folder / "registry" / model / str(number)
        version_dir.mkdir(parents=True, exist_ok=True)
        onnx.save(classifier(kind), version_dir / "model.onnx")
        result = convert_uri(
            registry, f"models:/{model}/{number}", ConvertOptions(out=folder / "artifacts")
        )
        out[kind] = result.path.resolve()
    return out
