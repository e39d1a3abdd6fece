"""Prometheus metrics, defined once, on a registry the owner injects (never the global one)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

#: Sub-millisecond to seconds.
LATENCY_BUCKETS = (
    0.0002,
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
)
DIFF_BUCKETS = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0)

SHADOW_LABELS = ("model", "primary", "shadow")


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.shadow_requests = Counter(
            "modelgate_shadow_requests_total",
            "Shadow copies by outcome: compared, error (the shadow failed), dropped (in-flight "
            "cap reached or the shadow's queue full), primary_failed (nothing to compare).",
            [*SHADOW_LABELS, "outcome"],
            registry=r,
        )
        self.shadow_rows = Counter(
            "modelgate_shadow_rows_total",
            "Rows compared between primary and shadow, by whether their labels agreed.",
            [*SHADOW_LABELS, "agree"],
            registry=r,
        )
        self.shadow_max_abs_diff = Histogram(
            "modelgate_shadow_max_abs_diff",
            "Per shadowed request: max abs difference of probabilities / regression outputs.",
            SHADOW_LABELS,
            buckets=DIFF_BUCKETS,
            registry=r,
        )
        self.shadow_duration = Histogram(
            "modelgate_shadow_duration_seconds",
            "Shadow version's latency for the copied request, validation to answer.",
            SHADOW_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
