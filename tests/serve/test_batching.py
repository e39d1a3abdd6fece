from __future__ import annotations

import asyncio

import numpy as np
import pytest

from serve.core.batching import BATCH_DEADLINE, MicroBatcher
from serve.core.errors import ErrorCode, InferenceError, OverloadedError

Feeds = dict[str, np.ndarray]


class Model:
    """A stand-in compute step that doubles its input, records its batches, fails on NaN."""

    def __init__(self, delay: float = 0.01) -> None:
        self.batches: list[int] = []
        self.delay = delay

    async def run(self, feeds: Feeds) -> Feeds:
        self.batches.append(len(feeds["x"]))
        await asyncio.sleep(self.delay)
        if np.isnan(feeds["x"]).any():
            raise InferenceError(ErrorCode.INTERNAL, "NaN in input")
        return {"y": feeds["x"] * 2}


def _row(i: float) -> Feeds:
    return {"x": np.array([[i]], dtype=np.float32)}


def test_concurrent_requests_coalesce_and_each_gets_its_own_answer() -> None:
    async def main() -> None:
        model = Model()
        batcher = MicroBatcher("m", model.run, max_in_flight=1, max_batch_rows=64)
        results = await asyncio.gather(*(batcher.submit(_row(i), 1) for i in range(200)))
        for i, out in enumerate(results):
            assert out["y"].tolist() == [[2 * i]]
        assert sum(model.batches) == 200
        assert len(model.batches) < 20 and max(model.batches) <= 64  # coalesced, bounded
        assert batcher.stats.requests == 200 and batcher.stats.batches == len(model.batches)

    asyncio.run(main())


def test_a_failing_request_fails_alone() -> None:
    async def main() -> None:
        model = Model()
        batcher = MicroBatcher("m", model.run, max_in_flight=1)
        rows = [_row(i) for i in range(10)]
        rows[4] = _row(float("nan"))
        results = await asyncio.gather(
            *(batcher.submit(r, 1) for r in rows), return_exceptions=True
        )
        assert isinstance(results[4], InferenceError)
        for i, out in enumerate(results):
            if i != 4:
                assert out["y"].tolist() == [[2 * i]]  # type: ignore[index]

    asyncio.run(main())


def test_full_queue_sheds_at_once() -> None:
    async def main() -> None:
        model = Model(delay=0.05)
        batcher = MicroBatcher("m:1", model.run, max_in_flight=1, max_batch_rows=1, max_queued=3)
        tasks = [asyncio.create_task(batcher.submit(_row(i), 1)) for i in range(10)]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        shed = [r for r in results if isinstance(r, OverloadedError)]
        assert shed and all(r.limit == 3 for r in shed)
        assert batcher.stats.shed == len(shed)
        assert len(shed) + sum(model.batches) == 10

    asyncio.run(main())


def test_cancelled_requests_are_never_computed() -> None:
    async def main() -> None:
        model = Model(delay=0.05)
        batcher = MicroBatcher("m", model.run, max_in_flight=1, max_batch_rows=1)
        first = asyncio.create_task(batcher.submit(_row(0), 1))
        await asyncio.sleep(0.01)  # first is running; the next ones queue
        doomed = [asyncio.create_task(batcher.submit(_row(i), 1)) for i in range(1, 5)]
        await asyncio.sleep(0)
        for task in doomed:
            task.cancel()
        last = await batcher.submit(_row(9), 1)
        assert (await first)["y"].tolist() == [[0]] and last["y"].tolist() == [[18]]
        assert model.batches == [1, 1]  # only the first and the last ran

    asyncio.run(main())


def test_max_wait_holds_a_batch_open() -> None:
    async def main() -> None:
        model = Model(delay=0)
        batcher = MicroBatcher("m", model.run, max_in_flight=4, max_wait_s=0.05)

        async def later(i: int) -> Feeds:
            await asyncio.sleep(0.01 * i)
            return await batcher.submit(_row(i), 1)

        await asyncio.gather(*(later(i) for i in range(4)))
        assert model.batches == [4]

    asyncio.run(main())


def test_requests_with_different_trailing_shapes_do_not_mix() -> None:
    async def main() -> None:
        model = Model(delay=0)
        batcher = MicroBatcher("m", model.run, max_in_flight=1)
        a = {"x": np.zeros((1, 2), np.float32)}
        b = {"x": np.zeros((1, 3), np.float32)}
        outs = await asyncio.gather(*(batcher.submit(f, 1) for f in (a, b, a, b)))
        assert [o["y"].shape for o in outs] == [(1, 2), (1, 3), (1, 2), (1, 3)]

    asyncio.run(main())


@pytest.mark.parametrize("rows", [1, 300])
def test_large_requests_go_whole(rows: int) -> None:
    async def main() -> None:
        model = Model(delay=0)
        batcher = MicroBatcher("m", model.run, max_batch_rows=256)
        x = {"x": np.arange(rows, dtype=np.float32).reshape(rows, 1)}
        out = await batcher.submit(x, rows)
        assert out["y"].reshape(-1).tolist() == [2 * i for i in range(rows)]

    asyncio.run(main())


def test_a_batch_waiting_on_a_future_nothing_else_holds_survives_garbage_collection() -> None:
    """A batch's task waits on the transport (a socket read, a handle call). If only that
    task's frame holds the future, the task is garbage in a cycle; the batcher must keep it."""
    import gc
    import weakref

    waiting: list[weakref.ref[asyncio.Future[Feeds]]] = []

    async def run(feeds: Feeds) -> Feeds:
        future: asyncio.Future[Feeds] = asyncio.get_running_loop().create_future()
        waiting.append(weakref.ref(future))
        return await future  # held by this frame alone, like a StreamReader's waiter

    async def main() -> list[Feeds]:
        batcher = MicroBatcher("m", run, max_in_flight=1)
        one = {"x": np.ones((1, 2), np.float32)}
        calls = [asyncio.ensure_future(batcher.submit(one, 1)) for _ in range(3)]
        await asyncio.sleep(0.05)  # the first runs directly, the others wait as one batch
        gc.collect()
        alive = [ref() for ref in waiting]
        assert all(f is not None for f in alive), "a running batch was garbage collected"
        alive[0].set_result({"y": np.ones((1,), np.float32)})  # type: ignore[union-attr]
        await asyncio.sleep(0.05)
        gc.collect()
        assert len(waiting) == 2 and waiting[1]() is not None
        waiting[1]().set_result({"y": np.ones((2,), np.float32)})  # type: ignore[union-attr]
        return await asyncio.wait_for(asyncio.gather(*calls), 5)

    results = asyncio.run(main())
    assert [r["y"].shape for r in results] == [(1,), (1,), (1,)]


def test_try_now_runs_in_process_versions_in_the_callers_stack_only_when_nothing_waits() -> None:
    calls: list[int] = []

    def run_now(feeds: Feeds) -> Feeds:
        calls.append(len(feeds["x"]))
        return {"y": feeds["x"] * 2}

    async def main() -> None:
        model = Model(delay=0.02)
        batcher = MicroBatcher("m", model.run, max_in_flight=1, run_now=run_now)
        tasks_before = len(asyncio.all_tasks())
        out = batcher.try_now(_row(3), 1)
        assert out is not None and out["y"].tolist() == [[6]]
        assert calls == [1] and len(asyncio.all_tasks()) == tasks_before  # no task, no hand-off
        assert (batcher.stats.requests, batcher.stats.rows, batcher.stats.batches) == (1, 1, 1)
        # A slot taken by a running call: the next request waits its turn, through submit.
        running = asyncio.create_task(batcher.submit(_row(1), 1))
        await asyncio.sleep(0)
        assert batcher.try_now(_row(2), 1) is None
        queued = asyncio.create_task(batcher.submit(_row(2), 1))
        await asyncio.sleep(0.005)
        assert batcher.queued == 1 and batcher.try_now(_row(4), 1) is None  # queued before it
        assert [r["y"].tolist() for r in await asyncio.gather(running, queued)] == [[[2]], [[4]]]
        assert calls == [1] and model.batches == [1, 1]
        assert batcher.try_now(_row(5), 1) is not None  # idle again

    asyncio.run(main())


def test_try_now_errors_reach_the_caller_and_a_batcher_without_run_now_declines() -> None:
    def failing(feeds: Feeds) -> Feeds:
        raise InferenceError(ErrorCode.INVALID_ARGUMENT, "bad row")

    async def main() -> None:
        model = Model()
        batcher = MicroBatcher("m", model.run, run_now=failing)
        with pytest.raises(InferenceError, match="bad row"):
            batcher.try_now(_row(1), 1)
        assert batcher.stats.batches == 1 and batcher._in_flight == 0
        assert MicroBatcher("m", model.run).try_now(_row(1), 1) is None
        held = MicroBatcher("m", model.run, max_wait_s=0.01, run_now=failing)
        assert held.try_now(_row(1), 1) is None  # a batch held open is waited for

    asyncio.run(main())


def test_a_full_queue_frees_the_slots_of_callers_who_gave_up_before_shedding() -> None:
    async def main() -> None:
        model = Model(delay=0.05)
        batcher = MicroBatcher("m", model.run, max_in_flight=1, max_batch_rows=1, max_queued=3)
        first = asyncio.create_task(batcher.submit(_row(0), 1))
        await asyncio.sleep(0.01)  # first is running; the next ones queue
        doomed = [asyncio.create_task(batcher.submit(_row(i), 1)) for i in range(1, 4)]
        await asyncio.sleep(0)
        assert batcher.queued == 3
        for task in doomed:
            task.cancel()
        await asyncio.sleep(0)
        late = [asyncio.create_task(batcher.submit(_row(i), 1)) for i in range(5, 8)]
        await asyncio.sleep(0)
        assert batcher.queued == 3 and batcher.stats.shed == 0  # the three given up made room
        with pytest.raises(OverloadedError):
            await batcher.submit(_row(9), 1)  # full of live requests: shed
        outputs = await asyncio.gather(first, *late)
        assert [o["y"].tolist() for o in outputs] == [[[0]], [[10]], [[12]], [[14]]]
        assert model.batches == [1, 1, 1, 1]

    asyncio.run(main())


def test_a_batch_runs_with_the_latest_deadline_of_its_requests() -> None:
    """What a remote run reads to decide whether anyone still waits for the batch."""
    seen: list[float | None] = []

    async def run(feeds: Feeds) -> Feeds:
        seen.append(BATCH_DEADLINE.get())
        await asyncio.sleep(0.01)
        return {"y": feeds["x"]}

    async def main() -> None:
        batcher = MicroBatcher("m", run, max_in_flight=1, max_batch_rows=64)
        first = asyncio.create_task(batcher.submit(_row(0), 1, 100.0))  # runs alone, at once
        await asyncio.sleep(0)
        await asyncio.gather(
            first,
            batcher.submit(_row(1), 1, 200.0),
            batcher.submit(_row(2), 1, 300.0),  # these two queue behind it, then go together
        )
        await asyncio.gather(batcher.submit(_row(3), 1, 5.0), batcher.submit(_row(4), 1, None))
        assert BATCH_DEADLINE.get() is None  # nothing leaks into the caller's context

    asyncio.run(main())
    assert seen[:2] == [100.0, 300.0]
    assert None in seen[2:]  # a request without a deadline: the batch has none


def test_slots_grow_and_shrink_with_the_live_replicas() -> None:
    """max_in_flight per live replica: a version scaled to three runs three times the batches
    at once; back at one (or none listed: the handle), max_in_flight."""

    async def main() -> None:
        live = [3]
        running, peak = [0], [0]

        async def run(feeds: Feeds) -> Feeds:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            await asyncio.sleep(0.02)
            running[0] -= 1
            return {"y": feeds["x"]}

        batcher = MicroBatcher(
            "m", run, max_in_flight=2, max_batch_rows=1, replicas=lambda: live[0]
        )
        await asyncio.gather(*(batcher.submit(_row(i), 1) for i in range(40)))
        assert peak[0] == 6
        for now, expected in ((1, 2), (0, 2)):
            live[0], peak[0] = now, 0
            await asyncio.gather(*(batcher.submit(_row(i), 1) for i in range(40)))
            assert peak[0] == expected

    asyncio.run(main())
