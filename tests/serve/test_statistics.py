"""Triton's statistics extension read from the gateway's metrics, and the gRPC adapter's side of
it and of the repository index (no Ray)."""

from __future__ import annotations

import asyncio
import time

import pytest

from serve.core.errors import InferenceError
from serve.observe import statistics
from serve.observe.metrics import GatewayMetrics
from serve.protocol import grpc_codec as grpc_service
from serve.protos import grpc_predict_v2_pb2 as pb
from tests.serve import factories


def test_statistics_count_requests_rows_batches_and_failures_from_the_metrics() -> None:
    metrics = GatewayMetrics()
    plane = factories.metered_plane(metrics)
    started = time.time()

    async def main() -> None:
        await asyncio.gather(*(plane.infer(factories.request(shape=(2, 2))) for _ in range(5)))
        with pytest.raises(InferenceError):
            await plane.infer(factories.request(shape=(1, 3)))  # not the signature's shape

    asyncio.run(main())
    (stats,) = statistics.node_statistics(plane, "m", None)["model_stats"]
    assert (stats["name"], stats["version"]) == ("m", "1")
    assert stats["inference_count"] == 10  # rows
    assert 1 <= stats["execution_count"] <= 5  # batches
    inference = stats["inference_stats"]
    assert inference["success"]["count"] == 5 and inference["fail"]["count"] == 1
    assert inference["queue"]["count"] == 5
    assert stats["last_inference"] >= int(started * 1000)
    message = grpc_service.statistics_message({"model_stats": [stats]})
    assert message.model_stats[0].inference_stats.success.count == 5
    assert message.model_stats[0].inference_count == 10


def test_statistics_of_an_unknown_model_or_version_are_not_found() -> None:
    plane = factories.metered_plane(GatewayMetrics())
    for model, version in (("nope", None), ("m", "9")):
        with pytest.raises(InferenceError) as info:
            statistics.node_statistics(plane, model, version)
        assert info.value.http_status == 404


def test_the_index_lists_ready_versions_only_when_asked() -> None:
    plane = factories.metered_plane(GatewayMetrics())
    plane.models["m"].versions["1"].health.ready = False
    assert plane.repository_index(ready_only=True) == []
    (row,) = grpc_service.index_message(plane.repository_index()).models
    assert (row.name, row.version, row.state) == ("m", "1", "UNAVAILABLE")


def test_a_request_that_is_not_a_message_is_invalid_argument() -> None:
    good = pb.ModelInferRequest(model_name="m").SerializeToString()
    assert grpc_service.parse(pb.ModelInferRequest, good).model_name == "m"
    request = pb.ModelInferRequest(model_name="x")
    assert grpc_service.parse(pb.ModelInferRequest, request) is request  # already decoded
    with pytest.raises(InferenceError) as info:
        grpc_service.parse(pb.ModelInferRequest, b"\xff\xff\xff\xff")
    assert info.value.http_status == 400
    assert "not a valid inference.ModelInferRequest" in info.value.message
