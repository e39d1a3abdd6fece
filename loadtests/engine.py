"""One load step: closed loop (N clients back to back) or open loop (a target arrival rate).

Open loop measures each request from its *intended* send time (constant or Poisson arrivals
from the step's start), so a server that stalls cannot hide the queue it causes (no coordinated
omission): a send that leaves more than `late_ms` after its intended time, because the
generator was busy or every connection was taken, is counted as late, and its latency still
runs from the intended time. Latencies of successful answers go to an HDR histogram
(microseconds, 3 significant digits); errors are counted by kind. Only requests intended (open)
or sent (closed) after the warm-up and before the end of the step are measured. Every step is
bounded by its duration, its request budget and the per-request timeout, and stops by itself.

An open-loop step may burst: for the first `burst_s` of every `burst_every_s` of its measured
window it sends at `burst_rate` instead of `rate`; the successful answers that arrive during
the bursts give the goodput the server kept up while overloaded.
"""

from __future__ import annotations

import asyncio
import base64
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from hdrh.histogram import HdrHistogram

from loadtests.clients import Sender
from loadtests.payload import Payload

MAX_LATENCY_US = 120_000_000
PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)


def new_histogram() -> HdrHistogram:
    return HdrHistogram(1, MAX_LATENCY_US, 3)


@dataclass(frozen=True)
class Step:
    mode: Literal["closed", "open"]
    concurrency: int = 8  # closed: clients; open: the most requests in flight
    rate: float = 0.0  # open: requests per second
    arrival: Literal["constant", "poisson"] = "constant"
    duration_s: float = 10.0
    warmup_s: float = 2.0
    max_requests: int = 1_000_000
    timeout_s: float = 10.0
    late_ms: float = 10.0
    seed: int = 0
    burst_rate: float = 0.0  # open: the rate during bursts (0: no bursts)
    burst_s: float = 0.0
    burst_every_s: float = 0.0

    def bursting(self, since_measure_s: float) -> bool:
        """Whether a burst runs this long after the measured window opened."""
        if self.burst_rate <= 0 or self.burst_every_s <= 0 or since_measure_s < 0:
            return False
        return since_measure_s % self.burst_every_s < self.burst_s

    def next_change(self, since_measure_s: float) -> float:
        """The next instant after this one (seconds from the window's opening) where the rate
        may change: the window's opening, a burst's start or end, the window's end."""
        if since_measure_s < 0:
            return 0.0
        end = self.duration_s
        if self.burst_rate <= 0 or self.burst_every_s <= 0:
            return end
        whole, into = divmod(since_measure_s, self.burst_every_s)
        start = whole * self.burst_every_s
        return min(end, start + (self.burst_s if into < self.burst_s else self.burst_every_s))

    @property
    def burst_seconds(self) -> float:
        """How long the bursts inside the measured window last, together."""
        if self.burst_rate <= 0 or self.burst_every_s <= 0:
            return 0.0
        whole, rest = divmod(self.duration_s, self.burst_every_s)
        return whole * self.burst_s + min(rest, self.burst_s)

    def share(self, part: int, parts: int) -> Step:
        """This step as one of `parts` generator processes runs it."""
        from dataclasses import replace

        concurrency = self.concurrency // parts + (part < self.concurrency % parts)
        return replace(
            self,
            concurrency=max(1, concurrency),
            rate=self.rate / parts,
            burst_rate=self.burst_rate / parts,
            max_requests=max(1, self.max_requests // parts),
            seed=self.seed * 1000 + part,
        )


@dataclass
class StepResult:
    step: Step
    histogram: HdrHistogram = field(default_factory=new_histogram)
    outcomes: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    late: int = 0
    completed_ok: int = 0  # successful answers that arrived inside the measured window
    offered: int = 0  # open loop: requests due inside the window (Poisson: varies around rate)
    burst_ok: int = 0  # successful answers that arrived inside a burst
    where: str = ""  # the generator's host (its node's address, for a Ray task)
    #: The first answer of each failed outcome (the sender's `answers`).
    answers: dict[str, str] = field(default_factory=dict)
    #: Merged: each generator's share (where it ran, what it sent and measured).
    shares: list[dict[str, Any]] = field(default_factory=list)

    # -- combining the results of several generator processes ----------------------------------
    def to_wire(self) -> dict[str, Any]:
        return {
            "step": asdict(self.step),
            "histogram": base64.b64encode(self.histogram.encode()).decode(),
            "outcomes": dict(self.outcomes),
            "sent": self.sent,
            "late": self.late,
            "completed_ok": self.completed_ok,
            "offered": self.offered,
            "burst_ok": self.burst_ok,
            "where": self.where,
            "answers": self.answers,
        }

    @classmethod
    def merge(cls, step: Step, parts: list[dict[str, Any]]) -> StepResult:
        merged = cls(step)
        for part in parts:
            merged.histogram.decode_and_add(base64.b64decode(part["histogram"]))
            merged.outcomes.update(part["outcomes"])
            merged.sent += part["sent"]
            merged.late += part["late"]
            merged.completed_ok += part["completed_ok"]
            merged.offered += part["offered"]
            merged.burst_ok += part.get("burst_ok", 0)
            merged.answers = part.get("answers", {}) | merged.answers
            merged.shares.append(
                {
                    "where": part.get("where", ""),
                    "sent": part["sent"],
                    "measured": sum(part["outcomes"].values()),
                }
            )
        return merged

    # -- figures -------------------------------------------------------------------------------
    @property
    def measured(self) -> int:
        return sum(self.outcomes.values())

    @property
    def ok(self) -> int:
        return self.outcomes.get("ok", 0)

    @property
    def errors(self) -> dict[str, int]:
        return {k: v for k, v in sorted(self.outcomes.items()) if k != "ok"}

    @property
    def error_ratio(self) -> float:
        return (self.measured - self.ok) / self.measured if self.measured else 0.0

    @property
    def achieved_rps(self) -> float:
        """Successful answers per second that arrived during the measured window."""
        return self.completed_ok / self.step.duration_s

    @property
    def offered_rps(self) -> float | None:
        """Open loop: the rate of requests due in the window, as drawn (not the nominal rate)."""
        return self.offered / self.step.duration_s if self.step.mode == "open" else None

    @property
    def burst_goodput_rps(self) -> float | None:
        """Successful answers per second that arrived during the bursts (None: no bursts)."""
        seconds = self.step.burst_seconds
        return self.burst_ok / seconds if seconds else None

    def percentile_ms(self, p: float) -> float:
        if self.histogram.get_total_count() == 0:
            return float("nan")
        return float(self.histogram.get_value_at_percentile(p)) / 1000

    def summary(self) -> dict[str, Any]:
        latency: dict[str, float | None] = {f"p{p:g}": self.percentile_ms(p) for p in PERCENTILES}
        latency["max"] = (
            self.histogram.get_max_value() / 1000 if self.histogram.get_total_count() else None
        )
        return {
            "mode": self.step.mode,
            "concurrency": self.step.concurrency,
            "offered_rps": self.offered_rps,
            "achieved_rps": self.achieved_rps,
            "measured": self.measured,
            "ok": self.ok,
            "errors": self.errors,
            "error_ratio": self.error_ratio,
            "late": self.late,
            "sent": self.sent,
            **({"burst_goodput_rps": self.burst_goodput_rps} if self.step.burst_seconds else {}),
            "latency_ms": latency,
            **({"generators": self.shares} if self.shares else {}),
        }


class _Run:
    """Shared state of one step on this generator."""

    def __init__(self, sender: Sender, payloads: list[Payload], step: Step, start: float):
        self.sender, self.payloads, self.step = sender, payloads, step
        self.result = StepResult(step)
        self.measure_from = start + step.warmup_s
        self.end = self.measure_from + step.duration_s
        self.loop = asyncio.get_running_loop()

    def payload(self) -> Payload:
        payload = self.payloads[self.result.sent % len(self.payloads)]
        self.result.sent += 1
        return payload

    def measuring(self, t: float) -> bool:
        return self.measure_from <= t < self.end

    def record(self, since: float, outcome: str) -> None:
        """One answer to a request sent (closed) or due (open) at `since`."""
        now = self.loop.time()
        if outcome == "ok" and self.measuring(now):  # throughput: answers inside the window,
            self.result.completed_ok += 1  # whenever they were sent
            if self.step.bursting(now - self.measure_from):
                self.result.burst_ok += 1
        if not self.measuring(since):
            return
        self.result.outcomes[outcome] += 1
        if outcome == "ok":  # errors are counted by kind, not mixed into the latencies
            elapsed_us = int((now - since) * 1e6)
            self.result.histogram.record_value(min(max(elapsed_us, 1), MAX_LATENCY_US))


async def run_step(
    sender: Sender,
    payloads: list[Payload],
    step: Step,
    progress: Callable[[float], None] | None = None,
) -> StepResult:
    """Run one step; `progress(fraction)` is called about twice a second."""
    loop = asyncio.get_running_loop()
    run = _Run(sender, payloads, step, loop.time())
    ticker = asyncio.create_task(_tick(run, progress)) if progress else None
    try:
        if step.mode == "closed":
            await _closed(run)
        else:
            await _open(run)
    finally:
        if ticker is not None:
            ticker.cancel()
    return run.result


async def _tick(run: _Run, progress: Callable[[float], None]) -> None:
    total = run.end - (run.measure_from - run.step.warmup_s)
    while True:
        elapsed = total - (run.end - run.loop.time())
        progress(min(1.0, elapsed / total))
        await asyncio.sleep(0.5)


async def _closed(run: _Run) -> None:
    async def client() -> None:
        while run.loop.time() < run.end and run.result.sent < run.step.max_requests:
            sent_at = run.loop.time()
            run.record(sent_at, await run.sender(run.payload()))

    await asyncio.gather(*(client() for _ in range(run.step.concurrency)))


#: Seconds below which two instants of a schedule are one (floating-point rounding).
_EPS = 1e-9
#: Seconds within which a constant schedule's next instant is taken to be the edge it nears (a
#: microsecond: far below any period the harness sends at, far above rounding).
_SNAP_S = 1e-6


async def _open(run: _Run) -> None:
    step = run.step
    if step.rate <= 0:
        raise ValueError("an open-loop step needs a rate > 0")
    rng = np.random.default_rng(step.seed)
    slots = asyncio.Semaphore(step.concurrency)
    late_s = step.late_ms / 1000
    pending: set[asyncio.Task[None]] = set()

    async def one(intended: float, payload: Payload) -> None:
        try:
            run.record(intended, await run.sender(payload))
        finally:
            slots.release()

    intended = run.measure_from - step.warmup_s
    while intended < run.end and run.result.sent < step.max_requests:
        delay = intended - run.loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await slots.acquire()
        if run.measuring(intended):
            run.result.offered += 1
            if run.loop.time() - intended > late_s:
                run.result.late += 1
        task = asyncio.create_task(one(intended, run.payload()))
        pending.add(task)
        task.add_done_callback(pending.discard)
        since = intended - run.measure_from + _EPS  # the rate from this instant on
        rate = step.burst_rate if step.bursting(since) else step.rate
        if step.arrival == "poisson":
            intended += rng.exponential(1 / rate)
        else:
            # At constant arrivals a request falls on each edge (the window's, a burst's): the
            # count in the window is its schedule's, whatever the clock's value rounds to.
            # An instant within _SNAP_S of the edge is the edge: summed periods drift from the
            # edge by rounding (by 1e-11 s at a clock of 6,000 s), and an instant that falls
            # just short of the window's end would be one request too many.
            change = run.measure_from + step.next_change(since)
            following = intended + 1 / rate
            intended = change if following > change - _SNAP_S else following
    if pending:  # each send ends within its timeout
        await asyncio.wait(pending, timeout=step.timeout_s + 5)
