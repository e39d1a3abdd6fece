"""The gRPC servicer (serve/protocol/grpc_servicer.py) on a real grpc.aio server and client,
without Ray: answers, and every error in gRPC's own form."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np

from serve.core.admission import Admission
from serve.grpc_service import add_servicer
from serve.observe.metrics import GatewayMetrics
from serve.protocol.grpc_servicer import InferenceServicer
from serve.protocol.rest_codec import Limits
from serve.protos import grpc_predict_v2_pb2 as pb
from serve.protos import grpc_predict_v2_pb2_grpc as pb_grpc
from tests.serve import factories

INFER = "/inference.GRPCInferenceService/ModelInfer"


def _serve(
    scenario: Callable[[grpc.aio.Channel, InferenceServicer], Awaitable[Any]], limit: int = 16
) -> Any:
    async def main() -> Any:
        plane = factories.metered_plane(GatewayMetrics())
        servicer = InferenceServicer(plane, Admission(limit), 1 << 20, Limits(max_elements=1000))
        server = grpc.aio.server()
        add_servicer(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                return await scenario(channel, servicer)
        finally:
            await server.stop(None)

    return asyncio.run(main())


def _infer_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    x = request.inputs.add(name="input", datatype="FP32", shape=[2, 2])
    x.contents.fp32_contents.extend([0.9, 0.0, 0.1, 0.0])
    return request


def test_model_infer_answers_with_the_version_that_answered() -> None:
    async def scenario(channel: grpc.aio.Channel, _: InferenceServicer) -> None:
        call = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(_infer_request())
        response = await call
        label = next(o for o in response.outputs if o.name == "label")
        index = list(response.outputs).index(label)
        assert np.frombuffer(response.raw_output_contents[index], np.int64).tolist() == [1, 0]
        assert ("x-model-version", "1") in list(await call.trailing_metadata())

    _serve(scenario)


def test_bytes_that_are_no_message_are_invalid_argument_naming_the_message() -> None:
    async def scenario(channel: grpc.aio.Channel, _: InferenceServicer) -> None:
        garbage = channel.unary_unary(INFER)
        try:
            await garbage(b"\xff\xff\xff\xff")
        except grpc.aio.AioRpcError as exc:
            assert exc.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "inference.ModelInferRequest" in (exc.details() or "")
        else:
            raise AssertionError("garbage was answered")

    _serve(scenario)


def test_a_bug_is_internal_and_names_no_python_class() -> None:
    async def scenario(channel: grpc.aio.Channel, servicer: InferenceServicer) -> None:
        def broken() -> dict[str, Any]:
            raise RuntimeError("a secret detail")

        servicer.plane.server_metadata = broken  # type: ignore[method-assign]
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        try:
            await stub.ServerMetadata(pb.ServerMetadataRequest())
        except grpc.aio.AioRpcError as exc:
            assert exc.code() is grpc.StatusCode.INTERNAL
            assert exc.details() == "internal error"
        else:
            raise AssertionError("the bug was answered")
        assert (await stub.ServerLive(pb.ServerLiveRequest())).live  # still serving

    _serve(scenario)


def test_a_full_router_sheds_with_unavailable_and_a_retry_hint() -> None:
    async def scenario(channel: grpc.aio.Channel, servicer: InferenceServicer) -> None:
        call = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(_infer_request())
        try:
            await call
        except grpc.aio.AioRpcError as exc:
            assert exc.code() is grpc.StatusCode.UNAVAILABLE
            assert "limit 0" in (exc.details() or "")
            trailers = dict(exc.trailing_metadata() or ())
            assert trailers["retry-after"] == "1" and trailers["grpc-retry-pushback-ms"] == "1000"
        else:
            raise AssertionError("a full router answered")
        assert servicer.admission.admitted == 0

    _serve(scenario, limit=0)
