"""A dedicated version's runner (serve/core/runners.py): transports in order, the one that took
the batch counts it, and a batch past its deadline is not sent."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from serve.core import runners
from serve.core.batching import BATCH_DEADLINE
from serve.core.errors import ErrorCode, InferenceError
from serve.core.types import Feeds

FEEDS: Feeds = {"x": np.ones((2, 3), np.float32)}


class Recorded:
    """A transport that answers `answer` (None: cannot take it; an error: raises it)."""

    def __init__(self, answer: Feeds | InferenceError | None) -> None:
        self.answer = answer
        self.sent: list[float | None] = []
        self.count = 0

    async def run(self, feeds: Feeds, deadline: float | None) -> Feeds | None:
        self.sent.append(deadline)
        if isinstance(self.answer, InferenceError):
            raise self.answer
        return self.answer

    def inc(self) -> None:
        self.count += 1


def _run(runner: runners.Runner, deadline: float | None = None) -> Feeds:
    async def main() -> Feeds:
        BATCH_DEADLINE.set(deadline)
        return await runner(FEEDS)

    return asyncio.run(main())


def test_the_first_transport_that_takes_the_batch_answers_and_counts_it() -> None:
    direct, handle = Recorded(None), Recorded({"y": np.zeros(2)})
    runner = runners.dedicated("m:1", [(direct, direct), (handle, handle)])
    deadline = time.monotonic() + 5
    assert _run(runner, deadline)["y"].tolist() == [0.0, 0.0]
    assert direct.sent == handle.sent == [deadline]
    assert (direct.count, handle.count) == (0, 1)
    direct.answer = {"y": np.ones(2)}
    assert _run(runner)["y"].tolist() == [1.0, 1.0]
    assert (direct.count, handle.count) == (1, 1) and len(handle.sent) == 1


def test_a_replicas_error_is_answered_and_counted_where_it_came_from() -> None:
    direct = Recorded(InferenceError(ErrorCode.INVALID_ARGUMENT, "bad rows"))
    handle = Recorded({"y": np.zeros(2)})
    with pytest.raises(InferenceError, match="bad rows"):
        _run(runners.dedicated("m:1", [(direct, direct), (handle, handle)]))
    assert (direct.count, handle.count) == (1, 0) and handle.sent == []


def test_a_batch_past_its_deadline_is_not_sent() -> None:
    handle = Recorded({"y": np.zeros(2)})
    with pytest.raises(InferenceError) as raised:
        _run(runners.dedicated("m:1", [(handle, handle)]), deadline=time.monotonic() - 0.001)
    assert raised.value.code is ErrorCode.DEADLINE_EXCEEDED and handle.sent == []


def test_no_transport_taking_it_is_unavailable_and_so_is_an_unloadable_version() -> None:
    with pytest.raises(InferenceError) as raised:
        _run(runners.dedicated("m:1", [(Recorded(None), Recorded(None))]))
    assert raised.value.code is ErrorCode.UNAVAILABLE
    with pytest.raises(InferenceError, match="m:2 is not ready: no artifact") as raised:
        _run(runners.unavailable("m:2", "no artifact"))
    assert raised.value.code is ErrorCode.UNAVAILABLE
