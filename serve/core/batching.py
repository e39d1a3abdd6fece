"""Micro-batching: requests for one version coalesce into one run (or one handle call).

At most `max_in_flight` calls run at once, per replica when the version runs on replicas of its
own (`replicas`: how many are live now, so that each one the version scales to adds capacity).
A request that finds the queue empty and a slot free
runs at once in its own task (no hand-off: an idle gateway adds no wait); for a version that runs
in process (`run_now`), `try_now` runs it in the caller's stack, with no task and no timer.
Otherwise it queues, and one worker task, which owns the queue, sends queued requests together
as soon as a slot frees: a busy gateway batches harder.
`max_wait_s` > 0 additionally holds a batch open, from its first request (monotonic clock), until
it is full or the wait is over. Bounded: past `max_queued` requests, `submit` sheds at once.
Cancelled requests are dropped before compute; results are set only on futures not yet done.
While a batch runs, `BATCH_DEADLINE` holds the latest of its requests' deadlines (monotonic
clock; None when one has none): past it, no one is left to answer, and the run may refuse.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np

from serve.core.errors import BehindTargetError, InferenceError, OverloadedError
from serve.core.pacing import LatencyTarget
from serve.core.types import Feeds

RunBatch = Callable[[Feeds], Awaitable[Feeds]]
RunNow = Callable[[Feeds], Feeds]
#: The running batch's deadline: time.monotonic() past which every request in it has expired.
BATCH_DEADLINE: ContextVar[float | None] = ContextVar("modelgate_batch_deadline", default=None)


@dataclass
class BatchStats:
    """What a batcher has done: for metrics and the statistics extension."""

    batches: int = 0
    requests: int = 0
    rows: int = 0
    queue_s: float = 0.0
    compute_s: float = 0.0
    shed: int = 0


@dataclass
class _Queued:
    feeds: Feeds
    rows: int
    future: asyncio.Future[Feeds]
    enqueued: float
    deadline: float | None


class MicroBatcher:
    def __init__(
        self,
        name: str,
        run: RunBatch,
        *,
        max_batch_rows: int = 256,
        max_wait_s: float = 0.0,
        max_in_flight: int = 2,
        max_queued: int = 1024,
        on_batch: Callable[[int, int, float, float], None] | None = None,
        run_now: RunNow | None = None,
        replicas: Callable[[], int] | None = None,
        target_s: float | None = None,
        on_pace: Callable[[int, int, float], None] | None = None,
    ) -> None:
        """`run_now`: the same computation as `run`, synchronous (a version in process).
        `replicas`: the version's live replicas, read at each decision (at least one counts).
        `target_s`: a latency target for answered requests (serve/core/pacing.py): batch
        sizes, batches in flight and admission adapt to it; `on_pace` hears what it decides
        after each call (rows a batch may hold, batches in flight per replica, a call's cost
        at the tail)."""
        self.name = name
        self._run = run
        self._run_now = run_now
        self._max_rows = max_batch_rows
        self._max_wait = max_wait_s
        self._max_queued = max_queued
        self._max_in_flight = max_in_flight
        self._replicas = replicas
        self._in_flight = 0
        self._busy = 0  # requests in the calls running now
        self._queue: deque[_Queued] = deque()
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._calls: dict[object, tuple[float, int]] = {}  # in flight: when each left, rows
        self._on_batch = on_batch
        self._pace = (
            None if target_s is None else LatencyTarget(target_s, max_batch_rows, max_in_flight)
        )
        self._on_pace = on_pace
        self.stats = BatchStats()

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def demand(self) -> int:
        """Requests this batcher holds now: queued, or in a call running."""
        return len(self._queue) + self._busy

    @property
    def slots(self) -> int:
        """Calls that may run at once now: max_in_flight for each live replica (fewer while a
        latency target asks)."""
        flight = self._max_in_flight if self._pace is None else self._pace.flight
        return flight * self._live()

    def try_now(self, feeds: Feeds, rows: int) -> Feeds | None:
        """The answer, computed now in the caller's stack when the version runs in process and
        nothing waits before this request; None when it has to go through `submit`. Nothing
        else runs on the event loop meanwhile, so no slot is taken and no deadline can pass
        while it waits: it does not wait."""
        if (
            self._run_now is None
            or self._queue
            or self._in_flight >= self.slots
            or self._max_wait > 0
        ):
            return None
        started = time.monotonic()
        try:
            return self._run_now(feeds)
        finally:
            self._record(1, rows, 0.0, time.monotonic() - started)

    async def submit(self, feeds: Feeds, rows: int, deadline: float | None = None) -> Feeds:
        """The answer; `deadline` (time.monotonic()) is the request's, for BATCH_DEADLINE."""
        if not self._queue and self._in_flight < self.slots and self._max_wait == 0:
            return await self._direct(feeds, rows, deadline)
        if len(self._queue) >= self._max_queued and not self._drop_abandoned():
            self.stats.shed += 1
            raise OverloadedError(self.name, len(self._queue), self._max_queued)
        if self._pace is not None:
            self._admit(self._pace, rows)
        future: asyncio.Future[Feeds] = asyncio.get_running_loop().create_future()
        self._queue.append(_Queued(feeds, rows, future, time.monotonic(), deadline))
        self._wakeup.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._loop(), name=f"batcher:{self.name}")
        return await future

    def _admit(self, pace: LatencyTarget, rows: int) -> None:
        """Sheds a request that the latency target says would be answered too late."""
        slots = pace.trusted * self._live()  # what more in flight may add is not counted yet
        ahead = sum(p.rows for p in self._queue)
        predicted = pace.predicted_s(ahead, rows, slots, busy=self._in_flight >= slots)
        if predicted > pace.plan_s:
            self.stats.shed += 1
            raise BehindTargetError(self.name, predicted, pace.target_s, len(self._queue))

    def _drop_abandoned(self) -> bool:
        """Frees the queue slots of requests whose callers gave up (their futures are done);
        whether any was freed. Otherwise they leave only when the next batch is taken."""
        live = deque(p for p in self._queue if not p.future.done())
        freed = len(live) < len(self._queue)
        self._queue = live
        return freed

    async def _direct(self, feeds: Feeds, rows: int, deadline: float | None) -> Feeds:
        self._in_flight += 1
        alone = self._alone()
        self._busy += 1
        started = time.monotonic()
        call, ahead_s = self._leave(started, rows)
        token = BATCH_DEADLINE.set(deadline)
        try:
            return await self._run(feeds)
        finally:
            BATCH_DEADLINE.reset(token)
            self._busy -= 1
            del self._calls[call]
            self._release()
            self._record(1, rows, 0.0, time.monotonic() - started, alone, ahead_s)

    def _leave(self, now: float, rows: int) -> tuple[object, float]:
        """A call of `rows` rows leaves now: its entry among the calls in flight (deleted
        when it ends), and the least that a call already in flight has left to run by the
        latency target's line (0 without a target)."""
        ahead = 0.0
        if self._pace is not None and self._calls:
            pace = self._pace
            ahead = min(pace.remaining_s(r, now - at) for at, r in self._calls.values())
        call = object()
        self._calls[call] = (now, rows)
        return call, ahead

    def _live(self) -> int:
        return 1 if self._replicas is None else max(1, self._replicas())

    def _alone(self) -> bool:
        """Whether a call leaving now has a replica to itself (no more calls than replicas)."""
        return self._in_flight <= self._live()

    def _release(self, _: object = None) -> None:
        self._in_flight -= 1
        self._wakeup.set()  # a slot is free: the worker sends what queued meanwhile

    async def _loop(self) -> None:
        while True:
            while not self._queue or self._in_flight >= self.slots:
                self._wakeup.clear()
                await self._wakeup.wait()
            if self._max_wait > 0:
                await self._hold_open()
            batch = self._take()
            if not batch:
                continue
            self._in_flight += 1
            task = asyncio.create_task(self._execute(batch, self._alone()))
            # The loop keeps only a weak reference to a task: one waiting on a future that
            # nothing else holds (a socket read, say) would be garbage collected mid-flight.
            self._running.add(task)
            task.add_done_callback(self._running.discard)
            task.add_done_callback(self._release)

    async def _hold_open(self) -> None:
        deadline = self._queue[0].enqueued + self._max_wait
        while sum(p.rows for p in self._queue) < self._batch_rows():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    def _batch_rows(self) -> int:
        return self._max_rows if self._pace is None else self._pace.batch_rows()

    def _take(self) -> list[_Queued]:
        """Up to max_batch_rows rows (fewer while a latency target asks) of live requests
        whose tensors can be concatenated."""
        batch: list[_Queued] = []
        rows = 0
        key = None
        skipped: deque[_Queued] = deque()
        max_rows = self._batch_rows()
        now = time.monotonic()
        company = self._in_flight >= self._live()  # the batch would leave beside others
        while self._queue:
            pending = self._queue.popleft()
            if pending.future.done():  # cancelled by its caller: never computed
                continue
            if self._pace is not None and self._pace.too_late(
                now - pending.enqueued, max_rows, company
            ):
                self.stats.shed += 1
                pending.future.set_exception(
                    BehindTargetError(
                        self.name,
                        now - pending.enqueued + self._pace.cost_hi(max_rows),
                        self._pace.target_s,
                        len(self._queue),
                    )
                )
                continue
            pending_key = _concat_key(pending.feeds)
            if batch and (pending_key != key or rows + pending.rows > max_rows):
                skipped.append(pending)
                if rows + pending.rows > max_rows:
                    break
                continue
            key = pending_key
            batch.append(pending)
            rows += pending.rows
        self._queue.extendleft(reversed(skipped))
        return batch

    async def _execute(self, batch: list[_Queued], alone: bool = True) -> None:
        started = time.monotonic()
        queue_s = sum(started - p.enqueued for p in batch) / len(batch)
        rows = sum(p.rows for p in batch)
        call, ahead_s = self._leave(started, rows)
        BATCH_DEADLINE.set(_latest(p.deadline for p in batch))
        self._busy += len(batch)
        try:
            results = await self._run_split(batch)
        except Exception as exc:  # the whole call failed: every request in it gets the error
            results = [exc] * len(batch)
        finally:
            self._busy -= len(batch)
            del self._calls[call]
        compute_s = time.monotonic() - started
        self._record(len(batch), rows, queue_s, compute_s, alone, ahead_s)
        for pending, result in zip(batch, results, strict=True):
            if pending.future.done():
                continue
            if isinstance(result, BaseException):
                pending.future.set_exception(result)
            else:
                pending.future.set_result(result)

    async def _run_split(self, batch: list[_Queued]) -> list[Feeds | Exception]:
        if len(batch) == 1:
            return [await self._run(batch[0].feeds)]
        names = list(batch[0].feeds)
        feeds = {n: np.concatenate([p.feeds[n] for p in batch]) for n in names}
        total = sum(p.rows for p in batch)
        try:
            outputs = await self._run(feeds)
        except InferenceError:
            return await self._one_by_one(batch)  # find the culprit; batch-mates still succeed
        if any(v.shape[:1] != (total,) for v in outputs.values()):
            return await self._one_by_one(batch)
        cuts = np.cumsum([p.rows for p in batch])[:-1]
        split = {n: np.split(v, cuts) for n, v in outputs.items()}
        return [{n: split[n][i] for n in split} for i in range(len(batch))]

    async def _one_by_one(self, batch: list[_Queued]) -> list[Feeds | Exception]:
        results: list[Feeds | Exception] = []
        for pending in batch:
            try:
                results.append(await self._run(pending.feeds))
            except Exception as exc:
                results.append(exc)
        return results

    def _record(
        self,
        requests: int,
        rows: int,
        queue_s: float,
        compute_s: float,
        alone: bool = True,
        ahead_s: float = 0.0,
    ) -> None:
        if self._pace is not None:
            self._pace.observe(rows, compute_s, alone, ahead_s)
            if self._on_pace is not None:
                limit = self._pace.batch_rows()
                self._on_pace(limit, self._pace.flight, self._pace.cost_hi(limit))
        self.stats.batches += 1
        self.stats.requests += requests
        self.stats.rows += rows
        self.stats.queue_s += queue_s * requests
        self.stats.compute_s += compute_s
        if self._on_batch is not None:
            self._on_batch(requests, rows, queue_s, compute_s)


def _latest(deadlines: Iterable[float | None]) -> float | None:
    """The batch's deadline: its requests' latest, or None if one of them has none."""
    latest = 0.0
    for deadline in deadlines:
        if deadline is None:
            return None
        latest = max(latest, deadline)
    return latest


def _concat_key(feeds: Feeds) -> tuple[tuple[str, tuple[int, ...], str], ...]:
    return tuple((n, v.shape[1:], v.dtype.str) for n, v in feeds.items())
