"""Input drift scores (PSI on reference bins) over a sliding window (no Ray)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from converters.stats import bin_index, reference_stats
from serve.observe.drift import DRIFT_THRESHOLD, DriftMonitor, _TensorBins
from tests.serve import factories

RNG = np.random.default_rng(0)


def _reference(rows: int = 2000) -> np.ndarray:
    """Two features: a continuous one and a binary one (tied deciles)."""
    return np.stack([RNG.normal(0, 1, rows), (RNG.random(rows) < 0.3).astype(float)], axis=1)


class _Sink:
    def __init__(self) -> None:
        self.scores: dict[tuple[str, int], float] = {}
        self.rows = -1

    def __call__(self, scores: dict[tuple[str, int], float], rows: int) -> None:
        self.scores, self.rows = scores, rows


def _monitor(sink: _Sink, **options: float) -> DriftMonitor:
    manifest = factories.manifest("1")
    manifest.reference_stats = reference_stats({"input": _reference()})
    settings_ = {"window_s": 30, "interval_s": 10, "min_rows": 100, "max_rows_per_interval": 10**6}
    return DriftMonitor(manifest, sink, **{**settings_, **options})  # type: ignore[arg-type]


def test_reference_bins_hold_every_sample_value_once() -> None:
    stats = reference_stats({"input": _reference()})["input"]
    continuous, binary = stats.features
    assert len(continuous.bin_edges) == 9 and len(continuous.bin_fractions) == 10
    assert binary.bin_edges == [0.0, 1.0]  # tied deciles collapse
    for feature in (continuous, binary):
        assert abs(sum(feature.bin_fractions) - 1) < 1e-9
    assert abs(binary.bin_fractions[0] - 0.7) < 0.05  # the zeros


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=1, max_size=50), st.integers(1, 9))
def test_vectorized_binning_matches_searchsorted(values: list[float], n_edges: int) -> None:
    edges = np.sort(np.unique(np.linspace(-2, 2, n_edges)))
    stats = reference_stats({"x": np.array([[v] for v in np.linspace(-3, 3, 101)])})["x"]
    stats.features[0].bin_edges = [float(e) for e in edges]
    stats.features[0].bin_fractions = [1 / (len(edges) + 1)] * (len(edges) + 1)
    bins = _TensorBins.of(stats)
    assert bins is not None
    column = np.array(values)
    expected = np.bincount(bin_index(edges, column), minlength=len(edges) + 1)
    assert bins.counts(column[:, None])[0, : len(edges) + 1].tolist() == expected.tolist()


def test_same_distribution_scores_low_and_a_shift_scores_high() -> None:
    same, shifted = _Sink(), _Sink()
    a, b = _monitor(same), _monitor(shifted)
    live = _reference(1000).astype(np.float32)
    a.observe({"input": live}, 1000)
    moved = live.copy()
    moved[:, 0] += 2.0  # two standard deviations
    b.observe({"input": moved}, 1000)
    a.tick()
    b.tick()
    assert same.rows == shifted.rows == 1000
    assert max(same.scores.values()) < 0.1
    assert shifted.scores[("input", 0)] > DRIFT_THRESHOLD
    assert shifted.scores[("input", 1)] < 0.1  # the binary feature did not move


def test_scores_wait_for_min_rows_and_the_window_slides() -> None:
    sink = _Sink()
    monitor = _monitor(sink, window_s=30, interval_s=10)  # 3 slots
    shifted = _reference(60) + np.array([5.0, 0.0])
    monitor.observe({"input": shifted}, 60)
    monitor.tick()
    assert sink.rows == 60 and sink.scores[("input", 0)] == 0.0  # under min_rows: no score
    monitor.observe({"input": shifted}, 60)
    monitor.tick()
    assert sink.rows == 120 and sink.scores[("input", 0)] > DRIFT_THRESHOLD
    monitor.tick()
    assert sink.rows == 120  # both intervals still in the 3-interval window
    monitor.tick()
    assert sink.rows == 60  # the first has left it
    monitor.tick()
    assert sink.rows == 0 and sink.scores[("input", 0)] == 0.0


def test_rows_past_the_interval_bound_are_not_kept() -> None:
    sink = _Sink()
    monitor = _monitor(sink, max_rows_per_interval=150)
    batch = _reference(100)
    for _ in range(5):
        monitor.observe({"input": batch}, 100)
    monitor.tick()
    assert sink.rows == 100  # the second batch would have passed 150


def test_a_manifest_without_reference_bins_is_not_monitored() -> None:
    manifest = factories.manifest("1")
    stats = reference_stats({"input": _reference()})
    for feature in stats["input"].features:
        feature.bin_fractions = []
    manifest.reference_stats = stats
    monitor = DriftMonitor(
        manifest, _Sink(), window_s=30, interval_s=10, min_rows=1, max_rows_per_interval=10
    )
    assert not monitor.active
