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


class Placed:
    """A catalog placement that answers `answer` (None: no placed replica took the batch)."""

    def __init__(self, answer: Feeds | None) -> None:
        self.answer = answer

    async def run_model(self, key: str, feeds: Feeds, deadline: float | None) -> Feeds | None:
        return self.answer


def test_a_pool_catalog_version_never_runs_on_the_router() -> None:
    """`local` False (a catalog pool): the batch runs where it is placed, and when no placed
    replica takes it the router refuses it UNAVAILABLE with a retry hint, loading nothing;
    on a router that may hold sessions it loads and runs there."""
    from serve.core.resident import ResidentSet

    loaded: list[str] = []

    def load(key: str) -> runners.Runner:  # type: ignore[return]
        loaded.append(key)
        return lambda feeds: {"y": feeds["x"] * 2}  # type: ignore[return-value]

    async def main() -> None:
        resident = ResidentSet(load, 2, 1, 4)  # type: ignore[arg-type]
        answered = await runners.lazy("m:1", resident, Placed(FEEDS), local=False)(FEEDS)
        assert answered is FEEDS
        with pytest.raises(InferenceError) as refused:
            await runners.lazy("m:1", resident, Placed(None), local=False)(FEEDS)
        assert refused.value.code is ErrorCode.UNAVAILABLE and refused.value.retry_after_s
        assert loaded == []
        here = await runners.lazy("m:1", resident, Placed(None))(FEEDS)
        assert loaded == ["m:1"] and here["y"].tolist() == (FEEDS["x"] * 2).tolist()

    asyncio.run(main())
