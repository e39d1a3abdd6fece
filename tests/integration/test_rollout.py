"""Rollouts under steady load: weights, a version added, one removed, a broken config: no
request fails, and each phase's traffic goes where its config says."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from typing import Any

import aiohttp
import numpy as np
import pytest
import requests
from sklearn.datasets import load_breast_cancer

from serve.control.resolve import ConfigError
from serve.ray.launcher import DeployError
from tests.integration.conftest import Gateway, deploy_beside, restore

PREFIX = "/rollout"
ROW = load_breast_cancer(return_X_y=True)[0][:1].astype(np.float32)
BODY = {
    "inputs": [
        {"name": "input", "shape": [1, 30], "datatype": "FP32", "data": ROW.ravel().tolist()}
    ]
}


def _app(versions: list[str], weights: dict[str, int], broken: bool = False) -> dict[str, Any]:
    entries: list[dict[str, Any]] = [
        {"uri": f"models:/breast_cancer/{v}", "placement": "dedicated"} for v in versions
    ]
    if broken:
        entries.append({"artifact": "/nonexistent/artifact", "placement": "dedicated"})
    return {
        "name": "rollout",
        "route_prefix": PREFIX,
        "import_path": "serve.app:build_app",
        "args": {"models": [{"name": "bc", "versions": entries}]},
        "deployments": [
            {"name": "Router", "user_config": {"models": {"bc": {"weights": weights}}}}
        ],
    }


class Traffic:
    """Steady HTTP load in a thread of its own; records every outcome."""

    def __init__(self, url: str, clients: int = 4) -> None:
        self.url, self.clients = url, clients
        self.outcomes: list[tuple[float, int, str]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            await asyncio.gather(*(self._client(session) for _ in range(self.clients)))

    async def _client(self, session: aiohttp.ClientSession) -> None:
        while not self.stop.is_set():
            try:
                async with session.post(self.url, json=BODY) as response:
                    await response.read()
                    version = response.headers.get("x-model-version", "")
                    self.outcomes.append((time.monotonic(), response.status, version))
            except aiohttp.ClientError as exc:
                self.outcomes.append((time.monotonic(), -1, type(exc).__name__))
            await asyncio.sleep(0.005)

    def versions_since(self, t: float) -> Counter[str]:
        return Counter(v for at, status, v in self.outcomes if at >= t and status == 200)


def _wait_routes(gateway: Gateway, weights: dict[str, float], timeout_s: float = 30) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            seen = requests.get(f"{gateway.base}{PREFIX}/modelgate/routes", timeout=5).json()
            if seen["models"]["bc"]["weights"] == weights:
                return time.monotonic()
        except (requests.RequestException, ValueError, KeyError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"routing {weights} never took effect")


def test_rollout_under_load_drops_nothing(gateway: Gateway) -> None:
    deploy_beside(gateway, _app(["1", "2"], {"1": 100, "2": 0}))
    traffic = Traffic(f"{gateway.base}{PREFIX}/v2/models/bc/infer")
    traffic.thread.start()
    marks: list[tuple[float, str]] = []
    try:
        phases = [
            (["1", "2"], {"1": 100, "2": 0}, {"1": 1.0}),
            (["1", "2"], {"1": 50, "2": 50}, {"1": 0.5, "2": 0.5}),
            (["1", "2"], {"1": 0, "2": 100}, {"2": 1.0}),
            (["1", "2", "3"], {"2": 0, "3": 100}, {"3": 1.0}),  # add a version
            (["2", "3"], {"3": 100}, {"3": 1.0}),  # remove the first
        ]
        for versions, weights, expected in phases:
            marks.append((time.monotonic(), f"deploy {versions} {weights}"))
            deploy_beside(gateway, _app(versions, weights))
            marks.append((time.monotonic(), "deployed"))
            since = _wait_routes(gateway, expected)
            time.sleep(1.5)
            seen = traffic.versions_since(since + 0.3)
            total = sum(seen.values())
            assert total > 20, (weights, seen)
            for version, share in expected.items():
                assert abs(seen[version] / total - share) <= 0.2, (weights, seen)
            assert set(seen) <= set(expected), (weights, seen)
        broken = _app(["2", "3"], {"3": 100}, broken=True)
        marks.append((time.monotonic(), "broken"))
        with pytest.raises(ConfigError, match="/nonexistent/artifact is not a complete"):
            deploy_beside(gateway, broken)  # modelgate serve refuses it before Ray sees it
        with pytest.raises(DeployError, match="nonexistent"):  # serve deploy: Ray refuses it
            deploy_beside(gateway, broken, preflight=False)
        time.sleep(1.5)
        assert traffic.versions_since(time.monotonic() - 1.0)["3"] > 0  # still serving
    finally:
        traffic.stop.set()
        traffic.thread.join(timeout=30)
        restore(gateway)
    failed = [o for o in traffic.outcomes if o[1] != 200]
    assert len(traffic.outcomes) > 500
    start = marks[0][0] if marks else 0.0
    timeline = [(round(t - start, 2), what) for t, what in marks]
    assert failed == [], ([(round(t - start, 2), s, e) for t, s, e in failed[:10]], timeline)
