"""Reading a tensor signature (converters/spec.py) from an ONNX graph, and the table from ONNX
element types to protocol datatypes."""

from __future__ import annotations

import onnx

from converters.errors import UnsupportedModelError
from converters.spec import Signature, TensorSpec

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

#: The symbolic name of every tensor's first dimension: requests concatenate along it.
BATCH_DIM = "batch"
_SUPPORTED = set(ONNX_ELEM_TO_DATATYPE.values())


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
