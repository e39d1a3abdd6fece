"""A version configured min 1 / max 2 replicas scales up under load and back down when idle, on
the direct transport: its routers' demand reaches Ray Serve through the replicas
(serve/ray/autoscale.py), and the replica added carries traffic once ready."""

from __future__ import annotations

import asyncio
import threading
import time

import aiohttp
import numpy as np
from ray import serve
from sklearn.datasets import load_breast_cancer

from tests.integration.conftest import APP, Gateway, metric_value, settle_metrics

ROWS = np.resize(load_breast_cancer(return_X_y=True)[0], (200, 30)).astype(np.float32)


def _running_replicas(deployment: str) -> int:
    status = serve.status().applications[APP].deployments[deployment]
    return int(status.replica_states.get("RUNNING", 0))


def _wait_for(deployment: str, count: int, timeout_s: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if _running_replicas(deployment) == count:
            return time.monotonic() - start
        time.sleep(0.5)
    raise AssertionError(
        f"{deployment} did not reach {count} replicas in {timeout_s}s "
        f"(has {_running_replicas(deployment)})"
    )


def _load(gateway: Gateway, stop: threading.Event, failures: list[int]) -> None:
    url = f"{gateway.base}/v2/models/breast_cancer/versions/2/infer"
    body = {
        "inputs": [{"name": "input", "shape": [200, 30], "datatype": "FP32", "data": ROWS.tolist()}]
    }

    async def client(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            async with session.post(url, json=body) as response:
                if response.status != 200:
                    failures.append(response.status)
                await response.read()

    async def main() -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            await asyncio.gather(*(client(session) for _ in range(16)))

    asyncio.run(main())


def _transport(gateway: Gateway, transport: str) -> float:
    return metric_value(
        gateway,
        "modelgate_transport_batches_total",
        model="breast_cancer",
        version="2",
        transport=transport,
    )


def _per_replica(gateway: Gateway) -> dict[str, float]:
    """Batches each replica of version 2 answered over the direct transport."""
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    settle_metrics()
    text = requests.get(gateway.metrics, timeout=10).text
    return {
        sample.labels["replica"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "modelgate_direct_batches_total"
        and sample.labels.get("model") == "breast_cancer"
        and sample.labels.get("version") == "2"
    }


def test_scales_to_two_under_load_on_the_direct_transport_and_back_to_one(
    gateway: Gateway,
) -> None:
    assert _running_replicas(gateway.autoscaled) == 1
    handle_before, direct_before = _transport(gateway, "handle"), _transport(gateway, "direct")
    stop, failures = threading.Event(), []
    loader = threading.Thread(target=_load, args=(gateway, stop, failures), daemon=True)
    loader.start()
    try:
        _wait_for(gateway.autoscaled, 2, timeout_s=90)
        # the replica added carries traffic once ready, as the first one does
        _wait_for_each_replica_to_answer(gateway, replicas=2, timeout_s=30)
    finally:
        stop.set()
        loader.join(timeout=60)
    assert not loader.is_alive()
    assert failures == []
    assert _transport(gateway, "direct") > direct_before
    assert _transport(gateway, "handle") == handle_before  # scaling up kept the direct path
    _wait_for(gateway.autoscaled, 1, timeout_s=90)


def _wait_for_each_replica_to_answer(gateway: Gateway, replicas: int, timeout_s: float) -> None:
    before = _per_replica(gateway)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now = _per_replica(gateway)
        if sum(now[r] > before.get(r, 0) for r in now) >= replicas:  # replicas gone stay listed
            return
        time.sleep(0.5)
    raise AssertionError(f"not every replica answered: {before} then {_per_replica(gateway)}")
