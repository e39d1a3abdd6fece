"""What each replica process measures and exposes: metrics, the node exporter, drift monitors."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

from serve.core.config import DriftConfig, MetricsConfig
from serve.core.runtime import VersionRuntime
from serve.core.types import Feeds
from serve.observe import exporter
from serve.observe.drift import DriftMonitor, DriftTicker
from serve.observe.metrics import GatewayMetrics


def surface_warnings() -> None:
    """modelgate's warnings, written where an operator finds them, in a replica's process.

    Ray Serve's high-throughput mode (RAY_SERVE_LOG_TO_STDERR=0) turns a replica's stderr into
    its Serve logger, whose file handler sits behind a buffer flushed only when full or on an
    error: a warning (a peer refused, a catalog that could not be read) waited there unseen
    and was lost when the replica stopped. Where stderr was replaced so, the `modelgate`
    loggers write to the process's own stderr instead: the worker's `.err` file in Ray's log
    folder, which Ray also streams to the driver. Elsewhere (tests, the CLI) nothing changes."""
    logger = logging.getLogger("modelgate")
    if sys.stderr is sys.__stderr__ or sys.__stderr__ is None or logger.handlers:
        return
    handler = logging.StreamHandler(sys.__stderr__)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(levelname)s %(asctime)s %(name)s -- %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False


class ReplicaTelemetry:
    def __init__(self, metrics: MetricsConfig, drift: DriftConfig) -> None:
        surface_warnings()
        exporter.prepare()  # before the first metric value is created
        self.metrics = GatewayMetrics()
        self.node_exporter = None
        if metrics.port is not None:
            registry = exporter.node_registry(self.metrics.registry)
            self.node_exporter = exporter.NodeExporter(registry, metrics.port, metrics.host)
            self.node_exporter.start()
        self.drift = drift
        self.ticker = DriftTicker(drift.interval_s)

    def instrument(
        self,
        runtime: VersionRuntime,
        model: str,
        version: str,
        drift: bool = True,
        series: tuple[str, str] | None = None,
    ) -> Callable[[Feeds], Feeds]:
        """`runtime.run`, timed and counted, its inputs handed to the version's drift monitor
        (`drift`: when the gateway's drift config has it on). `series`: the (model, version)
        labels its compute is counted under, when not its own (catalog models share one)."""
        observe = self.metrics.run_observer(*(series or (model, version)))
        monitor = self._monitor(runtime, model, version) if drift else None

        def run(feeds: Feeds) -> Feeds:
            started = time.perf_counter()
            outputs = runtime.run(feeds)
            rows = len(next(iter(feeds.values())))
            observe(rows, time.perf_counter() - started)
            if monitor is not None:
                monitor.observe(feeds, rows)
            return outputs

        return run

    def _monitor(self, runtime: VersionRuntime, model: str, version: str) -> DriftMonitor | None:
        if not self.drift.enabled:
            return None
        psi, window_rows = self.metrics.drift_psi, self.metrics.drift_rows.labels(model, version)

        def publish(scores: dict[tuple[str, int], float], rows: int) -> None:
            for (name, feature), score in scores.items():
                psi.labels(model, version, name, str(feature)).set(score)
            window_rows.set(rows)

        d = self.drift
        monitor = DriftMonitor(
            runtime.manifest,
            publish,
            window_s=d.window_s,
            interval_s=d.interval_s,
            min_rows=d.min_rows,
            max_rows_per_interval=d.max_rows_per_interval,
        )
        self.ticker.add(monitor)
        return monitor if monitor.active else None

    def close(self) -> None:
        self.metrics.flush()
        self.ticker.close()
        if self.node_exporter is not None:
            self.node_exporter.close()
        exporter.leave()
