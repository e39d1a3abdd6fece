"""Input drift: live inputs binned on each feature's reference bins, scored by PSI.

The manifest holds, per numeric input tensor and feature (column), the reference bins (distinct
training deciles) and the share of reference rows in each. Where a version's session runs, the
monitor keeps bin counts of live rows over a sliding window (a ring of `window_s / interval_s`
count arrays: memory bounded by features x bins x slots) and, every `interval_s`, scores each
feature with the population stability index

    PSI = sum over bins of (live - reference) * ln(live / reference)     (shares, floored at 1e-4)

Conventional reading: < 0.1 no shift, 0.1-0.25 moderate, > 0.25 (DRIFT_THRESHOLD) shifted.
The request path only appends a reference to the batch it ran (bounded per interval); binning
and scoring run on a background thread.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from converters.manifest import Manifest, TensorStats
from serve.core.types import Feeds

logger = logging.getLogger("modelgate")

DRIFT_THRESHOLD = 0.25
FLOOR = 1e-4
#: Rows binned per numpy call: bounds the (rows, features, edges) comparison to a few MB.
BIN_CHUNK_ROWS = 2048

#: publish(scores per (input, feature index), rows in the window)
Publish = Callable[[dict[tuple[str, int], float], int], None]


@dataclass(frozen=True)
class _TensorBins:
    """Reference bins of one [-1, features] tensor, padded to a common bin count."""

    edges: np.ndarray  # (features, max_edges), padded with +inf
    expected: np.ndarray  # (features, max_edges + 1), padded with 0
    valid: np.ndarray  # (features, max_edges + 1) bool: real bins

    @classmethod
    def of(cls, stats: TensorStats) -> _TensorBins | None:
        features = stats.features
        if not features or any(not f.bin_fractions for f in features):
            return None  # an older manifest without reference bins
        width = max(len(f.bin_edges) for f in features)
        edges = np.full((len(features), width), np.inf)
        expected = np.zeros((len(features), width + 1))
        valid = np.zeros((len(features), width + 1), bool)
        for j, f in enumerate(features):
            edges[j, : len(f.bin_edges)] = f.bin_edges
            expected[j, : len(f.bin_fractions)] = f.bin_fractions
            valid[j, : len(f.bin_fractions)] = True
        return cls(edges, expected, valid)

    def counts(self, values: np.ndarray) -> np.ndarray:
        """Bin counts (features, bins) of a [rows, features] array."""
        features, bins = self.expected.shape
        # the number of edges below each value, per feature: np.searchsorted(side="left")
        index = (values[:, :, None] > self.edges[None, :, :]).sum(axis=2)
        flat = index + np.arange(features) * bins
        return np.bincount(flat.ravel(), minlength=features * bins).reshape(features, bins)

    def psi(self, counts: np.ndarray) -> np.ndarray:
        rows = counts.sum(axis=1, keepdims=True)
        live = np.maximum(counts / np.maximum(rows, 1), FLOOR)
        reference = np.maximum(self.expected, FLOOR)
        terms = (live - reference) * np.log(live / reference)
        return np.where(self.valid, terms, 0.0).sum(axis=1)  # type: ignore[no-any-return]


class DriftMonitor:
    """Sliding-window bin counts of one version's live inputs; scores published on `tick`."""

    def __init__(
        self,
        manifest: Manifest,
        publish: Publish,
        *,
        window_s: float,
        interval_s: float,
        min_rows: int,
        max_rows_per_interval: int,
    ) -> None:
        self.bins = {
            name: bins
            for name, stats in manifest.reference_stats.items()
            if (bins := _TensorBins.of(stats)) is not None
        }
        self.slots = max(1, math.ceil(window_s / interval_s))
        self.ring = {
            name: np.zeros((self.slots, *bins.expected.shape), np.int64)
            for name, bins in self.bins.items()
        }
        self.slot = 0
        self.publish = publish
        self.min_rows = min_rows
        self.max_rows = max_rows_per_interval
        self._pending: list[Feeds] = []
        self._pending_rows = 0
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return bool(self.bins)

    def observe(self, feeds: Feeds, rows: int) -> None:
        """Request path: keep a reference to the batch, or skip it if this interval is full."""
        if not self.bins or self._pending_rows + rows > self.max_rows:
            return
        with self._lock:
            self._pending.append(feeds)
            self._pending_rows += rows

    def tick(self) -> None:
        """Bin what arrived, score the window, publish, and open the next slot."""
        with self._lock:
            pending, self._pending, self._pending_rows = self._pending, [], 0
        scores: dict[tuple[str, int], float] = {}
        window_rows = 0
        for name, bins in self.bins.items():
            ring = self.ring[name]
            # One binning over all the interval's rows, in chunks: per batch, thousands of
            # one-row batches cost ~10 µs each in numpy call overhead, holding the GIL.
            arrays = [
                values
                for feeds in pending
                if (values := feeds.get(name)) is not None
                and values.ndim == 2
                and values.shape[1] == len(bins.edges)
            ]
            if arrays:
                rows_in = np.concatenate(arrays).astype(np.float64, copy=False)
                for start in range(0, len(rows_in), BIN_CHUNK_ROWS):
                    ring[self.slot] += bins.counts(rows_in[start : start + BIN_CHUNK_ROWS])
            window = ring.sum(axis=0)
            rows = int(window[0].sum())
            window_rows = max(window_rows, rows)
            psi = bins.psi(window) if rows >= self.min_rows else np.zeros(len(window))
            scores.update({(name, j): float(v) for j, v in enumerate(psi)})
        self.slot = (self.slot + 1) % self.slots
        for ring in self.ring.values():
            ring[self.slot] = 0
        self.publish(scores, window_rows)


class DriftTicker:
    """One background thread per process that ticks every monitor each interval."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.monitors: list[DriftMonitor] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="modelgate-drift", daemon=True)

    def add(self, monitor: DriftMonitor) -> None:
        if monitor.active:
            self.monitors.append(monitor)
            if not self._thread.is_alive():
                self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            for monitor in self.monitors:
                try:
                    monitor.tick()
                except Exception:  # a scoring bug must not end drift monitoring for all
                    logger.exception("drift monitor tick failed")

    def close(self) -> None:
        self._stop.set()
