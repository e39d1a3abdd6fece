"""Triton's statistics extension for the whole gateway: every router and model replica on the
node, read from the node's summed metrics (serve/observe/exporter.py) rather than from the one
router
replica that happens to answer.

Per (model, version), in Triton's fields:
  inference_count   rows in the batches routers sent          modelgate_batch_rows_sum
  execution_count   those batches                              modelgate_batch_rows_count
  success           requests answered ok; ns: queue + compute  modelgate_requests_total{code="ok"}
  fail              requests answered with an error            modelgate_requests_total{code!="ok"}
  queue             requests batched; ns: their wait before    modelgate_batch_requests,
                    their batch ran (each batch's mean wait    modelgate_queue_wait_seconds
                    times the mean batch's requests)
  compute_infer     ONNX Runtime time per batch                modelgate_compute_seconds
  last_inference    when the last batch ran (ms since epoch)   ..._last_batch_timestamp_seconds
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from prometheus_client import CollectorRegistry

from serve.core.dataplane import DataPlane, VersionTarget
from serve.observe import exporter

Key = tuple[str, str]  # (model, version)


def node_statistics(plane: DataPlane, model: str | None, version: str | None) -> dict[str, Any]:
    """Every version, a model's (`version` None) or one: 404 for one not deployed."""
    targets = plane.statistics_targets(model, version)
    plane.metrics.flush()  # this process's buffered series
    return gateway_statistics(exporter.node_registry(plane.metrics.registry), targets)


def gateway_statistics(registry: CollectorRegistry, targets: list[VersionTarget]) -> dict[str, Any]:
    """`{"model_stats": [...]}` for `targets`, from the metrics `registry` collects."""
    totals = _totals(registry)
    return {"model_stats": [_stats(t.model, t.version, totals) for t in targets]}


def _totals(registry: CollectorRegistry) -> dict[str, dict[Key, float]]:
    """Every modelgate sample by name and (model, version), summed over its other labels;
    requests split into `..._ok` and `..._failed` by their code."""
    totals: dict[str, dict[Key, float]] = defaultdict(lambda: defaultdict(float))
    for family in registry.collect():
        for sample in family.samples:
            labels = sample.labels
            if not sample.name.startswith("modelgate_") or "version" not in labels:
                continue
            name = sample.name
            if name == "modelgate_requests_total":
                name += "_ok" if labels.get("code") == "ok" else "_failed"
            totals[name][labels.get("model", ""), labels["version"]] += sample.value
    return totals


def _stats(model: str, version: str, totals: dict[str, dict[Key, float]]) -> dict[str, Any]:
    def total(name: str, scale: float = 1) -> int:
        return int(totals[name].get((model, version), 0) * scale)

    batches = total("modelgate_queue_wait_seconds_count")
    batched = total("modelgate_batch_requests_sum")
    queue_ns = total("modelgate_queue_wait_seconds_sum", 1e9 * batched / batches) if batches else 0
    compute_ns = total("modelgate_compute_seconds_sum", 1e9)
    return {
        "name": model,
        "version": version,
        "last_inference": total("modelgate_last_batch_timestamp_seconds", 1e3),
        "inference_count": total("modelgate_batch_rows_sum"),
        "execution_count": total("modelgate_batch_rows_count"),
        "inference_stats": {
            "success": {"count": total("modelgate_requests_total_ok"), "ns": queue_ns + compute_ns},
            "fail": {"count": total("modelgate_requests_total_failed"), "ns": 0},
            "queue": {"count": batched, "ns": queue_ns},
            "compute_infer": {"count": total("modelgate_compute_seconds_count"), "ns": compute_ns},
        },
    }
