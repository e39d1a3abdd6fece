"""gRPC adapter: `inference.GRPCInferenceService` messages <-> the data plane's calls.

Outputs always travel as `raw_output_contents` (as Triton answers), inputs as either
`raw_input_contents` or typed `contents`. Errors set the gRPC status from serve/core/errors.py's
table.
"""

from __future__ import annotations

from typing import Any, TypeVar

import grpc
import numpy as np
from google.protobuf.message import DecodeError, Message

from serve.core import tensors
from serve.core.errors import ErrorCode, InferenceError, invalid
from serve.core.types import InferRequest, InferResponse, RequestedOutput, Tensor
from serve.protocol.rest_codec import Limits
from serve.protos import grpc_predict_v2_pb2 as pb

#: datatype -> the InferTensorContents field that carries it (FP16 travels raw only)
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


SERVICE = "inference.GRPCInferenceService"
#: Every RPC of the service: its request and response messages.
METHODS: dict[str, tuple[type[Message], type[Message]]] = {
    "ServerLive": (pb.ServerLiveRequest, pb.ServerLiveResponse),
    "ServerReady": (pb.ServerReadyRequest, pb.ServerReadyResponse),
    "ModelReady": (pb.ModelReadyRequest, pb.ModelReadyResponse),
    "ServerMetadata": (pb.ServerMetadataRequest, pb.ServerMetadataResponse),
    "ModelMetadata": (pb.ModelMetadataRequest, pb.ModelMetadataResponse),
    "ModelInfer": (pb.ModelInferRequest, pb.ModelInferResponse),
    "ModelStatistics": (pb.ModelStatisticsRequest, pb.ModelStatisticsResponse),
    "RepositoryIndex": (pb.RepositoryIndexRequest, pb.RepositoryIndexResponse),
}
M = TypeVar("M", bound=Message)


def add_servicer(servicer: Any, server: Any) -> None:
    """The gateway's entry in `grpc_options.grpc_servicer_functions`
    (`serve.grpc_service.add_servicer`): the service's RPCs, each handed its request as the
    bytes that came, which the Router decodes itself (`parse`). A message that cannot be
    decoded is then INVALID_ARGUMENT, saying so, rather than gRPC's UNKNOWN naming a Python
    class. (The generated `add_GRPCInferenceServiceServicer_to_server` works too: the
    Router's methods take messages as well.)"""
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name), response_serializer=response.SerializeToString
        )
        for name, (_, response) in METHODS.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)


def parse(kind: type[M], request: M | bytes) -> M:
    """The request message, from the bytes `add_servicer` hands over (or as it came)."""
    if not isinstance(request, bytes):
        return request
    try:
        return kind.FromString(request)
    except DecodeError as exc:
        raise invalid(f"the request is not a valid {kind.DESCRIPTOR.full_name}: {exc}") from None


def parameters_of(params: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        which = value.WhichOneof("parameter_choice")
        if which is not None:
            out[key] = getattr(value, which)
    return out


def check_size(message: pb.ModelInferRequest, limit: int) -> None:
    """The HTTP body limit, for gRPC messages too (in modelgate's own layer: Ray's process-wide
    gRPC limit, RAY_SERVE_GRPC_MAX_MESSAGE_SIZE, refuses them earlier where it is set)."""
    size = message.ByteSize()
    if size > limit:
        raise InferenceError(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"request message of {size} bytes is over the limit of {limit} bytes",
        )


def decode_infer(
    message: pb.ModelInferRequest, limits: Limits, headers: dict[str, str] | None = None
) -> InferRequest:
    raw = list(message.raw_input_contents)
    if raw and len(raw) != len(message.inputs):
        raise invalid(f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs")
    inputs = [
        _decode_input(t, raw[i] if raw else None, limits) for i, t in enumerate(message.inputs)
    ]
    if not inputs:
        raise invalid("request has no inputs")
    outputs = [RequestedOutput(o.name) for o in message.outputs] or None
    return InferRequest(
        model=message.model_name,
        version=message.model_version or None,
        inputs=inputs,
        id=message.id,
        parameters=parameters_of(message.parameters),
        outputs=outputs,
        headers=headers or {},
        protocol="grpc",
    )


def _decode_input(t: Any, raw: bytes | None, limits: Limits) -> Tensor:
    shape = list(t.shape)
    tensors.check_shape(t.name, shape, limits.max_elements)
    given = [f.name for f, _ in t.contents.ListFields()] if t.HasField("contents") else []
    if raw is not None:
        if given:
            raise invalid(f"input '{t.name}' has both raw_input_contents and contents.{given[0]}")
        return Tensor(t.name, t.datatype, tensors.from_raw(t.name, t.datatype, shape, raw))
    dtype = tensors.numpy_dtype(t.name, t.datatype)
    field = CONTENTS_FIELD.get(t.datatype)
    if field is None:
        raise invalid(f"input '{t.name}': {t.datatype} travels in raw_input_contents only")
    if any(name != field for name in given):
        raise invalid(
            f"input '{t.name}': {t.datatype} travels in contents.{field}; got "
            + ", ".join(f"contents.{name}" for name in given)
        )
    values = getattr(t.contents, field)
    expected = tensors.element_count(shape)
    if len(values) != expected:
        raise invalid(
            f"input '{t.name}': shape {shape} needs {expected} values; "
            f"got {len(values)} in contents.{field}"
        )
    if t.datatype == "BYTES":
        array = np.empty(expected, dtype=object)
        array[:] = list(values)
    else:
        try:  # INT8 300 (typed contents are 32 or 64 bits wide) is out of range, not wrapped
            array = np.asarray(values, dtype=dtype)
        except OverflowError as exc:
            raise invalid(
                f"input '{t.name}': a value is out of {t.datatype}'s range ({exc})"
            ) from None
    return Tensor(t.name, t.datatype, array.reshape(shape))


def encode_infer(response: InferResponse) -> pb.ModelInferResponse:
    message = pb.ModelInferResponse(
        model_name=response.model, model_version=response.version, id=response.id
    )
    for tensor in response.outputs:
        message.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        message.raw_output_contents.append(tensors.to_raw(tensor.datatype, tensor.array))
    return message


def statistics_message(stats: dict[str, Any]) -> pb.ModelStatisticsResponse:
    """Triton's statistics (serve/observe/statistics.py's form) as its gRPC message."""
    message = pb.ModelStatisticsResponse()
    for row in stats["model_stats"]:
        entry = message.model_stats.add(
            name=row["name"],
            version=row["version"],
            last_inference=row["last_inference"],
            inference_count=row["inference_count"],
            execution_count=row["execution_count"],
        )
        for field, duration in row["inference_stats"].items():
            getattr(entry.inference_stats, field).CopyFrom(pb.StatisticDuration(**duration))
    return message


def index_message(index: list[dict[str, Any]]) -> pb.RepositoryIndexResponse:
    message = pb.RepositoryIndexResponse()
    fields = ("name", "version", "state", "reason")  # a catalog row says more over REST
    for row in index:
        message.models.add(**{k: row[k] for k in fields if k in row})
    return message


def metadata_message(meta: dict[str, Any]) -> pb.ModelMetadataResponse:
    message = pb.ModelMetadataResponse(
        name=meta["name"], versions=meta["versions"], platform=meta["platform"]
    )
    for spec in meta["inputs"]:
        message.inputs.add(**spec)
    for spec in meta["outputs"]:
        message.outputs.add(**spec)
    return message


def grpc_status(exc: InferenceError) -> grpc.StatusCode:
    """The error's gRPC status, from the one table (serve/core/errors.py)."""
    return grpc.StatusCode[exc.grpc_status_name]


def set_error(context: Any, exc: InferenceError) -> None:
    """The status and its details (capped: gRPC clients drop a status message of kilobytes).
    A shed says when to retry, as HTTP's Retry-After does: `retry-after` (seconds) and gRPC's
    own `grpc-retry-pushback-ms`, which gRPC's retry policy obeys."""
    if context is None:
        raise exc
    context.set_code(grpc_status(exc))
    context.set_details(exc.shown())
    if exc.retry_after_s is not None:
        context.set_trailing_metadata(
            [
                ("retry-after", str(max(1, round(exc.retry_after_s)))),
                ("grpc-retry-pushback-ms", str(round(exc.retry_after_s * 1000))),
            ]
        )
