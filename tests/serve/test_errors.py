from __future__ import annotations

import pickle

import grpc
import pytest

from serve.errors import STATUS, ErrorCode, InferenceError, OverloadedError


def test_every_code_is_mapped_to_http_and_grpc() -> None:
    assert set(STATUS) == set(ErrorCode)
    for http, code in STATUS.values():
        assert 400 <= http < 600 and isinstance(code, grpc.StatusCode)
    assert STATUS[ErrorCode.INTERNAL] == (500, grpc.StatusCode.INTERNAL)
    # Only a real bug is INTERNAL: no client mistake maps there.
    assert [c for c, (_, g) in STATUS.items() if g is grpc.StatusCode.INTERNAL] == [
        ErrorCode.INTERNAL
    ]


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
    assert error.http_status == 503 and error.grpc_status is grpc.StatusCode.UNAVAILABLE
    assert "1024 requests queued, limit 1024" in error.message
