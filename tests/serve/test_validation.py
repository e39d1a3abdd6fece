from __future__ import annotations

import numpy as np
import pytest

from converters.spec import Signature, TensorSpec
from serve.core.errors import InferenceError
from serve.core.types import InferRequest, RequestedOutput, Tensor
from serve.core.validation import validate

SIG = Signature(
    inputs=[TensorSpec(name="x", datatype="FP32", shape=[-1, 30])],
    outputs=[
        TensorSpec(name="label", datatype="INT64", shape=[-1]),
        TensorSpec(name="probabilities", datatype="FP32", shape=[-1, 2]),
    ],
)


def _request(*tensors: Tensor, outputs: list[str] | None = None) -> InferRequest:
    wanted = [RequestedOutput(n) for n in outputs] if outputs else None
    return InferRequest("m", None, list(tensors), outputs=wanted)


def _message(request: InferRequest, sig: Signature = SIG) -> str:
    with pytest.raises(InferenceError) as info:
        validate(request, sig)
    assert info.value.http_status == 400
    return info.value.message


def test_valid_request_gives_feeds_and_rows() -> None:
    x = np.zeros((3, 30), np.float32)
    feeds, rows = validate(_request(Tensor("x", "FP32", x)), SIG)
    assert rows == 3 and feeds["x"] is x


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (
            Tensor("x", "FP64", np.zeros((1, 29))),
            "input 'x' must be FP32 with shape [-1, 30]; got FP64 [1, 29]",
        ),
        (
            Tensor("x", "FP32", np.zeros((1, 30, 1), np.float32)),
            "input 'x' must be FP32 with shape [-1, 30]; got FP32 [1, 30, 1]",
        ),
        (Tensor("y", "FP32", np.zeros((1, 30), np.float32)), "unknown input 'y'; inputs are: x"),
        (Tensor("x", "FP32", np.zeros((0, 30), np.float32)), "input 'x' has no rows"),
    ],
)
def test_bad_inputs_are_named(tensor: Tensor, message: str) -> None:
    assert message in _message(_request(tensor))


def test_missing_input_and_unknown_output() -> None:
    assert "missing input 'x' (FP32 with shape [-1, 30])" in _message(_request())
    x = Tensor("x", "FP32", np.zeros((1, 30), np.float32))
    assert "unknown output 'score'; outputs are: label, probabilities" in _message(
        _request(x, outputs=["score"])
    )


def test_inputs_must_agree_on_rows_and_bytes_become_text() -> None:
    sig = Signature(
        inputs=[
            TensorSpec(name="a", datatype="FP32", shape=[-1, 1]),
            TensorSpec(name="city", datatype="BYTES", shape=[-1, 1]),
        ],
        outputs=[TensorSpec(name="label", datatype="INT64", shape=[-1])],
    )
    city = np.array([[b"paris"], [b"rome"]], dtype=object)
    a = Tensor("a", "FP32", np.zeros((2, 1), np.float32))
    feeds, rows = validate(_request(a, Tensor("city", "BYTES", city)), sig)
    assert rows == 2 and feeds["city"].reshape(-1).tolist() == ["paris", "rome"]
    short = Tensor("a", "FP32", np.zeros((1, 1), np.float32))
    assert "input 'city' has 2 rows; other inputs have 1" in _message(
        _request(short, Tensor("city", "BYTES", city)), sig
    )


def test_an_output_asked_for_twice_is_refused_by_name() -> None:
    x = Tensor("x", "FP32", np.zeros((1, 30), np.float32))
    message = _message(_request(x, outputs=["label", "probabilities", "label"]))
    assert "output 'label' is asked for more than once" in message


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_infinite_inputs_are_refused_unless_the_model_allows_them(bad: float) -> None:
    x = np.zeros((2, 30), np.float32)
    x[1, 7] = bad
    request = _request(Tensor("x", "FP32", x))
    assert "input 'x' holds NaN or infinite values" in _message(request)
    feeds, rows = validate(request, SIG, allow_non_finite=True)
    assert rows == 2 and feeds["x"] is x
