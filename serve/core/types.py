"""Transport-neutral inference types: what the REST and gRPC adapters decode into and encode
from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Parameters = dict[str, Any]
#: ONNX Runtime's inputs or outputs: tensors by name (a batch's, or one request's).
Feeds = dict[str, np.ndarray]


@dataclass
class Tensor:
    """A named tensor. `array` has the declared shape; BYTES tensors are object arrays of bytes."""

    name: str
    datatype: str
    array: np.ndarray
    parameters: Parameters = field(default_factory=dict)
    finite: bool = False  # known to hold no NaN or infinity (it came as JSON)

    @property
    def shape(self) -> list[int]:
        return list(self.array.shape)


@dataclass
class RequestedOutput:
    name: str
    binary: bool | None = None  # None: follow the request-level default


@dataclass
class InferRequest:
    model: str
    version: str | None
    inputs: list[Tensor]
    id: str = ""
    parameters: Parameters = field(default_factory=dict)
    outputs: list[RequestedOutput] | None = None
    binary_output: bool = False  # request-level `binary_data_output`
    protocol: str = "http"  # "http" or "grpc", for metrics
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names; sticky keys


@dataclass
class InferResponse:
    model: str
    version: str
    outputs: list[Tensor]
    id: str = ""
    parameters: Parameters = field(default_factory=dict)
    binary: dict[str, bool] = field(default_factory=dict)  # output name -> as binary (absent: no)
