from __future__ import annotations

import pickle

import grpc
import pytest

from serve.core.errors import STATUS, ErrorCode, InferenceError, OverloadedError
from serve.protocol.grpc_codec import grpc_status


def test_every_code_is_mapped_to_http_and_grpc() -> None:
    assert set(STATUS) == set(ErrorCode)
    for code in ErrorCode:
        error = InferenceError(code, "x")
        assert 400 <= error.http_status < 600 and isinstance(grpc_status(error), grpc.StatusCode)
    assert grpc_status(InferenceError(ErrorCode.INTERNAL, "x")) is grpc.StatusCode.INTERNAL
    # Only a real bug is INTERNAL: no client mistake maps there.
    assert [
        c for c in ErrorCode if grpc_status(InferenceError(c, "x")) is grpc.StatusCode.INTERNAL
    ] == [ErrorCode.INTERNAL]


@pytest.mark.parametrize(
    "error",
    [
        InferenceError(ErrorCode.NOT_FOUND, "no such model"),
        OverloadedError("m:1", queued=10, limit=10, retry_after_s=2.0),
    ],
)
def test_errors_survive_pickling_between_processes(error: InferenceError) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert (copy.code, copy.message, copy.http_status) == (
        error.code,
        error.message,
        error.http_status,
    )
    assert copy.retry_after_s == error.retry_after_s


def test_overload_carries_its_numbers() -> None:
    error = OverloadedError("breast_cancer:1", queued=1024, limit=1024)
    assert error.http_status == 503 and grpc_status(error) is grpc.StatusCode.UNAVAILABLE
    assert "1024 requests queued, limit 1024" in error.message
