"""The direct transport's frames (serve/direct.py), without sockets or Ray."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from serve.direct import MAX_FRAME, encode, encode_error, read
from serve.errors import ErrorCode, InferenceError


def _read(*frames: list[bytes]) -> list[dict[str, np.ndarray]]:
    """Every frame fed to one stream, read back in order."""

    async def main() -> list[dict[str, np.ndarray]]:
        reader = asyncio.StreamReader()
        for chunks in frames:
            reader.feed_data(b"".join(chunks))
        reader.feed_eof()
        return [await read(reader) for _ in frames]

    return asyncio.run(main())


def test_frames_carry_every_numeric_dtype_and_shape_back_to_back() -> None:
    feeds = {
        "x": np.arange(12, dtype=np.float32).reshape(3, 4),
        "label": np.array([1, 2, 3], dtype=np.int64),
        "empty": np.zeros((0, 5), np.float64),
        "mask": np.array([[True, False], [False, True]]),
        "half": np.linspace(0, 1, 6, dtype=np.float16).reshape(2, 3),
        "strided": np.arange(20, dtype=np.int32).reshape(4, 5)[:, ::2],  # not contiguous
    }

    for out in _read(encode(feeds), encode(feeds)):
        assert list(out) == list(feeds)
        for name, sent in feeds.items():
            assert out[name].dtype == sent.dtype and out[name].shape == sent.shape, name
            np.testing.assert_array_equal(out[name], sent)


def test_an_error_frame_raises_the_replica_error_and_a_huge_header_is_refused() -> None:
    error = InferenceError(ErrorCode.INVALID_ARGUMENT, "input 'x': expected FP32")
    with pytest.raises(InferenceError, match="expected FP32") as raised:
        _read(encode_error(error))
    assert raised.value.code is ErrorCode.INVALID_ARGUMENT
    huge = [(MAX_FRAME + 1).to_bytes(4, "little")]
    with pytest.raises(ConnectionError, match="frame header"):
        _read(huge)
