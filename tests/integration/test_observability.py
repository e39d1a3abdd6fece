"""Metrics summed across replicas on the node exporter, and input drift scores, through Ray."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import requests
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_breast_cancer

from serve.observe.drift import DRIFT_THRESHOLD
from tests.integration.conftest import Gateway, deploy_beside, restore, settle_metrics

PREFIX = "/observe"
X = load_breast_cancer(return_X_y=True)[0].astype(np.float32)
APP: dict[str, Any] = {
    "name": "observe",
    "route_prefix": PREFIX,
    "import_path": "serve.app:build_app",
    "args": {
        "router": {"num_replicas": 2},
        "models": [
            {
                "name": "agg",
                "versions": [
                    {"uri": "models:/breast_cancer/1", "placement": "dedicated", "num_replicas": 2},
                    {"uri": "models:/breast_cancer/3", "placement": "colocated"},
                ],
            }
        ],
    },
}


def _samples(url: str) -> list[tuple[str, dict[str, str], float]]:
    settle_metrics()
    text = requests.get(url, timeout=10).text
    return [
        (s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples
    ]


def _sum(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    return sum(v for n, ls, v in samples if n == name and labels.items() <= ls.items())


def _both_routers_answer(pool: ThreadPoolExecutor, gateway: Gateway, timeout_s: float = 30) -> None:
    """HAProxy may take a moment to list a new ingress replica."""
    deadline = time.monotonic() + timeout_s
    seen: set[str] = set()
    while len(seen) < 2:
        assert time.monotonic() < deadline, f"router replicas answering: {len(seen)}"
        seen |= set(pool.map(lambda _: _router(gateway), range(40)))


def _router(gateway: Gateway) -> str:
    routes = requests.get(f"{gateway.base}{PREFIX}/modelgate/routes", timeout=5).json()
    return str(routes["router"])


def _infer(gateway: Gateway, version: str, rows: np.ndarray) -> None:
    body = {
        "inputs": [
            {
                "name": "input",
                "shape": list(rows.shape),
                "datatype": "FP32",
                "data": rows.ravel().tolist(),
            }
        ]
    }
    url = f"{gateway.base}{PREFIX}/v2/models/agg/versions/{version}/infer"
    response = requests.post(url, json=body, timeout=10)
    assert response.status_code == 200, response.text


def test_node_exporter_sums_router_and_model_replicas_and_scores_drift(gateway: Gateway) -> None:
    deploy_beside(gateway, APP)
    try:
        n = 120
        with ThreadPoolExecutor(8) as pool:  # HAProxy balances by least connections
            _both_routers_answer(pool, gateway)
            list(pool.map(lambda i: _infer(gateway, "1", X[i : i + 1]), range(n)))
        scrape = _samples(gateway.metrics)
        ok = {"model": "agg", "version": "1", "protocol": "http", "code": "ok"}
        assert _sum(scrape, "modelgate_requests_total", **ok) == n
        duration = {"model": "agg", "version": "1", "protocol": "http"}
        assert _sum(scrape, "modelgate_request_duration_seconds_count", **duration) == n
        # measured in the two model replicas, summed on the node
        assert _sum(scrape, "modelgate_model_rows_total", model="agg", version="1") == n
        assert _sum(scrape, "modelgate_compute_seconds_count", model="agg", version="1") > 0
        # /metrics on the HTTP port shows the same node sums
        via_http = _samples(f"{gateway.base}{PREFIX}/metrics")
        assert _sum(via_http, "modelgate_requests_total", **ok) == n

        # drift: version 1 gets inputs scaled by 1.5, version 3 a random sample of the data
        shifted = X[:300] * 1.5
        unshifted = X[np.random.default_rng(1).permutation(len(X))[:300]]
        for start in range(0, 300, 50):
            _infer(gateway, "1", shifted[start : start + 50])
            _infer(gateway, "3", unshifted[start : start + 50])
        psi = _wait_drift(gateway, rows=300)
        assert max(psi["1"]) > DRIFT_THRESHOLD, psi["1"]
        assert max(psi["3"]) < DRIFT_THRESHOLD, psi["3"]
        assert len(psi["3"]) == X.shape[1]  # one score per feature
    finally:
        restore(gateway)


def _wait_drift(gateway: Gateway, rows: int, timeout_s: float = 30) -> dict[str, list[float]]:
    """Scores once both versions' windows hold the drift rows (refreshed every second)."""
    deadline = time.monotonic() + timeout_s
    while True:
        scrape = _samples(gateway.metrics)
        window = {
            v: _sum(scrape, "modelgate_input_drift_window_rows", model="agg", version=v)
            for v in ("1", "3")
        }
        # version 1 also ran the single rows above
        if window["1"] >= rows + 120 and window["3"] >= rows:
            return {
                v: [
                    value
                    for name, labels, value in scrape
                    if name == "modelgate_input_drift_psi"
                    and labels["model"] == "agg"
                    and labels["version"] == v
                ]
                for v in ("1", "3")
            }
        assert time.monotonic() < deadline, f"drift windows never filled: {window}"
        time.sleep(0.5)
