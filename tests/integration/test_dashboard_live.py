"""Every metric the Grafana dashboard queries is in a live scrape of the gateway, with the
labels the queries match on, once demo-like traffic (a canary split, a shadow) has flowed."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import requests
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_breast_cancer

from tests.dashboard import queries, selectors
from tests.integration.conftest import Gateway, deploy_beside, restore

PREFIX = "/dash"
X = load_breast_cancer(return_X_y=True)[0].astype(np.float32)
APP: dict[str, Any] = {
    "name": "dash",
    "route_prefix": PREFIX,
    "import_path": "serve.app:build_app",
    "args": {
        "models": [
            {
                "name": "dash",
                "versions": [
                    {"uri": "models:/breast_cancer/1", "placement": "colocated"},
                    {"uri": "models:/breast_cancer/3", "placement": "colocated"},
                ],
            },
            {  # a progressive delivery, shadow step first: the controller's series
                "name": "dash_delivery",
                "versions": [
                    {"uri": "models:/breast_cancer/1", "placement": "colocated"},
                    {"uri": "models:/breast_cancer/3", "placement": "colocated"},
                ],
            },
        ]
    },
    "deployments": [
        {
            "name": "Router",
            "user_config": {
                "models": {
                    "dash": {
                        "weights": {"stable": 9, "canary": 1},
                        "aliases": {"stable": "1", "canary": "3"},
                        "shadow": {"version": "3", "ratio": 1.0},
                    },
                    "dash_delivery": {"delivery": {"stable": "1", "candidate": "3"}},
                }
            },
        }
    ],
}


def _scrape(url: str) -> dict[str, set[str]]:
    """Sample name -> label names seen on it."""
    labels: dict[str, set[str]] = {}
    text = requests.get(url, timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    return labels


def test_dashboard_queries_name_metrics_the_gateway_exports(gateway: Gateway) -> None:
    deploy_beside(gateway, APP)
    try:
        for start in range(0, 200, 2):  # 200 rows: past the drift window's min_rows
            rows = X[start : start + 2]
            body = {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [2, 30],
                        "datatype": "FP32",
                        "data": rows.ravel().tolist(),
                    }
                ]
            }
            for model in ("dash", "dash_delivery"):
                url = f"{gateway.base}{PREFIX}/v2/models/{model}/infer"
                assert requests.post(url, json=body, timeout=10).status_code == 200
        time.sleep(2.5)  # drift scores refresh every second in the test config
        exported = _scrape(gateway.metrics)
        # The delivery's shadow step starts once its controller runs (a second or two after
        # the routers): requests until it has judged some of the candidate's copies.
        deadline = time.monotonic() + 60
        url = f"{gateway.base}{PREFIX}/v2/models/dash_delivery/infer"
        while "modelgate_delivery_guardrail_value" not in exported:
            assert time.monotonic() < deadline, "the delivery controller exported nothing"
            for _ in range(20):
                assert requests.post(url, json=body, timeout=10).status_code == 200
            time.sleep(1)
            exported = _scrape(gateway.metrics)
        for title, expr in queries():
            for name, matched in selectors(expr):
                assert name in exported, f"panel {title!r} queries {name}, not exported"
                missing = matched - exported[name]
                assert not missing, f"panel {title!r}: {name} has no label(s) {missing}"
    finally:
        restore(gateway)
