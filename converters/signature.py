"""Tensor signatures in Open Inference Protocol terms, and the datatype tables between
protocol names, numpy dtypes and ONNX element types."""

from __future__ import annotations

from functools import cached_property

import numpy as np
import onnx
from pydantic import BaseModel, ConfigDict, Field

from converters.errors import UnsupportedModelError

#: Protocol datatype -> numpy dtype. BYTES tensors are numpy object arrays of bytes/str.
DATATYPE_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}

NUMPY_TO_DATATYPE: dict[np.dtype, str] = {v: k for k, v in DATATYPE_TO_NUMPY.items()}

ONNX_ELEM_TO_DATATYPE: dict[int, str] = {
    onnx.TensorProto.BOOL: "BOOL",
    onnx.TensorProto.UINT8: "UINT8",
    onnx.TensorProto.UINT16: "UINT16",
    onnx.TensorProto.UINT32: "UINT32",
    onnx.TensorProto.UINT64: "UINT64",
    onnx.TensorProto.INT8: "INT8",
    onnx.TensorProto.INT16: "INT16",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.FLOAT16: "FP16",
    onnx.TensorProto.FLOAT: "FP32",
    onnx.TensorProto.DOUBLE: "FP64",
    onnx.TensorProto.STRING: "BYTES",
}

BATCH_DIM = "batch"
_SUPPORTED = set(ONNX_ELEM_TO_DATATYPE.values())


class TensorSpec(BaseModel):
    """One named tensor: protocol datatype and shape, -1 for a dimension of any size."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Tensor name, as the ONNX graph and the protocol call it.")
    datatype: str = Field(description="Open Inference Protocol datatype, e.g. FP32, INT64, BYTES.")
    shape: list[int] = Field(description="Dimensions; -1 where any size is accepted.")

    @property
    def numpy_dtype(self) -> np.dtype:
        return DATATYPE_TO_NUMPY[self.datatype]


class Signature(BaseModel):
    """The inputs a model takes and the outputs it gives."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def input(self, name: str) -> TensorSpec | None:
        return self._inputs.get(name)

    def output(self, name: str) -> TensorSpec | None:
        return self._outputs.get(name)

    # Looked up at every request (validation, the response): by name, built once.
    @cached_property
    def _inputs(self) -> dict[str, TensorSpec]:
        return {t.name: t for t in self.inputs}

    @cached_property
    def _outputs(self) -> dict[str, TensorSpec]:
        return {t.name: t for t in self.outputs}


def _spec_of(value_info: onnx.ValueInfoProto) -> TensorSpec:
    if value_info.type.WhichOneof("value") != "tensor_type":
        raise UnsupportedModelError(
            f"graph input/output {value_info.name!r} is a "
            f"{value_info.type.WhichOneof('value')}, not a tensor; the inference protocol carries "
            "tensors only (for skl2onnx classifiers, convert with zipmap=False)"
        )
    tensor_type = value_info.type.tensor_type
    if tensor_type.elem_type not in ONNX_ELEM_TO_DATATYPE:
        raise UnsupportedModelError(
            f"tensor {value_info.name!r} has ONNX element type "
            f"{onnx.TensorProto.DataType.Name(tensor_type.elem_type)}, which the inference "
            f"protocol cannot carry; supported: {', '.join(sorted(_SUPPORTED))}"
        )
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]
    return TensorSpec(
        name=value_info.name,
        datatype=ONNX_ELEM_TO_DATATYPE[tensor_type.elem_type],
        shape=dims,
    )


def signature_of(model: onnx.ModelProto) -> Signature:
    """Read the signature of an ONNX graph (after `normalize_batch_dim`)."""
    initializers = {i.name for i in model.graph.initializer}
    inputs = [_spec_of(v) for v in model.graph.input if v.name not in initializers]
    return Signature(inputs=inputs, outputs=[_spec_of(v) for v in model.graph.output])


def normalize_batch_dim(model: onnx.ModelProto) -> None:
    """Make the first dimension of every graph input and output the symbolic batch dimension.

    Converters disagree here (onnxmltools declares LightGBM's label as shape [1]); the serving path
    concatenates requests along the first axis, so every tensor must declare it as variable.
    """
    for value_info in [*model.graph.input, *model.graph.output]:
        dims = value_info.type.tensor_type.shape.dim
        if len(dims) == 0:
            continue
        dims[0].Clear()
        dims[0].dim_param = BATCH_DIM
