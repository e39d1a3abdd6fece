"""Tensor signatures in Open Inference Protocol terms, and the table between protocol datatypes
and numpy dtypes. Read by the serving path (validation, codecs), so it needs no ONNX tooling;
reading a signature from an ONNX graph is converters/signature.py."""

from __future__ import annotations

from functools import cached_property

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

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
