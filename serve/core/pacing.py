"""Batching to a latency target: how a batcher keeps its answered requests' p99 under
`batching.target_p99_ms` (serve/core/batching.py asks; this module decides).

It learns what a call costs as a line in its rows, t(b) = fixed + per_row × b, from every call
it makes (exponentially weighted sums, so it follows a replica that slows down or speeds up),
and how much slower than the line calls run at worst: t_hi(b) = t(b) × the 99th percentile of
the last WINDOW calls' ratios to it (a call that waits inside the replica behind another one,
a pause). The p99 is a tail, so every decision uses t_hi, and plans for PLAN (90%) of the
target, the rest being the margin for what no estimate sees. From that:

- **how much it coalesces**: a batch holds at most the rows whose t_hi fits half the plan (a
  request may wait for one call in flight, then ride in the next);
- **how many batches it keeps in flight** per replica, between 1 and `max_in_flight`: it starts
  at one, and the line and its tail are learnt from calls that ran alone on their replica (no
  more calls in flight than replicas). Now and then (every PROBE_EVERY calls alone) it tries
  one more; calls that ran in company and took SLOWER times the line or more (they queued
  inside the replica: a replica that computes one batch at a time gains nothing from company
  but the round trip hidden) take it back down, and so does one that took its own cost and
  half of what the calls ahead of it had left to run (by the line, when it left). CONFIRM
  calls in company that kept the line's pace make it trusted; only a call that left while the
  ones ahead had at least half its own cost left to run tells: beside a call about to end, a
  replica that queues looks like one that does not. Admission counts trusted batches in
  flight only, and a batch that leaves in untrusted company must fit its wait behind the call
  ahead of it too;
- **how many requests it admits**: a request is taken only if its predicted answer, after the
  rows queued ahead of it (in rounds of `slots` batches) and behind the calls in flight, comes
  within the plan; otherwise it is shed at once (503 + Retry-After / UNAVAILABLE). A queued
  request whose age plus its batch's t_hi passes the plan when its batch is formed is shed
  then, never computed late.

Before the first calls it knows nothing and admits as the bounds allow; its first calls teach it.
Shedding is what holds the p99 when the offered load passes capacity: goodput stays at capacity
(the replicas stay busy on requests that can still make it).
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

#: Weight of each new call in the running estimates (about the last 30 calls count).
ALPHA = 1 / 16
#: Calls whose ratio to the line gives the tail, and the quantile taken.
WINDOW, TAIL = 64, 99
#: Calls alone between two tries of one more batch in flight per replica.
PROBE_EVERY = 32
#: Calls in company at the line's pace that make one more in flight trusted.
CONFIRM = 4
#: A call in company this many times slower than the line queued inside its replica.
SLOWER = 1.5
#: The share of the target decisions plan for: the rest is the margin for what no estimate
#: sees (the event loop's own delays, the answer's way back).
PLAN = 0.9


class LatencyTarget:
    def __init__(self, target_s: float, max_batch_rows: int, max_in_flight: int) -> None:
        self.target_s = target_s
        self.plan_s = target_s * PLAN
        self._max_rows = max_batch_rows
        self._max_flight = max_in_flight
        self.flight = 1  # batches in flight per replica now
        self.trusted = 1  # of which proven not to queue inside the replica
        self._paced = 0  # calls in company at the line's pace since the last change
        self._calls = 0  # calls alone, learnt from
        # exponentially weighted means of rows, seconds, rows², rows × seconds
        self._r = self._t = self._rr = self._rt = 0.0
        self._ratios: deque[float] = deque(maxlen=WINDOW)  # each call's seconds / t(rows)
        self._tail = 1.0

    # -- learning ------------------------------------------------------------------------------
    def observe(self, rows: int, seconds: float, alone: bool = True, ahead_s: float = 0.0) -> None:
        """One call done: `rows` in `seconds` (its round trip); `alone`: no more calls were in
        flight than replicas when it left; `ahead_s`: then, the least that any call in flight
        had left to run by the line (`remaining_s`)."""
        if not alone:
            self._company(rows, seconds, ahead_s)
            return
        if self._calls:
            self._ratios.append(seconds / max(self.cost(rows), 1e-9))
            if self._calls % 8 == 0 or len(self._ratios) < 8:
                self._tail = max(1.0, float(np.percentile(self._ratios, TAIL)))
        a = 1.0 if self._calls == 0 else ALPHA
        self._r += a * (rows - self._r)
        self._t += a * (seconds - self._t)
        self._rr += a * (rows * rows - self._rr)
        self._rt += a * (rows * seconds - self._rt)
        self._calls += 1
        if self._calls % PROBE_EVERY == 0 and self.flight < self._max_flight:
            self.flight += 1
            self._paced = 0

    def _company(self, rows: int, seconds: float, ahead_s: float) -> None:
        if not self.known:
            return
        own = self.cost(rows)
        telling = ahead_s >= own / 2  # a replica that queues would have shown it
        if seconds > SLOWER * own or (telling and seconds > own + ahead_s / 2):
            self.flight = max(1, self.flight - 1)  # it queued: company costs latency
            self.trusted = min(self.trusted, self.flight)
            self._paced = 0
            return
        if not telling:
            return
        self._paced += 1
        if self._paced >= CONFIRM:
            self.trusted = self.flight

    def remaining_s(self, rows: int, running_s: float) -> float:
        """What a call of `rows` rows that has run `running_s` has left, by the line."""
        return max(0.0, self.cost(rows) - running_s) if self.known else 0.0

    @property
    def known(self) -> bool:
        return self._calls > 0

    def _line(self) -> tuple[float, float]:
        """(fixed, per_row) seconds of a call."""
        variance = self._rr - self._r * self._r
        if variance > 1e-9 * max(1.0, self._r * self._r):
            per_row = (self._rt - self._r * self._t) / variance
            if per_row > 0:
                return max(0.0, self._t - per_row * self._r), per_row
        # one batch size seen, or no slope to tell (noise): proportional, which overestimates
        # larger batches rather than letting them run long
        return 0.0, self._t / max(self._r, 1.0)

    def cost(self, rows: int) -> float:
        """Expected seconds of a call of `rows` rows."""
        fixed, per_row = self._line()
        return fixed + per_row * rows

    def cost_hi(self, rows: int) -> float:
        """What a call of `rows` rows may take, at the tail."""
        return self.cost(rows) * self._tail

    # -- deciding ------------------------------------------------------------------------------
    def batch_rows(self) -> int:
        """The most rows a batch may hold now."""
        if not self.known:
            return self._max_rows
        fixed, per_row = self._line()
        budget = self.plan_s / 2 / self._tail - fixed
        if per_row <= 0:
            return self._max_rows
        return max(1, min(self._max_rows, math.floor(budget / per_row + 1e-9)))

    def predicted_s(self, rows_ahead: int, rows: int, slots: int, busy: bool) -> float:
        """When a request of `rows` rows, with `rows_ahead` queued before it, would be
        answered: the calls in flight first when every slot is busy, then rounds of `slots`
        batches."""
        if not self.known:
            return 0.0
        batch = self.batch_rows()
        batches = math.ceil((rows_ahead + rows) / batch)
        rounds = math.ceil(batches / max(1, slots)) + (1 if busy else 0)
        return rounds * self.cost_hi(batch)

    def too_late(self, age_s: float, batch_rows: int, company: bool = False) -> bool:
        """Whether a request queued `age_s` ago would be answered past the target in a batch
        of `batch_rows` rows; `company`: the batch leaves beside calls already on every
        replica, with more in flight than trusted (it may wait behind one)."""
        if not self.known:
            return False
        cost = self.cost_hi(batch_rows)
        if company and self.flight > self.trusted:
            cost *= 2
        return age_s + cost > self.plan_s
