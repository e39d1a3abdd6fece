"""The gRPC adapter's strictness: one source of tensor data per input, in the field its
datatype travels in (no Ray)."""

from __future__ import annotations

import pytest

from serve.core.errors import InferenceError
from serve.protocol import grpc_codec as grpc_service
from serve.protocol.rest_codec import Limits
from serve.protos import grpc_predict_v2_pb2 as pb


def _message(request: pb.ModelInferRequest) -> str:
    with pytest.raises(InferenceError) as info:
        grpc_service.decode_infer(request, Limits(max_elements=100), {})
    assert info.value.http_status == 400
    return info.value.message


def test_raw_and_typed_contents_on_one_request_are_refused() -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP32", shape=[1]).contents.fp32_contents.append(1.0)
    request.raw_input_contents.append(b"\x00\x00\x80\x3f")
    assert "input 'x' has both raw_input_contents and contents.fp32_contents" in _message(request)


def test_typed_contents_in_another_datatypes_field_are_refused() -> None:
    request = pb.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1])
    tensor.contents.fp32_contents.append(1.0)
    tensor.contents.int_contents.append(1)
    assert "FP32 travels in contents.fp32_contents; got contents.int_contents" in _message(request)


def test_too_many_dimensions_are_refused_before_reshaping() -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP32", shape=[1] * 65)
    request.raw_input_contents.append(b"\x00\x00\x80\x3f")
    assert "65 dimensions; the limit is 32" in _message(request)
