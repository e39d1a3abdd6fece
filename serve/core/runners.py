"""What "run this batch" means for each placement: the batcher's `run` for one version.

- colocated: the version's ONNX session in this process (`local`);
- catalog: a session of the replica's resident set, loaded on first use (`lazy`);
- dedicated: its own replicas, through each transport in turn until one takes the batch: the
  direct transport first (serve/transport/direct.py) when the version has it, then the
  platform's handle (Ray Serve's, adapted in serve/ray/app.py), which always takes it;
- a version whose artifact cannot be loaded answers UNAVAILABLE (`unavailable`).

A batch runs within its deadline (BATCH_DEADLINE, the latest of its requests'): one whose
requests have all expired is not sent at all.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from serve.core.batching import BATCH_DEADLINE
from serve.core.errors import ErrorCode, InferenceError
from serve.core.resident import ResidentSet
from serve.core.types import Feeds

#: A version's batch runner, as the batcher calls it.
Runner = Callable[[Feeds], Awaitable[Feeds]]


class Transport(Protocol):
    """One way to a dedicated version's replicas. `run` answers the batch, raises the replica's
    InferenceError, or returns None when this transport cannot take it now (the next is tried).
    `deadline` is time.monotonic() past which no request of the batch waits any more."""

    async def run(self, feeds: Feeds, deadline: float | None) -> Feeds | None: ...


class Counter(Protocol):
    def inc(self) -> None: ...


def expired(where: str) -> InferenceError:
    """A batch with no time left: none of its requests is waiting for it any more."""
    return InferenceError(
        ErrorCode.DEADLINE_EXCEEDED, f"{where}: every request of the batch is past its deadline"
    )


def time_left(where: str, deadline: float | None) -> float | None:
    """Seconds until `deadline` (time.monotonic()); DEADLINE_EXCEEDED when none are left."""
    if deadline is None:
        return None
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise expired(where)
    return remaining


def local(run_now: Callable[[Feeds], Feeds]) -> Runner:
    """A colocated version: its session, in this process."""

    async def run(feeds: Feeds) -> Feeds:
        return run_now(feeds)

    return run


class Placement(Protocol):
    """Where a catalog model's batches run (serve/transport/direct.py: PeerPool): on the router
    replica the model is placed on; None when that is this one, or it could not take it."""

    async def run_model(self, key: str, feeds: Feeds, deadline: float | None) -> Feeds | None: ...


def lazy(
    key: str,
    resident: ResidentSet,
    placement: Placement | None = None,
    counted: tuple[Counter, Counter] | None = None,
    local: bool = True,
) -> Runner:
    """A catalog version: on the replica it is placed on (`placement`), else its session from
    this replica's resident set, loaded first when cold (within the batch's deadline;
    serve/core/resident.py). `counted`: batches sent to a peer, and run here. `local` False
    (a catalog pool): never run here; a batch no placed replica takes is refused UNAVAILABLE
    with a retry hint."""

    async def run(feeds: Feeds) -> Feeds:
        deadline = BATCH_DEADLINE.get()
        if placement is not None:
            outputs = await placement.run_model(key, feeds, deadline)
            if outputs is not None:
                if counted is not None:
                    counted[0].inc()
                return outputs
        if not local:
            raise InferenceError(
                ErrorCode.UNAVAILABLE,
                f"{key}: no catalog pool replica took the batch; try again",
                retry_after_s=1.0,
            )
        if counted is not None:
            counted[1].inc()
        session = resident.get(key) or await resident.acquire(key, deadline)
        return session(feeds)

    return run


def unavailable(name: str, reason: str) -> Runner:
    """A version that cannot run here (its artifact would not load): every batch is refused."""

    async def run(feeds: Feeds) -> Feeds:
        raise InferenceError(ErrorCode.UNAVAILABLE, f"{name} is not ready: {reason}")

    return run


def dedicated(name: str, transports: Sequence[tuple[Transport, Counter]]) -> Runner:
    """A dedicated version: each transport in turn, until one takes the batch; the one that
    took it (answered or raised) counts it."""

    async def run(feeds: Feeds) -> Feeds:
        deadline = BATCH_DEADLINE.get()
        for transport, taken in transports:
            time_left(name, deadline)  # an expired batch is not sent
            try:
                outputs = await transport.run(feeds, deadline)
            except InferenceError:
                taken.inc()
                raise
            if outputs is not None:
                taken.inc()
                return outputs
        raise InferenceError(ErrorCode.UNAVAILABLE, f"{name}: no transport took the batch")

    return run
