"""The inference service's RPCs over the data plane: each decodes its request (grpc_codec),
calls the data plane, and encodes the answer; one decorator (`rpc`) answers every error in
gRPC's own form. Served by Ray Serve's gRPC proxy through the Router's one-line forwarders
(serve/ray/app.py), or by any grpc.aio server (`add_servicer`): tests run it without Ray."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from google.protobuf.message import Message

from serve.core.admission import Admission
from serve.core.auth import Access
from serve.core.dataplane import DataPlane
from serve.core.errors import ErrorCode, InferenceError
from serve.observe import statistics
from serve.protocol import grpc_codec
from serve.protocol.rest import VERSION_HEADER
from serve.protocol.rest_codec import Limits
from serve.protos import grpc_predict_v2_pb2 as pb

logger = logging.getLogger("modelgate.grpc")

Request = TypeVar("Request", bound=Message)
Body = Callable[[Any, Any, Any], Awaitable[Message]]


def rpc(method: str) -> Callable[[Body], Callable[[Any, Any, Any], Awaitable[Message]]]:
    """The RPC `method`: its request decoded from the bytes that came (or taken as the message
    that came), its errors set as the call's status and details, an empty response returned.
    A bug is INTERNAL, logged, and never names a Python class to the caller."""
    request_type, response_type = grpc_codec.METHODS[method]

    def wrap(body: Body) -> Callable[[Any, Any, Any], Awaitable[Message]]:
        @functools.wraps(body)
        async def answer(self: Any, request: Any, context: Any = None) -> Message:
            try:
                return await body(self, grpc_codec.parse(request_type, request), context)
            except InferenceError as exc:
                grpc_codec.set_error(context, exc)
            except Exception:
                logger.exception("internal error in %s", method)
                grpc_codec.set_error(context, InferenceError(ErrorCode.INTERNAL, "internal error"))
            return response_type()

        return answer

    return wrap


def metadata(context: Any) -> dict[str, str]:
    """The call's metadata, keys lower-cased (text values only)."""
    if context is None:
        return {}
    return {k.lower(): v for k, v in context.invocation_metadata() if isinstance(v, str)}


def with_client_deadline(parameters: dict[str, Any], context: Any) -> None:
    """The client's own gRPC deadline as the request's `timeout` (microseconds; the smaller of
    the two when both are given), where the server tells it: grpc.aio's context does (the lean
    listener, serve/ingress/lean.py); Ray Serve 2.60's does not, so through Ray's gRPC ingress
    the `timeout` parameter is the way to give one."""
    remaining = getattr(context, "time_remaining", lambda: None)()
    if remaining is None:
        return
    client_us = max(1.0, remaining * 1e6)
    given = parameters.get("timeout")
    if given is None:
        parameters["timeout"] = client_us
    elif isinstance(given, int | float) and not isinstance(given, bool) and given > 0:
        parameters["timeout"] = min(given, client_us)
    # anything else: the parameter's own check refuses it, by name


class InferenceServicer:
    """`inference.GRPCInferenceService` over one DataPlane. API keys travel as the metadata
    `authorization: Bearer <key>`; ModelInfer passes the router's admission first."""

    def __init__(
        self, plane: DataPlane, admission: Admission, max_body_bytes: int, codec_limits: Limits
    ) -> None:
        self.plane = plane
        self.admission = admission
        self.max_body_bytes = max_body_bytes
        self.codec_limits = codec_limits

    @rpc("ServerLive")
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> Message:
        return pb.ServerLiveResponse(live=True)

    @rpc("ServerReady")
    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> Message:
        return pb.ServerReadyResponse(ready=self.plane.server_ready())

    @rpc("ServerMetadata")
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> Message:
        return pb.ServerMetadataResponse(**self.plane.server_metadata())

    @rpc("ModelReady")
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> Message:
        self._authorize(context, Access.MODEL, request.name)
        ready = self.plane.model_ready(request.name, request.version or None)
        return pb.ModelReadyResponse(ready=ready)

    @rpc("ModelMetadata")
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> Message:
        self._authorize(context, Access.MODEL, request.name)
        meta = self.plane.model_metadata(request.name, request.version or None)
        return grpc_codec.metadata_message(meta)

    @rpc("ModelStatistics")
    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: Any) -> Message:
        self._authorize(context, Access.ADMIN, None)
        stats = statistics.node_statistics(self.plane, request.name, request.version)
        return grpc_codec.statistics_message(stats)

    @rpc("RepositoryIndex")
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Any) -> Message:
        self._authorize(context, Access.ADMIN, None)
        return grpc_codec.index_message(self.plane.repository_index(ready_only=request.ready))

    @rpc("ModelInfer")
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> Message:
        if not self.admission.enter():
            raise self.admission.refusal()
        try:
            self._authorize(context, Access.MODEL, request.model_name)
            self.plane.check_known(request.model_name, request.model_version or None, "grpc")
            grpc_codec.check_size(request, self.max_body_bytes)
            infer = grpc_codec.decode_infer(request, self.codec_limits, metadata(context))
            with_client_deadline(infer.parameters, context)
            response = await self.plane.infer(infer)
        finally:
            self.admission.leave()
        if context is not None:
            context.set_trailing_metadata([(VERSION_HEADER, response.version)])
        return grpc_codec.encode_infer(response)

    def _authorize(self, context: Any, access: Access, model: str | None) -> None:
        self.plane.authorize(access, metadata(context).get("authorization"), model)
