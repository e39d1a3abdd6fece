"""Per-model, per-version request metrics at the router, over HTTP and gRPC."""

from __future__ import annotations

import numpy as np
import requests
from prometheus_client.parser import text_string_to_metric_families

from serve.client.samples import grpc_infer
from tests.integration.conftest import Gateway, settle_metrics

ROW = {"input": np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)}


def _scrape(gateway: Gateway) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    settle_metrics()
    text = requests.get(gateway.base + "/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def _get(scrape: dict, name: str, **labels: str) -> float:
    return scrape.get((name, tuple(sorted(labels.items()))), 0.0)


def test_requests_by_model_version_protocol_and_code(gateway: Gateway) -> None:
    body = {
        "inputs": [
            {
                "name": "input",
                "shape": [1, 4],
                "datatype": "FP32",
                "data": ROW["input"].ravel().tolist(),
            }
        ]
    }
    before = _scrape(gateway)
    for _ in range(5):
        assert requests.post(gateway.base + "/v2/models/iris/infer", json=body, timeout=10).ok
    for _ in range(3):
        grpc_infer(gateway.grpc, "iris", ROW)
    bad = {"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    assert (
        requests.post(gateway.base + "/v2/models/iris/infer", json=bad, timeout=10).status_code
        == 400
    )
    after = _scrape(gateway)

    def delta(name: str, **labels: str) -> float:
        return _get(after, name, **labels) - _get(before, name, **labels)

    ok = {"model": "iris", "version": "1", "code": "ok"}
    assert delta("modelgate_requests_total", protocol="http", **ok) == 5
    assert delta("modelgate_requests_total", protocol="grpc", **ok) == 3
    assert (
        delta(
            "modelgate_requests_total",
            model="iris",
            version="1",
            protocol="http",
            code="invalid_argument",
        )
        == 1
    )
    assert (
        delta(
            "modelgate_request_duration_seconds_count", model="iris", version="1", protocol="grpc"
        )
        == 3
    )
    assert delta("modelgate_batch_requests_sum", model="iris", version="1") == 8
