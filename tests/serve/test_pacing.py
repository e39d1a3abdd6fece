"""Batching to a latency target (serve/core/pacing.py, used by serve/core/batching.py): what it
learns from calls, what it decides, and a batcher under a burst with and without a target."""

from __future__ import annotations

import asyncio
import gc
import time

import numpy as np
import pytest

from serve.core.batching import MicroBatcher
from serve.core.errors import BehindTargetError, OverloadedError
from serve.core.pacing import CONFIRM, PROBE_EVERY, LatencyTarget

Feeds = dict[str, np.ndarray]


def test_it_learns_a_calls_fixed_and_per_row_cost_and_sizes_batches_to_half_the_target() -> None:
    pace = LatencyTarget(target_s=0.1, max_batch_rows=256, max_in_flight=2)
    assert pace.batch_rows() == 256 and pace.predicted_s(500, 1, 1, busy=True) == 0  # unknown
    for rows in [1, 10, 5, 20, 2, 8] * 20:
        pace.observe(rows, 0.010 + 0.001 * rows)
    assert pace.cost(0) == pytest.approx(0.010, abs=1e-4)
    assert pace.cost(30) == pytest.approx(0.040, abs=1e-4)
    # it plans for 90% of the target (PLAN): 10 ms + 35 × 1 ms is half of 90 ms
    assert pace.batch_rows() == 35
    # 100 rows ahead in batches of 35, two slots: 2 rounds, one more behind the calls in flight
    assert pace.predicted_s(100, 1, slots=2, busy=True) == pytest.approx(3 * 0.045, rel=1e-3)
    assert pace.too_late(0.044, 35) is False and pace.too_late(0.046, 35) is True


def test_one_batch_size_seen_gives_a_proportional_cost_and_slow_calls_widen_the_margin() -> None:
    pace = LatencyTarget(target_s=0.2, max_batch_rows=64, max_in_flight=2)
    for _ in range(64):
        pace.observe(4, 0.020)
    assert pace.cost(8) == pytest.approx(0.040, rel=0.01)
    assert pace.batch_rows() == 18  # 90 ms at 5 ms a row
    for i in range(64):  # one call in eight waits behind another inside the replica
        pace.observe(4, 0.040 if i % 8 == 0 else 0.020)
    assert pace.cost_hi(4) > 1.5 * pace.cost(4)  # the tail, not the mean
    assert pace.batch_rows() < 12


def test_one_more_in_flight_is_tried_now_and_then_and_given_back_when_company_queues() -> None:
    pace = LatencyTarget(target_s=0.1, max_batch_rows=8, max_in_flight=3)
    assert pace.flight == 1  # it starts with a replica to each call
    for _ in range(PROBE_EVERY):
        pace.observe(4, 0.010)
    assert pace.flight == 2 and pace.trusted == 1  # tried, not trusted yet
    assert pace.too_late(0.075, 4) is False
    assert pace.too_late(0.075, 4, company=True) is True  # it may wait behind the call ahead
    for _ in range(CONFIRM):  # in company, at the line's pace: a replica that runs two at once
        pace.observe(4, 0.011, alone=False, ahead_s=0.008)
    assert pace.flight == pace.trusted == 2
    assert pace.too_late(0.075, 4, company=True) is False
    for _ in range(PROBE_EVERY):
        pace.observe(4, 0.010)
    assert pace.flight == 3  # never above max_in_flight
    for _ in range(PROBE_EVERY):
        pace.observe(4, 0.010)
    assert pace.flight == 3
    pace.observe(4, 0.020, alone=False)  # it waited behind another inside the replica
    assert pace.flight == pace.trusted == 2
    pace.observe(4, 0.020, alone=False)
    pace.observe(4, 0.020, alone=False)
    assert pace.flight == pace.trusted == 1  # never below one
    assert pace.cost(4) == pytest.approx(0.010)  # company never taught the line


def test_company_beside_a_call_ending_tells_nothing_and_waiting_behind_one_gives_back() -> None:
    pace = LatencyTarget(target_s=0.1, max_batch_rows=8, max_in_flight=2)
    for _ in range(PROBE_EVERY):
        pace.observe(4, 0.010)
    assert pace.flight == 2 and pace.trusted == 1
    # A replica that computes one call at a time: beside a call with 1 ms left, a call takes
    # its own 10 ms and that 1 ms, which looks like a replica running two at once.
    for _ in range(2 * CONFIRM):
        pace.observe(4, 0.011, alone=False, ahead_s=0.001)
    assert pace.flight == 2 and pace.trusted == 1  # not trusted on calls that cannot tell
    # Beside a call with 8 ms left, it takes 14.5 ms: within SLOWER times its own cost, but
    # more than its own and half of what was ahead of it: it waited for that call.
    pace.observe(4, 0.0145, alone=False, ahead_s=0.008)
    assert pace.flight == pace.trusted == 1


def test_no_slope_to_tell_overestimates_larger_batches_rather_than_allowing_any() -> None:
    pace = LatencyTarget(target_s=0.1, max_batch_rows=256, max_in_flight=2)
    for i in range(64):  # small batches whose noise hides the per-row cost
        pace.observe(1 + i % 2, 0.010 if i % 2 else 0.011)
    assert pace.batch_rows() < 256
    assert pace.cost(30) > 0.1


class Model:
    """A stand-in replica: one call at a time, 5 ms + 1 ms a row."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()

    async def run(self, feeds: Feeds) -> Feeds:
        async with self.lock:
            await asyncio.sleep(0.005 + 0.001 * len(feeds["x"]))
        return {"y": feeds["x"] * 2}


async def _burst(batcher: MicroBatcher, rate: float, seconds: float) -> tuple[list[float], int]:
    """Open loop at `rate` a second; the latencies of the answers, and the requests shed."""
    latencies: list[float] = []
    shed = 0

    async def one(i: int) -> None:
        nonlocal shed
        sent = time.monotonic()
        try:
            out = await batcher.submit({"x": np.full((1, 1), i, np.float32)}, 1)
        except OverloadedError:
            shed += 1
            return
        assert out["y"][0, 0] == 2 * i  # each its own answer
        latencies.append(time.monotonic() - sent)

    tasks, start = [], time.monotonic()
    for i in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    return latencies, shed


def test_a_burst_past_capacity_keeps_the_answered_p99_under_the_target_by_shedding() -> None:
    target_s = 0.1

    async def main(target: float | None) -> tuple[list[float], int]:
        model = Model()
        batcher = MicroBatcher(
            "m", model.run, max_batch_rows=256, max_in_flight=2, max_queued=4096, target_s=target
        )
        await _burst(batcher, rate=100, seconds=0.5)  # it learns the model's cost
        return await _burst(batcher, rate=3000, seconds=1.0)

    # The generator shares the event loop with the stand-in replica: its thousands of tasks
    # would set off the garbage collector's pauses inside the stand-in's calls, which no
    # replica (another process) has.
    gc.disable()
    try:
        latencies, shed = asyncio.run(main(target_s))
    finally:
        gc.enable()
    p99 = float(np.percentile(latencies, 99))
    # Batches of at most ~40 rows (half of 90 ms), one call at a time: under 900 rows/s, so
    # most of the 3,000 a second cannot make it and are shed at once; the rest are answered in
    # time.
    assert p99 < target_s, p99
    assert 0 < shed < 3000 and len(latencies) >= 600, (shed, len(latencies))
    # The same burst without a target: nothing shed, the queue ages, the p99 passes it.
    latencies, shed = asyncio.run(main(None))
    assert shed == 0 and float(np.percentile(latencies, 99)) > target_s


def test_a_request_that_waited_past_its_share_is_shed_when_its_batch_forms() -> None:
    async def main() -> None:
        model = Model()
        batcher = MicroBatcher("m", model.run, max_batch_rows=4, max_in_flight=1, target_s=0.05)
        for i in range(10):
            await batcher.submit({"x": np.full((1, 1), i, np.float32)}, 1)
        pace = batcher._pace
        assert pace is not None and pace.known
        # the model slows down tenfold: what was admitted on the old estimate waits too long
        slow = model.run

        async def slower(feeds: Feeds) -> Feeds:
            await asyncio.sleep(0.06)
            return await slow(feeds)

        batcher._run = slower
        results = await asyncio.gather(
            *(batcher.submit({"x": np.full((1, 1), i, np.float32)}, 1) for i in range(12)),
            return_exceptions=True,
        )
        refused = [r for r in results if isinstance(r, BehindTargetError)]
        assert refused and "latency target of 50 ms" in str(refused[0])
        assert all(isinstance(r, dict | BehindTargetError) for r in results)

    asyncio.run(main())
