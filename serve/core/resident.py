"""Lazily loaded sessions within a budget: what a replica holds of the catalog's models.

A catalog model (serve/core/catalog.py) has no ONNX Runtime session until a batch needs one.
`ResidentSet.acquire` returns the session at once when it is resident (moving it to the front
of the least-recently-used order), else waits for its load, within the batch's deadline:

- loads run in threads, at most `max_loading` at once, so the event loop keeps answering the
  warm models meanwhile; one load per model however many requests wait for it;
- a load that is still pending at a request's deadline goes on (the next request finds the
  session resident); the request gets DEADLINE_EXCEEDED;
- more than `max_pending` loads waiting: a request for yet another cold model is shed at once
  (OVERLOADED, 503 with a retry hint from the loads' measured pace), never queued to hang;
- past `max_resident` sessions, the least recently used one that is not pinned is dropped. A
  batch running on it keeps its reference until it ends: nothing in flight is cut;
- a load that failed (a broken artifact) is answered UNAVAILABLE at once for `retry_failed_s`,
  then tried again: requests for it do not each pay for a load.

Counting sessions rather than bytes keeps the budget predictable for an operator: a small
model's session is a few megabytes of resident memory (loadtests/RESULTS.md measures it), and a
budget in sessions maps to memory by that figure.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from serve.core.errors import ErrorCode, InferenceError
from serve.core.types import Feeds

logger = logging.getLogger("modelgate")

#: A loaded session: runs one batch.
Session = Callable[[Feeds], Feeds]


class Observer(Protocol):
    """What the set tells its metrics (serve/observe/metrics.py: ResidentMetrics)."""

    def loaded(self, key: str, seconds: float, ok: bool) -> None: ...

    def kept(self, key: str) -> None: ...

    def evicted(self, key: str) -> None: ...

    def dropped(self, key: str) -> None: ...

    def resident(self, count: int) -> None: ...


class _Quiet:
    def loaded(self, key: str, seconds: float, ok: bool) -> None:
        pass

    def kept(self, key: str) -> None:
        pass

    def evicted(self, key: str) -> None:
        pass

    def dropped(self, key: str) -> None:
        pass

    def resident(self, count: int) -> None:
        pass


@dataclass
class ResidentStats:
    loads: int = 0
    failed: int = 0
    evictions: int = 0
    shed: int = 0
    load_s_total: float = 0.0


class ResidentSet:
    def __init__(
        self,
        load: Callable[[str], Session],
        max_resident: int,
        max_loading: int = 2,
        max_pending: int = 64,
        pinned: Iterable[str] = (),
        observer: Observer | None = None,
        retry_failed_s: float = 5.0,
    ) -> None:
        if max_resident < 1 or max_loading < 1 or max_pending < 1:
            raise ValueError("max_resident, max_loading and max_pending must be at least 1")
        self._load_fn = load
        self.max_resident = max_resident
        self.max_loading = max_loading
        self.max_pending = max_pending
        self.pinned = set(pinned)
        self._resident: OrderedDict[str, Session] = OrderedDict()
        self._loading: dict[str, asyncio.Future[Session]] = {}
        self._slots: asyncio.Semaphore | None = None
        self._dropped: set[str] = set()  # discarded while loading: not kept when it ends
        self.observer: Observer = observer or _Quiet()
        self.stats = ResidentStats()
        #: A load that failed is not tried again for this long: its error is answered at once.
        self.retry_failed_s = retry_failed_s
        self._failed: dict[str, tuple[float, InferenceError]] = {}

    # -- reading ------------------------------------------------------------------------------
    def get(self, key: str) -> Session | None:
        """The session if resident (now the most recently used), else None."""
        session = self._resident.get(key)
        if session is not None:
            self._resident.move_to_end(key)
        return session

    @property
    def resident(self) -> list[str]:
        """Resident keys, least recently used first."""
        return list(self._resident)

    @property
    def loading(self) -> list[str]:
        return list(self._loading)

    def load_s(self) -> float:
        """The mean load time so far (a guess of 0.1 s before the first)."""
        done = self.stats.loads + self.stats.failed
        return self.stats.load_s_total / done if done else 0.1

    # -- loading ------------------------------------------------------------------------------
    async def acquire(self, key: str, deadline: float | None = None) -> Session:
        """The session of `key`, loaded first if need be, by `deadline` (time.monotonic())."""
        session = self.get(key)
        if session is not None:
            return session
        failed = self._failed.get(key)
        if failed is not None:
            if time.monotonic() - failed[0] < self.retry_failed_s:
                raise InferenceError(failed[1].code, failed[1].message, retry_after_s=1.0)
            del self._failed[key]
        future = self._loading.get(key) or self._start(key)
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise _late(key)
        try:
            async with asyncio.timeout(remaining):
                return await asyncio.shield(future)
        except TimeoutError:
            raise _late(key) from None

    def warm(self, keys: Iterable[str]) -> None:
        """Start loading `keys` (pinned and pre-warmed models) without waiting for them."""
        for key in keys:
            idle = key not in self._resident and key not in self._loading
            if idle and len(self._loading) < self.max_pending:
                self._start(key).add_done_callback(_retrieve)

    def _start(self, key: str) -> asyncio.Future[Session]:
        if len(self._loading) >= self.max_pending:
            self.stats.shed += 1
            retry = max(1.0, self.load_s() * len(self._loading) / self.max_loading)
            raise InferenceError(
                ErrorCode.OVERLOADED,
                f"model {key} is not loaded and {len(self._loading)} loads are waiting "
                f"(at most {self.max_pending}; {self.max_loading} at once): try again later",
                retry_after_s=round(retry, 1),
            )
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_loading)
        future: asyncio.Future[Session] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        self._dropped.discard(key)
        asyncio.get_running_loop().create_task(self._load(key, future, self._slots))
        return future

    async def _load(
        self, key: str, future: asyncio.Future[Session], slots: asyncio.Semaphore
    ) -> None:
        try:
            async with slots:
                started = time.monotonic()
                try:
                    session = await asyncio.to_thread(self._load_fn, key)
                except Exception as exc:
                    seconds = time.monotonic() - started
                    self.stats.failed += 1
                    self.stats.load_s_total += seconds
                    self.observer.loaded(key, seconds, ok=False)
                    logger.error("could not load %s: %s", key, exc)
                    error = exc if isinstance(exc, InferenceError) else _unloadable(key, exc)
                    self._failed[key] = (time.monotonic(), error)
                    future.set_exception(error)
                    future.exception()  # retrieved: nobody may be waiting any more
                    return
                seconds = time.monotonic() - started
                self.stats.loads += 1
                self.stats.load_s_total += seconds
                self.observer.loaded(key, seconds, ok=True)
        except asyncio.CancelledError:  # the loop is stopping
            future.cancel()
            raise
        finally:
            self._loading.pop(key, None)
        if key in self._dropped:  # removed from the catalog while it loaded
            self._dropped.discard(key)
        else:
            self._resident[key] = session
            self.observer.kept(key)
            self._evict()
        self.observer.resident(len(self._resident))
        future.set_result(session)

    # -- dropping -----------------------------------------------------------------------------
    def _evict(self) -> None:
        while len(self._resident) > self.max_resident:
            victim = next((k for k in self._resident if k not in self.pinned), None)
            if victim is None:  # every resident session is pinned
                return
            del self._resident[victim]
            self.stats.evictions += 1
            self.observer.evicted(victim)

    def discard(self, key: str) -> None:
        """`key` left the catalog: drop its session (a load under way is not kept)."""
        if self._resident.pop(key, None) is not None:
            self.observer.dropped(key)
            self.observer.resident(len(self._resident))
        if key in self._loading:
            self._dropped.add(key)
        self.pinned.discard(key)
        self._failed.pop(key, None)


def _retrieve(future: asyncio.Future[Session]) -> None:
    if not future.cancelled():
        future.exception()


def _late(key: str) -> InferenceError:
    return InferenceError(
        ErrorCode.DEADLINE_EXCEEDED,
        f"model {key} was not loaded by the request's deadline (its load goes on)",
    )


def _unloadable(key: str, exc: Exception) -> InferenceError:
    return InferenceError(
        ErrorCode.UNAVAILABLE, f"model {key} could not be loaded: {exc}", retry_after_s=1.0
    )
