"""Metrics across nodes (tests/cluster): a real Prometheus on the head, configured by
configs/prometheus-cluster.yml, finds every node's exporter through the node list Ray's head
writes, and its totals equal what was sent: requests counted by the router on the head, rows
counted by the model replicas on the workers."""

from __future__ import annotations

import shutil
import time
from typing import Any

import numpy as np
import requests
from sklearn.datasets import load_breast_cancer

from loadtests.netns import REPO, wait_for
from tests.cluster.conftest import HTTP_PORT, RayCluster, infer_labels

CONFIG = REPO / "configs/prometheus-cluster.yml"
PROMETHEUS_PORT = 9090


def _query(base: str, promql: str) -> float | None:
    doc = requests.get(f"{base}/api/v1/query", params={"query": promql}, timeout=10).json()
    result = doc["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def test_prometheus_finds_every_nodes_exporter_and_its_totals_equal_what_was_sent(
    ray_cluster: RayCluster, deployed: dict[str, Any]
) -> None:
    binary = shutil.which("prometheus")
    assert binary is not None, "make test installs Debian's prometheus package"
    head = ray_cluster.head
    web = f"{head.address}:{PROMETHEUS_PORT}"
    config = CONFIG.read_text().replace("scrape_interval: 5s", "scrape_interval: 1s")
    path = ray_cluster.workdir / "prometheus.yml"
    path.write_text(config)
    head.popen(
        binary, f"--config.file={path}", f"--web.listen-address={web}",
        "--storage.tsdb.path=/tmp/prometheus", log=ray_cluster.logs / "prometheus.log",
    )  # fmt: skip
    base = f"http://{web}"
    workers = {w.address for w in ray_cluster.workers}

    def every_exporter_up() -> bool:
        try:
            doc = requests.get(f"{base}/api/v1/targets", timeout=5).json()
        except (requests.RequestException, ValueError):
            return False
        up = {
            t["labels"]["instance"].rsplit(":", 1)[0]
            for t in doc["data"]["activeTargets"]
            if t["labels"]["job"] == "modelgate" and t["health"] == "up"
        }
        return {head.address} | workers <= up

    try:
        wait_for(every_exporter_up, "Prometheus scraping every node's exporter", 120, 1)
    except AssertionError:
        targets = requests.get(f"{base}/api/v1/targets", timeout=5).text
        listed = head.run("cat", "/tmp/ray/prom_metrics_service_discovery.json").stdout
        raise AssertionError(f"targets: {targets[:3000]}\nRay's list: {listed[:1000]}") from None
    requests_sent = 'sum(modelgate_requests_total{model="breast_cancer",code="ok"})'
    rows_computed = 'sum(modelgate_model_rows_total{model="breast_cancer"})'
    on_workers = (
        'sum(modelgate_model_rows_total{model="breast_cancer",instance=~"'
        + "|".join(f"{w}:9464" for w in sorted(workers))
        + '"})'
    )
    before = {q: _query(base, q) or 0.0 for q in (requests_sent, rows_computed, on_workers)}
    x = load_breast_cancer(return_X_y=True)[0][:3].astype(np.float32)
    http = f"http://{head.address}:{HTTP_PORT}"
    for _ in range(40):
        infer_labels(http, "breast_cancer", x)

    def counted() -> bool:
        return (_query(base, requests_sent) or 0.0) - before[requests_sent] == 40 and (
            _query(base, on_workers) or 0.0
        ) - before[on_workers] == 120

    wait_for(counted, "40 requests and their 120 rows in Prometheus", 60, 1)
    time.sleep(2)  # and nothing more arrives: a count, not a lower bound
    assert (_query(base, requests_sent) or 0.0) - before[requests_sent] == 40
    assert (_query(base, rows_computed) or 0.0) - before[rows_computed] == 120
