"""Observability: per-model, per-version Prometheus metrics (metrics), the node exporter that sums
every replica's (exporter), input drift (drift), per-replica telemetry (telemetry) and the
protocol's statistics extension read from the metrics (statistics)."""
