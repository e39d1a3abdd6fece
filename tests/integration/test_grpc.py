"""The gRPC service over loopback through Ray Serve's gRPC ingress."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from serve.core import tensors
from serve.protos import grpc_predict_v2_pb2 as pb
from serve.protos import grpc_predict_v2_pb2_grpc as pb_grpc
from tests.integration.conftest import APP, Gateway, replica_pids, rss_bytes

X_BC = load_breast_cancer(return_X_y=True)[0].astype(np.float32)


@pytest.fixture(scope="module")
def stub(gateway: Gateway) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(gateway.grpc))


def _raw_request(rows: np.ndarray, version: str = "") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="breast_cancer", model_version=version, id="g-1")
    request.inputs.add(name="input", datatype="FP32", shape=list(rows.shape))
    request.raw_input_contents.append(tensors.to_raw("FP32", rows))
    return request


def _outputs(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    return {
        o.name: tensors.from_raw(o.name, o.datatype, list(o.shape), raw)
        for o, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }


def test_health_and_metadata(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    assert stub.ServerLive(pb.ServerLiveRequest()).live
    assert stub.ServerReady(pb.ServerReadyRequest()).ready
    assert "statistics" in stub.ServerMetadata(pb.ServerMetadataRequest()).extensions
    assert stub.ModelReady(pb.ModelReadyRequest(name="breast_cancer", version="2")).ready
    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="breast_cancer"))
    assert meta.platform == "onnx_onnxv1" and list(meta.versions) == ["1", "2", "3"]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("input", "FP32", [-1, 30])
    ]


@pytest.mark.parametrize("version", ["1", "2", "3", "canary"])
def test_raw_infer_matches_original(
    gateway: Gateway, stub: pb_grpc.GRPCInferenceServiceStub, version: str
) -> None:
    rows = X_BC[::13]
    response, call = stub.ModelInfer.with_call(_raw_request(rows, version))
    answered = {"canary": "2"}.get(version, version)
    assert response.model_version == answered and response.id == "g-1"
    assert dict(call.trailing_metadata())["x-model-version"] == answered
    out = _outputs(response)
    original = gateway.originals[f"breast_cancer:{answered}"]
    np.testing.assert_array_equal(out["label"], original.predict(rows.astype(np.float64)))
    np.testing.assert_allclose(
        out["probabilities"], original.predict_proba(rows.astype(np.float64)), atol=1e-4
    )


def test_typed_contents(gateway: Gateway, stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    rows = X_BC[:3]
    request = pb.ModelInferRequest(model_name="breast_cancer", model_version="3")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[3, 30])
    tensor.contents.fp32_contents.extend(rows.reshape(-1).tolist())
    out = _outputs(stub.ModelInfer(request))
    np.testing.assert_array_equal(
        out["label"], gateway.originals["breast_cancer:3"].predict(rows.astype(np.float64))
    )


@pytest.mark.parametrize(
    ("mutate", "code", "message"),
    [
        (lambda r: setattr(r, "model_name", "nope"), grpc.StatusCode.NOT_FOUND, "unknown model"),
        (lambda r: setattr(r, "model_version", "7"), grpc.StatusCode.NOT_FOUND, "no version"),
        (
            lambda r: r.inputs[0].__setattr__("datatype", "FP64"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "needs 480 bytes of raw data; got 240",
        ),
        (
            lambda r: r.inputs[0].__setattr__("name", "x"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "unknown input 'x'",
        ),
        (
            lambda r: r.raw_input_contents.append(b"extra"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "raw_input_contents has 2 entries for 1 inputs",
        ),
    ],
)
def test_errors_have_grpc_codes(
    stub: pb_grpc.GRPCInferenceServiceStub, mutate: object, code: grpc.StatusCode, message: str
) -> None:
    request = _raw_request(X_BC[:2])
    mutate(request)  # type: ignore[operator]
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request)
    assert info.value.code() == code
    assert message in info.value.details()


def test_a_request_past_its_timeout_parameter_is_deadline_exceeded(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    request = _raw_request(X_BC[:1], version="1")  # dedicated: the answer takes a Ray call
    request.parameters["timeout"].int64_param = 1  # microseconds, as Triton's clients send it
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "deadline" in (caught.value.details() or "")
    response = stub.ModelInfer(_raw_request(X_BC[:1], version="1"), timeout=10)  # still serving
    assert _outputs(response)["label"].shape == (1,)


def test_a_message_just_under_the_body_limit_is_served_and_one_over_is_refused(
    gateway: Gateway, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    """The session's gateway takes bodies of 1 MiB (its limits.max_body_bytes): gRPC messages
    too, refused with RESOURCE_EXHAUSTED past it, the router's memory unmoved by a huge one."""
    limit = gateway.config["applications"][0]["args"]["limits"]["max_body_bytes"]
    row = 30 * 4
    under = _raw_request(np.resize(X_BC, ((limit - 200) // row, 30)))
    assert limit - 400 < under.ByteSize() <= limit
    assert _outputs(stub.ModelInfer(under, timeout=30))["label"].shape == ((limit - 200) // row,)
    over = _raw_request(np.resize(X_BC, (limit // row + 2, 30)))
    assert limit < over.ByteSize() < limit + 400
    with pytest.raises(grpc.RpcError) as refused:
        stub.ModelInfer(over, timeout=30)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    (router,) = replica_pids(APP, "Router")
    before = rss_bytes(router)
    huge = _raw_request(np.zeros(((200 << 20) // row, 30), np.float32))  # 200 MiB
    for _ in range(3):
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(huge, timeout=60)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert rss_bytes(router) - before < 50 << 20  # never held a 200 MiB message
    assert _outputs(stub.ModelInfer(_raw_request(X_BC[:2]), timeout=30))["label"].shape == (2,)


def test_an_unknown_model_is_not_found_whatever_its_inputs(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    for request in (
        pb.ModelInferRequest(model_name="nope"),  # no inputs at all
        _raw_request(X_BC[:1]),
    ):
        request.model_name = "nope"
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request, timeout=10)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert "unknown model 'nope'" in (info.value.details() or "")


def test_a_message_that_cannot_be_decoded_is_invalid_argument(gateway: Gateway) -> None:
    """Bytes that are no ModelInferRequest: the client is told so, in gRPC's own form."""
    with grpc.insecure_channel(gateway.grpc) as channel:
        raw = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        for garbage in (b"\xff\xff\xff\xff", b"\x0a\x05ab"):  # bad tag; truncated field
            with pytest.raises(grpc.RpcError) as info:
                raw(garbage, timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not a valid inference.ModelInferRequest" in (info.value.details() or "")
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert _outputs(stub.ModelInfer(_raw_request(X_BC[:1]), timeout=10))["label"].shape == (1,)


#: A client's rate beside the other protocol's clients, as a share of one of theirs (1.0: an
#: equal share), at least, either way: grpc.aio as it is left a gRPC client 0.01-0.02 of an HTTP
#: client's rate on a router loaded so (issue 16); kept up, 0.27-0.31 (loadtests/RESULTS.md).
SHARE = 0.1


def test_grpc_beside_http_gets_its_share_of_a_loaded_router(gateway: Gateway) -> None:
    """Issue 16: 100 gRPC clients beside 200 HTTP clients on one router starved (7 req/s, p99
    8 s) while HTTP took the router. With the lean listener kept up with its loop
    (serve/ingress/grpc_aio.py), neither protocol's clients starve: each keeps a share of the
    other's rate a client, and every request of both is answered."""
    from loadtests.clients import Target
    from loadtests.ingress import MIXED, beside
    from loadtests.runner import load_payloads

    http = Target(url=gateway.base, model="breast_cancer", version="3")
    over_grpc = Target(gateway.base, "breast_cancer", "3", "grpc", gateway.grpc)
    payloads = load_payloads(http)
    # A router's first mixed load runs otherwise for its first seconds (HTTP slower, gRPC
    # ahead: loadtests/RESULTS.md, "gRPC kept up with the router's loop"): the steady share.
    beside(http, over_grpc, payloads, duration_s=4)
    by_http, by_grpc = beside(http, over_grpc, payloads, duration_s=6)
    assert not by_http.errors and not by_grpc.errors, (by_http.answers, by_grpc.answers)
    share = (by_grpc.achieved_rps / MIXED["grpc"]) / (by_http.achieved_rps / MIXED["http"])
    print(
        f"gRPC {by_grpc.achieved_rps:.0f} req/s beside HTTP {by_http.achieved_rps:.0f}: {share:.2f}"
    )
    assert SHARE <= share <= 1 / SHARE, (by_grpc.achieved_rps, by_http.achieved_rps)
