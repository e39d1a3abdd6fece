"""Prometheus metrics, defined once, on a registry the owner injects (never the global one).

Every replica on a node (routers and model versions) runs prometheus-client in multiprocess
mode: `PROMETHEUS_MULTIPROC_DIR` names one node-local folder (serve/ray/app.py sets it in each
replica's runtime_env), each process writes its values there, and an exposition sums the
folder, so a scrape sees the node's totals (serve/observe/exporter.py). Without that variable
(tests of
the core, no Ray), the exposition is the process's own registry.

The per-request series (requests, durations, batches, compute, rows, in flight) are summed in
memory and written to prometheus-client at most `FLUSH_S` after their first update (`Pending`):
a multiprocess write is a locked mmap store, and a request made sixteen of them. A scrape sees
a request's series within `FLUSH_S` of its answer; Prometheus scrapes every few seconds.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
DIFF_BUCKETS = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0)

SHADOW_LABELS = ("model", "primary", "shadow")

#: How long buffered series may wait before they are written.
FLUSH_S = 0.05


class Pending:
    """Updates of buffered series, written to their prometheus-client values in one go.

    Used from one thread, the event loop's: the first update after a write schedules the next
    one `FLUSH_S` later on the loop, so a busy process writes each series once per interval
    whatever its request rate. With no running loop (the core used synchronously) it writes
    at once. `flush` writes now (before an in-process exposition, and when a replica stops).
    """

    def __init__(self) -> None:
        self._dirty: list[_Buffered] = []
        self._timer: asyncio.TimerHandle | None = None

    def touch(self, series: _Buffered) -> None:
        self._dirty.append(series)
        if self._timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._timer = loop.call_later(FLUSH_S, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        dirty, self._dirty = self._dirty, []
        for series in dirty:
            series.write()


class _Buffered:
    __slots__ = ("_dirty", "_pending")

    def __init__(self, pending: Pending) -> None:
        self._pending = pending
        self._dirty = False

    def _touch(self) -> None:
        """Called by an update that finds the series clean: it now has something to write."""
        self._dirty = True
        self._pending.touch(self)

    def write(self) -> None:
        self._dirty = False
        self._write()

    def _write(self) -> None:
        raise NotImplementedError


class BufferedCounter(_Buffered):
    """A counter (or a gauge moved by inc/dec) child whose increments are summed first."""

    __slots__ = ("_child", "_delta")

    def __init__(self, pending: Pending, child: Counter | Gauge) -> None:
        super().__init__(pending)
        self._child = child
        self._delta = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self._delta += amount
        if not self._dirty:  # checked here: a call less on the request path
            self._touch()

    def dec(self, amount: float = 1.0) -> None:
        self.inc(-amount)

    def _write(self) -> None:
        delta, self._delta = self._delta, 0.0
        if delta:
            self._child.inc(delta)


class BufferedGauge(_Buffered):
    """A gauge child that only ever takes the latest value: set in memory, written once."""

    __slots__ = ("_child", "_value")

    def __init__(self, pending: Pending, child: Gauge) -> None:
        super().__init__(pending)
        self._child = child
        self._value = 0.0

    def set(self, value: float) -> None:
        self._value = value
        if not self._dirty:
            self._touch()

    def _write(self) -> None:
        self._child.set(self._value)


class BufferedHistogram(_Buffered):
    """A histogram child whose observations are binned first, as `Histogram.observe` bins
    them (the first bucket whose upper bound is >= the value)."""

    __slots__ = ("_bounds", "_child", "_counts", "_sum")

    def __init__(self, pending: Pending, child: Histogram) -> None:
        super().__init__(pending)
        self._child = child
        self._bounds: list[float] = list(child._upper_bounds)  # ends with +Inf
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0

    def observe(self, amount: float) -> None:
        self._sum += amount
        self._counts[bisect_left(self._bounds, amount)] += 1
        if not self._dirty:
            self._touch()

    def _write(self) -> None:
        child = self._child
        child._sum.inc(self._sum)
        for i, count in enumerate(self._counts):
            if count:
                child._buckets[i].inc(count)
                self._counts[i] = 0
        self._sum = 0.0


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.pending = Pending()
        self._request_series: dict[
            tuple[str, str, str, str], tuple[BufferedCounter, BufferedHistogram]
        ] = {}
        self._in_flight: dict[str, BufferedCounter] = {}
        r = self.registry
        self.requests = Counter(
            "modelgate_requests_total",
            "Inference requests by outcome: code is 'ok' or the error code (serve/core/errors.py).",
            ["model", "version", "protocol", "code"],
            registry=r,
        )
        self.in_flight = Gauge(
            "modelgate_requests_in_flight",
            "Inference requests being answered, per model.",
            ["model"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.request_duration = Histogram(
            "modelgate_request_duration_seconds",
            "Router time per inference request, from routing to the answer (body decoding and "
            "encoding excluded).",
            ["model", "version", "protocol"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "modelgate_queue_wait_seconds",
            "Mean wait of a batch's requests before it ran.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_duration = Histogram(
            "modelgate_batch_duration_seconds",
            "Router time to run one batch: ONNX Runtime, plus the call to the version's replica "
            "for dedicated versions.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.compute = Histogram(
            "modelgate_compute_seconds",
            "ONNX Runtime time per batch, measured where the session runs.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.model_rows = Counter(
            "modelgate_model_rows_total",
            "Rows ONNX Runtime ran, measured where the session runs (warm-up excluded).",
            ["model", "version"],
            registry=r,
        )
        self.batch_rows = Histogram(
            "modelgate_batch_rows",
            "Rows per batch run.",
            ["model", "version"],
            buckets=ROWS_BUCKETS,
            registry=r,
        )
        self.batch_requests = Histogram(
            "modelgate_batch_requests",
            "Requests per batch run.",
            ["model", "version"],
            buckets=ROWS_BUCKETS,
            registry=r,
        )
        self.shed = Counter(
            "modelgate_shed_total",
            "Requests shed: a version's queue was full, or the answer would come past its "
            "latency target (batching.target_p99_ms).",
            ["model", "version"],
            registry=r,
        )
        self.timeouts = Counter(
            "modelgate_timeouts_total",
            "Requests dropped because their deadline passed before they ran.",
            ["model", "version"],
            registry=r,
        )
        self.transport_batches = Counter(
            "modelgate_transport_batches_total",
            "Batches a router sent to dedicated replicas, by transport: direct "
            "(serve/transport/direct.py) "
            "or handle (Ray Serve's handle: transport handle, string tensors, fallbacks); for "
            "catalog models, peer (to the router replica the model is placed on) or local.",
            ["model", "version", "transport"],
            registry=r,
        )
        self.last_batch = Gauge(
            "modelgate_last_batch_timestamp_seconds",
            "When a router last finished a batch of the version (Unix time; the latest of all "
            "replicas, kept after they stop): Triton's last_inference.",
            ["model", "version"],
            registry=r,
            multiprocess_mode="max",
        )
        self.direct_refused = Counter(
            "modelgate_direct_refused_total",
            "Connections a dedicated replica's direct port dropped: a peer that did not prove "
            "it is one of the application's routers (reason: proof, timeout), or a frame "
            "beyond what a batch can be (frame). Nothing is computed for them.",
            ["model", "version", "reason"],
            registry=r,
        )
        self.direct_batches = Counter(
            "modelgate_direct_batches_total",
            "Batches a dedicated replica answered over the direct transport, by replica: how a "
            "version's load spreads over its replicas (one that scaling added too).",
            ["model", "version", "replica"],
            registry=r,
        )
        self.pacing_rows = Gauge(
            "modelgate_pacing_batch_rows_limit",
            "Rows a batch may hold now under the version's latency target "
            "(batching.target_p99_ms; serve/core/pacing.py): the largest across router replicas.",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.pacing_flight = Gauge(
            "modelgate_pacing_in_flight_limit",
            "Batches a router keeps in flight per replica now under the version's latency target: "
            "the largest across router replicas.",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.pacing_call = Gauge(
            "modelgate_pacing_call_seconds",
            "What a call of the largest batch allowed may take, at the tail, as the latency "
            "target's estimate has it: the largest across router replicas.",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.route_weight = Gauge(
            "modelgate_route_weight",
            "Share of a model's default-route traffic each version gets (0..1), as configured.",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.alias = Gauge(
            "modelgate_alias_info",
            "1 for each alias and the version it names (join on model, version to put canary "
            "and stable side by side).",
            ["model", "alias", "version"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.drift_psi = Gauge(
            "modelgate_input_drift_psi",
            "Population stability index of live inputs against the version's reference bins, "
            "per input tensor and feature (column), over the drift window. 0 until the window "
            "holds min_rows rows. Above 0.25: the inputs have shifted.",
            ["model", "version", "input", "feature"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.drift_rows = Gauge(
            "modelgate_input_drift_window_rows",
            "Rows in the drift window.",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livesum",
        )
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

    def flush(self) -> None:
        """Writes what the buffered series hold now (before an in-process exposition)."""
        self.pending.flush()

    def counter(self, child: Counter | Gauge) -> BufferedCounter:
        return BufferedCounter(self.pending, child)

    def histogram(self, child: Histogram) -> BufferedHistogram:
        return BufferedHistogram(self.pending, child)

    def request_series(
        self, model: str, version: str, protocol: str, code: str
    ) -> tuple[BufferedCounter, BufferedHistogram]:
        """The request counter and duration histogram of one label set, looked up once: the
        label space is bounded (served models and versions, two protocols, the error codes)."""
        key = (model, version, protocol, code)
        series = self._request_series.get(key)
        if series is None:
            series = (
                self.counter(self.requests.labels(model, version, protocol, code)),
                self.histogram(self.request_duration.labels(model, version, protocol)),
            )
            self._request_series[key] = series
        return series

    def in_flight_of(self, model: str) -> BufferedCounter:
        gauge = self._in_flight.get(model)
        if gauge is None:
            gauge = self._in_flight[model] = self.counter(self.in_flight.labels(model))
        return gauge

    def batch_observer(self, model: str, version: str) -> Callable[[int, int, float, float], None]:
        """The micro-batcher's `on_batch` hook for one version."""
        queue = self.histogram(self.queue_wait.labels(model, version))
        duration = self.histogram(self.batch_duration.labels(model, version))
        rows_h = self.histogram(self.batch_rows.labels(model, version))
        requests_h = self.histogram(self.batch_requests.labels(model, version))
        last = BufferedGauge(self.pending, self.last_batch.labels(model, version))

        def observe(requests: int, rows: int, queue_s: float, batch_s: float) -> None:
            last.set(time.time())
            queue.observe(queue_s)
            duration.observe(batch_s)
            rows_h.observe(rows)
            requests_h.observe(requests)

        return observe

    def pacing_observer(self, model: str, version: str) -> Callable[[int, int, float], None]:
        """The micro-batcher's `on_pace` hook: what its latency target decides now."""
        rows = BufferedGauge(self.pending, self.pacing_rows.labels(model, version))
        flight = BufferedGauge(self.pending, self.pacing_flight.labels(model, version))
        call = BufferedGauge(self.pending, self.pacing_call.labels(model, version))

        def observe(batch_rows: int, in_flight: int, call_s: float) -> None:
            rows.set(batch_rows)
            flight.set(in_flight)
            call.set(call_s)

        return observe

    def run_observer(self, model: str, version: str) -> Callable[[int, float], None]:
        """Called where ONNX Runtime runs a batch: its rows and its time."""
        compute = self.histogram(self.compute.labels(model, version))
        rows_c = self.counter(self.model_rows.labels(model, version))

        def observe(rows: int, seconds: float) -> None:
            compute.observe(seconds)
            rows_c.inc(rows)

        return observe


class CatalogMetrics:
    """A router's catalog series (serve/ray/catalog.py: CatalogWatch), on its GatewayMetrics'
    registry; made only where there is a catalog, since series without labels are written by
    every process that defines them."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.catalog_models = Gauge(
            "modelgate_catalog_models",
            "Models in the catalog (serve/control/catalog.py), as router replicas see it: the "
            "largest count.",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.resident_models = Gauge(
            "modelgate_catalog_resident_models",
            "Catalog models whose session is loaded, summed over router replicas "
            "(serve/core/resident.py; each replica keeps at most catalog.max_resident).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.resident = Gauge(
            "modelgate_catalog_resident",
            "Router replicas holding the version's session now.",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.loads = Counter(
            "modelgate_catalog_loads_total",
            "Session loads of catalog models, by outcome (ok, failed).",
            ["model", "version", "outcome"],
            registry=r,
        )
        self.evictions = Counter(
            "modelgate_catalog_evictions_total",
            "Sessions dropped as least recently used beyond catalog.max_resident.",
            ["model", "version"],
            registry=r,
        )
        self.load_seconds = Histogram(
            "modelgate_catalog_load_seconds",
            "Time to load a catalog model's session (artifact checked, session built, warmed).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.last_load_seconds = Gauge(
            "modelgate_catalog_last_load_seconds",
            "The version's last load time (cold-load time per model): the largest across "
            "router replicas.",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livemax",
        )


class ResidentObserver:
    """What a router's ResidentSet (serve/core/resident.py) reports, as GatewayMetrics series;
    keys are '<model>:<version>'."""

    def __init__(self, metrics: CatalogMetrics) -> None:
        self.m = metrics

    def loaded(self, key: str, seconds: float, ok: bool) -> None:
        model, version = key.rsplit(":", 1)
        self.m.loads.labels(model, version, "ok" if ok else "failed").inc()
        self.m.load_seconds.observe(seconds)
        self.m.last_load_seconds.labels(model, version).set(seconds)

    def kept(self, key: str) -> None:
        model, version = key.rsplit(":", 1)
        self.m.resident.labels(model, version).inc()

    def evicted(self, key: str) -> None:
        model, version = key.rsplit(":", 1)
        self.m.evictions.labels(model, version).inc()
        self.m.resident.labels(model, version).dec()

    def dropped(self, key: str) -> None:
        model, version = key.rsplit(":", 1)
        self.m.resident.labels(model, version).dec()

    def resident(self, count: int) -> None:
        self.m.resident_models.set(count)


class DeliveryMetrics:
    """The delivery controller's own series (serve/control/delivery.py): one process per
    application writes them, into its node's folder like every replica."""

    PHASES = ("running", "paused", "failed", "aborted", "promoted")

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        self.percent = Gauge(
            "modelgate_delivery_candidate_percent",
            "The candidate's share of the model's default route in the delivery's current step "
            "(0 in the shadow step and after a rollback, 100 once promoted).",
            ["model", "stable", "candidate"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.phase = Gauge(
            "modelgate_delivery_phase",
            "1 for the delivery's phase (running, paused, failed, aborted, promoted), 0 others.",
            ["model", "phase"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.guardrail = Gauge(
            "modelgate_delivery_guardrail_value",
            "Each guardrail's value over the current step's window (serve/core/delivery.py); "
            "its limit is modelgate_delivery_guardrail_limit.",
            ["model", "guardrail"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.limit = Gauge(
            "modelgate_delivery_guardrail_limit",
            "Each guardrail's limit, as the policy sets it.",
            ["model", "guardrail"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.decisions = Counter(
            "modelgate_delivery_decisions_total",
            "The controller's decisions by outcome: started, advanced, promoted, rolled_back, "
            "paused, resumed, aborted.",
            ["model", "outcome"],
            registry=r,
        )

    def show(self, model: str, phase: str, labels: tuple[str, str], percent: float) -> None:
        self.percent.labels(model, *labels).set(percent)
        for p in self.PHASES:
            self.phase.labels(model, p).set(1 if p == phase else 0)

    def checks(self, model: str, checks: list[tuple[str, float | None, float]]) -> None:
        for name, value, limit in checks:
            if value is not None:
                self.guardrail.labels(model, name).set(value)
            self.limit.labels(model, name).set(limit)
