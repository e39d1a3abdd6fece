"""Hostile bodies: the decoders answer any input with a request or an InferenceError (a 4xx),
never another exception (a 5xx) and never an allocation the limits did not allow."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serve.core.errors import InferenceError
from serve.protocol import grpc_codec as grpc_service
from serve.protocol.rest_codec import Limits, decode_request
from serve.protos import grpc_predict_v2_pb2 as pb

LIMITS = Limits(max_elements=1 << 16)
KEYS = [
    "inputs", "name", "shape", "datatype", "data", "parameters", "outputs", "id",
    "binary_data_size", "binary_data", "binary_data_output", "contents",
]  # fmt: skip
DATATYPES = ["FP32", "FP64", "INT64", "INT8", "UINT8", "BOOL", "BYTES", "FP16", "NOPE", ""]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from(DATATYPES),
)
documents = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=6),
        st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=4), children, max_size=6),
    ),
    max_leaves=40,
)
shapes = st.lists(st.integers(-3, 2**40), max_size=4)
tensors = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["input", "x", ""]),
        "shape": shapes,
        "datatype": st.sampled_from(DATATYPES),
        "data": st.one_of(documents, st.lists(scalars, max_size=12)),
    },
    optional={"parameters": st.dictionaries(st.sampled_from(KEYS), scalars, max_size=3)},
)
plausible = st.fixed_dictionaries(
    {"inputs": st.lists(tensors, max_size=3)},
    optional={"outputs": documents, "parameters": documents, "id": scalars},
)


def _valid_message() -> bytes:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 2])
    request.raw_input_contents.append(b"\x00" * 8)
    return request.SerializeToString()


_VALID = _valid_message()  # a well-formed message, to which the fuzzer appends junk


def _decode(body: bytes, header: str | None = None) -> None:
    try:
        decode_request(body, header, "m", None, LIMITS)
    except InferenceError as exc:
        assert exc.http_status < 500, exc.message


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_arbitrary_bytes(body: bytes) -> None:
    _decode(body)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(documents, plausible))
def test_arbitrary_json_documents(doc: Any) -> None:
    _decode(json.dumps(doc).encode())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plausible, st.binary(max_size=64), st.one_of(st.integers(-5, 400).map(str), st.text(max_size=5))
)
def test_binary_framing(doc: Any, raw: bytes, header: str) -> None:
    head = json.dumps(doc).encode()
    _decode(head + raw, header)
    _decode(head + raw, str(len(head)))


def test_a_huge_shape_is_refused_before_any_allocation() -> None:
    doc = {"inputs": [{"name": "x", "shape": [2**40, 2**40], "datatype": "FP32", "data": [1.0]}]}
    try:
        decode_request(json.dumps(doc).encode(), None, "m", None, LIMITS)
    except InferenceError as exc:
        assert exc.http_status in (400, 413)
    else:
        raise AssertionError("accepted a 2**80-element tensor")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.sampled_from(["input", ""]), st.sampled_from(DATATYPES), shapes), max_size=3
    ),
    st.lists(st.binary(max_size=48), max_size=4),
)
def test_grpc_requests(inputs: list[tuple[str, str, list[int]]], raws: list[bytes]) -> None:
    request = pb.ModelInferRequest(model_name="m")
    for name, datatype, shape in inputs:
        request.inputs.add(name=name, datatype=datatype, shape=[max(s, 0) for s in shape])
    request.raw_input_contents.extend(raws)
    try:
        grpc_service.decode_infer(request, LIMITS, {})
    except InferenceError as exc:
        assert exc.http_status < 500, exc.message


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 80), st.sampled_from(["json", "binary", "grpc-raw", "grpc-typed"]))
def test_any_number_of_dimensions_is_a_request_or_a_4xx(dims: int, form: str) -> None:
    shape = [1] * dims
    if form.startswith("grpc"):
        request = pb.ModelInferRequest(model_name="m")
        tensor = request.inputs.add(name="x", datatype="FP32", shape=shape)
        if form == "grpc-raw":
            request.raw_input_contents.append(b"\x00\x00\x80\x3f")
        else:
            tensor.contents.fp32_contents.append(1.0)
        _decode_grpc(request)
        return
    item: dict[str, Any] = {"name": "x", "shape": shape, "datatype": "FP32"}
    if form == "json":
        _decode(json.dumps({"inputs": [{**item, "data": [1.0]}]}).encode())
    else:
        head = json.dumps({"inputs": [{**item, "parameters": {"binary_data_size": 4}}]}).encode()
        _decode(head + b"\x00\x00\x80\x3f", str(len(head)))


TYPED = [(d, f) for d, f in grpc_service.CONTENTS_FIELD.items() if d not in ("BOOL", "BYTES")]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(TYPED), st.integers(-(2**63), 2**64 - 1), st.floats())
def test_typed_contents_out_of_their_datatypes_range_are_a_4xx(
    typed: tuple[str, str], integer: int, real: float
) -> None:
    datatype, field = typed
    request = pb.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=[1])
    values = getattr(tensor.contents, field)
    try:  # the widest value the field takes of the two
        values.append(real if field.startswith("fp") else integer)
    except (ValueError, TypeError):
        return  # protobuf itself refuses it: no such message can be sent
    _decode_grpc(request)


def test_an_int8_of_300_is_named_out_of_range() -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="INT8", shape=[1]).contents.int_contents.append(300)
    try:
        grpc_service.decode_infer(request, LIMITS, {})
    except InferenceError as exc:
        assert exc.http_status == 400 and "out of INT8's range" in exc.message
    else:
        raise AssertionError("INT8 300 was accepted")


def _decode_grpc(request: pb.ModelInferRequest) -> None:
    try:
        grpc_service.decode_infer(request, LIMITS, {})
    except InferenceError as exc:
        assert exc.http_status < 500, exc.message


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.binary(max_size=300),
        st.builds(lambda m, b: m + b, st.just(_VALID), st.binary(max_size=40)),
    )
)
def test_any_bytes_as_a_grpc_message_are_a_request_or_a_4xx(raw: bytes) -> None:
    """What serve.grpc_service.add_servicer hands the router: any bytes at all."""
    try:
        message = grpc_service.parse(pb.ModelInferRequest, raw)
        grpc_service.decode_infer(message, LIMITS, {})
    except InferenceError as exc:
        assert exc.http_status < 500, exc.message
