"""Which outputs an answer carries, and in which form, as the request asks (no Ray)."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from serve.core.types import InferRequest, InferResponse, RequestedOutput, Tensor
from serve.protocol.rest_codec import encode_response
from tests.serve import factories


def _answer(outputs: list[RequestedOutput] | None, binary_output: bool = False) -> InferResponse:
    plane, _ = factories.slow_plane(factories.Slow(0.0), default_s=None)
    x = np.zeros((2, 2), np.float32)
    request = InferRequest(
        "m", None, [Tensor("input", "FP32", x)], outputs=outputs, binary_output=binary_output
    )
    return asyncio.run(plane.infer(request))


@pytest.mark.parametrize("outputs", [None, []])
def test_without_a_list_of_outputs_every_output_comes_in_signature_order(
    outputs: list[RequestedOutput] | None,
) -> None:
    response = _answer(outputs)
    assert [(t.name, t.datatype, t.shape) for t in response.outputs] == [
        ("label", "INT64", [2]),
        ("probabilities", "FP32", [2, 2]),
    ]
    body, head_length = encode_response(response)
    assert head_length is None
    assert [o["data"] for o in json.loads(body)["outputs"]] == [[0, 0], [0.0] * 4]


def test_the_request_level_binary_flag_sends_every_output_raw() -> None:
    body, head_length = encode_response(_answer(None, binary_output=True))
    assert head_length is not None
    outputs = json.loads(body[:head_length])["outputs"]
    assert [o["parameters"]["binary_data_size"] for o in outputs] == [16, 16]
    assert len(body) == head_length + 32


def test_a_subset_is_answered_in_the_order_asked_each_output_in_its_own_form() -> None:
    asked = [RequestedOutput("probabilities", binary=True), RequestedOutput("label")]
    response = _answer(asked, binary_output=False)
    assert [t.name for t in response.outputs] == ["probabilities", "label"]
    body, head_length = encode_response(response)
    assert head_length is not None
    probabilities, label = json.loads(body[:head_length])["outputs"]
    assert probabilities["parameters"] == {"binary_data_size": 16} and "data" not in probabilities
    assert label["data"] == [0, 0]
    # and the other way round: the request's default is binary, one output asks for JSON
    asked = [RequestedOutput("label", binary=False)]
    body, head_length = encode_response(_answer(asked, binary_output=True))
    assert head_length is None and json.loads(body)["outputs"][0]["data"] == [0, 0]
