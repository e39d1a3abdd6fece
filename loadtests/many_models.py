"""Many small models for the catalog's tests and benchmark, made fast: one tiny ONNX graph
(y = mean(x) + b) converted and verified once through the real pipeline, then copied as model
`m<i>` with its own bias b = i, each copy a complete artifact (model.onnx and a manifest naming
it, digests matching). A request of 30 values of 0.5 to `m<i>` must answer 0.5 + i: a wrong
model answers wrong."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from converters.artifacts import sha256_file
from converters.local_registry import LocalRegistry
from converters.manifest import MANIFEST_FILE, ONNX_FILE, read_manifest
from converters.pipeline import ConvertOptions, convert_uri

FEATURES = 30


def tiny_onnx(bias: float) -> onnx.ModelProto:
    weights = numpy_helper.from_array(np.full((FEATURES, 1), 1 / FEATURES, np.float32), "w")
    b = numpy_helper.from_array(np.array([bias], np.float32), "b")
    nodes = [
        helper.make_node("MatMul", ["input", "w"], ["s"]),
        helper.make_node("Add", ["s", "b"], ["variable"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, FEATURES])],
        [helper.make_tensor_value_info("variable", TensorProto.FLOAT, [None, 1])],
        [weights, b],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def base_artifact(folder: Path) -> Path:
    """model `m0`, through the converter: the manifest every copy starts from."""
    registry = LocalRegistry(folder / "registry")
    version_dir = folder / "registry" / "m0" / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(tiny_onnx(0.0), version_dir / ONNX_FILE)
    result = convert_uri(registry, "models:/m0/1", ConvertOptions(out=folder / "converted"))
    return result.path.resolve()


def write_model(into: Path, base: Path, index: int, version: str = "1") -> Path:
    """`m<index>` version `version` under `into`, answering 0.5 + index (+ 1000 for each
    version past the first, so a re-pointed model answers differently)."""
    name = f"m{index}"
    folder = into / name / version
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(tiny_onnx(index + 1000.0 * (int(version) - 1)), folder / ONNX_FILE)
    manifest = json.loads(read_manifest(base).model_dump_json())
    manifest |= {
        "name": name,
        "version": version,
        "source_uri": f"models:/{name}/{version}",
        "sha256": sha256_file(folder / ONNX_FILE),
    }
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    return folder


def copy_as(artifact: Path, into: Path, name: str) -> Path:
    """The artifact again as model `name` (the same graph: the same answers)."""
    folder = into / name / "1"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(artifact / ONNX_FILE, folder / ONNX_FILE)
    manifest = json.loads(read_manifest(artifact).model_dump_json())
    manifest |= {"name": name, "source_uri": f"models:/{name}/1"}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    return folder


def many_artifacts(into: Path, count: int, scratch: Path) -> None:
    base = base_artifact(scratch)
    for i in range(count):
        write_model(into, base, i)


def expected(index: int, version: str = "1") -> float:
    return 0.5 + index + 1000.0 * (int(version) - 1)
