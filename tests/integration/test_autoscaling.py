"""A version configured min 1 / max 2 replicas scales up under load and back down when idle."""

from __future__ import annotations

import asyncio
import threading
import time

import aiohttp
import numpy as np
from ray import serve
from sklearn.datasets import load_breast_cancer

from tests.integration.conftest import APP, Gateway

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


def test_scales_to_two_under_load_and_back_to_one(gateway: Gateway) -> None:
    assert _running_replicas(gateway.autoscaled) == 1
    stop, failures = threading.Event(), []
    loader = threading.Thread(target=_load, args=(gateway, stop, failures), daemon=True)
    loader.start()
    try:
        _wait_for(gateway.autoscaled, 2, timeout_s=90)
    finally:
        stop.set()
        loader.join(timeout=60)
    assert not loader.is_alive()
    assert failures == []
    _wait_for(gateway.autoscaled, 1, timeout_s=90)
