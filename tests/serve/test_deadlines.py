"""Per-request deadlines: the model's default, the request's `timeout`, counted (no Ray)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from serve.core.batching import MicroBatcher
from serve.core.dataplane import DataPlane, VersionTarget
from serve.core.errors import ErrorCode, InferenceError
from serve.core.types import InferRequest, Tensor
from serve.observe.metrics import GatewayMetrics
from tests.serve import factories


def _request(timeout_us: object = None) -> InferRequest:
    parameters = {} if timeout_us is None else {"timeout": timeout_us}
    x = np.zeros((1, 2), np.float32)
    return InferRequest("m", None, [Tensor("input", "FP32", x)], parameters=parameters)


def test_a_request_past_its_deadline_is_answered_504_and_counted() -> None:
    plane, metrics = factories.slow_plane(factories.Slow(0.3), default_s=None)

    async def main() -> None:
        with pytest.raises(InferenceError) as caught:
            await plane.infer(_request(timeout_us=50_000))
        assert caught.value.code is ErrorCode.DEADLINE_EXCEEDED
        assert caught.value.http_status == 504
        assert "50 ms" in caught.value.message

    asyncio.run(main())
    metrics.flush()  # the request series are buffered (serve/observe/metrics.py)
    labels = {"model": "m", "version": "1"}
    assert metrics.registry.get_sample_value("modelgate_timeouts_total", labels) == 1
    requests = {**labels, "protocol": "http", "code": "deadline_exceeded"}
    assert metrics.registry.get_sample_value("modelgate_requests_total", requests) == 1


def test_a_queued_request_past_its_deadline_is_dropped_before_compute() -> None:
    model = factories.Slow(0.2)
    plane, _ = factories.slow_plane(model, default_s=None)

    async def main() -> list[object]:
        first = asyncio.create_task(plane.infer(_request()))
        await asyncio.sleep(0.01)  # the first holds the only slot
        late = asyncio.create_task(plane.infer(_request(timeout_us=30_000)))
        return await asyncio.gather(first, late, return_exceptions=True)

    first, late = asyncio.run(main())
    assert not isinstance(first, BaseException)
    assert isinstance(late, InferenceError) and late.code is ErrorCode.DEADLINE_EXCEEDED
    assert model.batches == [1]  # the late request never ran


def test_the_model_default_caps_the_request_and_applies_without_one() -> None:
    plane, _ = factories.slow_plane(factories.Slow(0.2), default_s=0.05)

    async def main() -> None:
        for request in (_request(), _request(timeout_us=10_000_000)):
            with pytest.raises(InferenceError) as caught:
                await plane.infer(request)
            assert caught.value.code is ErrorCode.DEADLINE_EXCEEDED

    asyncio.run(main())


@pytest.mark.parametrize("bad", [0, -5, "soon", True])
def test_a_bad_timeout_parameter_is_invalid_argument(bad: object) -> None:
    plane, _ = factories.slow_plane(factories.Slow(0.0), default_s=None)

    async def main() -> None:
        with pytest.raises(InferenceError) as caught:
            await plane.infer(_request(timeout_us=bad))
        assert caught.value.code is ErrorCode.INVALID_ARGUMENT
        assert "timeout" in caught.value.message

    asyncio.run(main())


def test_a_batch_refused_as_expired_answers_each_request_with_its_own_deadline() -> None:
    """A remote run that finds its batch past its deadline (serve/ray/app.py) raises for the whole
    batch; each request says what its own deadline was."""

    async def expired_run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise InferenceError(ErrorCode.DEADLINE_EXCEEDED, "m:1: every request of the batch ...")

    batcher = MicroBatcher("m:1", expired_run, max_in_flight=1)
    target = VersionTarget("m", "1", factories.manifest("1"), batcher, "c", 5.0)
    plane = DataPlane.build([target], {}, GatewayMetrics())
    with pytest.raises(InferenceError) as info:
        asyncio.run(plane.infer(_request(timeout_us=2_000)))
    assert info.value.code is ErrorCode.DEADLINE_EXCEEDED
    assert "no answer within the request's deadline of 2 ms" in info.value.message


def test_a_grpc_clients_own_deadline_becomes_the_requests_timeout_where_the_server_tells_it() -> (
    None
):
    """grpc.aio's server context (the lean listener's) tells the time the client left; the
    request's `timeout` then says it (the smaller, when the client gave both). Ray's context
    tells nothing: the request stays as it came."""
    import grpc

    from serve.protocol.grpc_servicer import with_client_deadline
    from tests.conftest import free_port

    seen: list[dict[str, object]] = []

    async def handler(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        parameters: dict[str, object] = {}
        if request:
            parameters["timeout"] = int(request)
        with_client_deadline(parameters, context)
        seen.append(parameters)
        return b""

    async def main() -> None:
        server = grpc.aio.server()
        method = grpc.unary_unary_rpc_method_handler(
            handler, request_deserializer=bytes, response_serializer=bytes
        )
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t", {"m": method}),))
        port = free_port()
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = channel.unary_unary("/t/m")
                await call(b"", timeout=5)
                await call(b"1000", timeout=5)  # the request's own is smaller: kept
                await call(b"")  # no deadline at all
        finally:
            await server.stop(None)

    asyncio.run(main())
    client, smaller, none = seen
    assert 4e6 < float(client["timeout"]) <= 5e6  # type: ignore[arg-type]
    assert smaller == {"timeout": 1000}
    assert none == {}
    ray_like: dict[str, object] = {}
    with_client_deadline(ray_like, object())  # a context with no time_remaining
    assert ray_like == {}
