"""Reference statistics of sample inputs, stored in the manifest for drift checks."""

from __future__ import annotations

import numpy as np

from converters.manifest import FeatureStats, TensorStats

DECILES = np.linspace(0.1, 0.9, 9)


def reference_stats(feeds: dict[str, np.ndarray]) -> dict[str, TensorStats]:
    """Per numeric input tensor, per feature (column): mean, std, deciles, min, max."""
    stats: dict[str, TensorStats] = {}
    for name, values in feeds.items():
        if values.dtype.kind not in "fiu" or values.ndim != 2 or len(values) == 0:
            continue
        columns = values.astype(np.float64)
        stats[name] = TensorStats(
            rows=len(columns),
            features=[_feature(columns[:, j]) for j in range(columns.shape[1])],
        )
    return stats


def _feature(column: np.ndarray) -> FeatureStats:
    quantiles = np.quantile(column, DECILES)
    edges = np.unique(quantiles)  # tied deciles (a binary feature, say) make one edge
    counts = np.bincount(bin_index(edges, column), minlength=len(edges) + 1)
    return FeatureStats(
        mean=float(column.mean()),
        std=float(column.std()),
        quantiles=[float(q) for q in quantiles],
        min=float(column.min()),
        max=float(column.max()),
        bin_edges=[float(e) for e in edges],
        bin_fractions=[float(c) for c in counts / len(column)],
    )


def bin_index(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Bin of each value: i where edges[i-1] < value <= edges[i]; len(edges) above the last."""
    return np.searchsorted(edges, values, side="left")
