"""Batching to a latency target (serve/core/pacing.py, used by serve/core/batching.py): what it
learns from calls, what it decides, and a batcher under a burst with and without a target."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from serve.core.batching import MicroBatcher
from serve.core.errors import BehindTargetError, OverloadedError
from serve.core.pacing import LatencyTarget

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


def test_calls_in_flight_halve_when_one_runs_past_half_the_target_and_creep_back() -> None:
    pace = LatencyTarget(target_s=0.1, max_batch_rows=8, max_in_flight=8)
    pace.observe(1, 0.06)
    assert pace.flight == 4
    pace.observe(1, 0.06)
    pace.observe(1, 0.06)
    pace.observe(1, 0.06)
    assert pace.flight == 1  # never below one
    pace.observe(1, 0.03)  # between a quarter and a half: kept
    assert pace.flight == 1
    for _ in range(20):
        pace.observe(1, 0.01)
    assert pace.flight == 8  # never above max_in_flight


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

    latencies, shed = asyncio.run(main(target_s))
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
