"""Routing through the real gateway: weights, sticky keys, and changes applied in place."""

from __future__ import annotations

import asyncio
import copy
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import requests
from sklearn.datasets import load_breast_cancer

from serve.control.resolve import ConfigError
from serve.ray import launcher
from tests.integration.conftest import ROUTING, Gateway, metric_value

ROW = load_breast_cancer(return_X_y=True)[0][:1].astype(np.float32)
BODY = {
    "inputs": [
        {"name": "input", "shape": [1, 30], "datatype": "FP32", "data": ROW.ravel().tolist()}
    ]
}


def _routes(gateway: Gateway) -> dict:
    return requests.get(gateway.base + "/modelgate/routes", timeout=10).json()


async def _versions(gateway: Gateway, n: int, keys: list[str] | None = None) -> list[str]:
    url = gateway.base + "/v2/models/breast_cancer/infer"
    limit = asyncio.Semaphore(32)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def one(i: int) -> str:
            headers = {"x-routing-key": keys[i]} if keys else {}
            async with limit, session.post(url, json=BODY, headers=headers) as response:
                assert response.status == 200, await response.text()
                await response.read()
                return response.headers["x-model-version"]

        return await asyncio.gather(*(one(i) for i in range(n)))


def _deploy_routing(gateway: Gateway, routing: dict, tmp_config: dict) -> None:
    config = copy.deepcopy(tmp_config)
    config["applications"][0]["deployments"] = [{"name": "Router", "user_config": routing}]
    launcher.check_routing(config["applications"][0], _resolved(config))
    launcher.deploy(config)
    deadline = 50
    while not _in_force(_routes(gateway)["models"]["breast_cancer"], routing):
        deadline -= 1
        assert deadline > 0, "the new routing never took effect"
        asyncio.run(asyncio.sleep(0.2))


def _in_force(seen: dict, routing: dict) -> bool:
    wanted = routing["models"]["breast_cancer"]
    shadow = wanted.get("shadow")
    seen_shadow = seen["shadow"]
    same_shadow = (shadow is None and seen_shadow is None) or (
        shadow is not None
        and seen_shadow is not None
        and seen_shadow["ratio"] == shadow["ratio"]
        and seen_shadow["log_path"] == shadow.get("log_path")
    )
    return seen["weights"] == _weights(routing) and same_shadow


def _weights(routing: dict) -> dict[str, float]:
    model = routing["models"]["breast_cancer"]
    aliases = model.get("aliases", {})
    total = sum(model["weights"].values())
    return {aliases.get(v, v): round(w / total, 6) for v, w in model["weights"].items()}


def _resolved(config: dict) -> list:
    from serve.control.resolve import resolve_versions
    from serve.core.config import GatewayConfig

    return resolve_versions(GatewayConfig.model_validate(config["applications"][0]["args"]))


@pytest.fixture
def live_config(gateway: Gateway) -> Iterator[dict]:
    yield gateway.config
    _deploy_routing(gateway, ROUTING, gateway.config)  # leave the session's gateway as it was


def test_weights_and_stickiness_change_in_place(gateway: Gateway, live_config: dict) -> None:
    before = _routes(gateway)
    assert before["models"]["breast_cancer"]["weights"] == {"1": 1.0}
    assert set(asyncio.run(_versions(gateway, 50))) == {"1"}

    split = {
        "models": {
            "breast_cancer": {"weights": {"1": 50, "canary": 50}, "aliases": {"canary": "2"}}
        }
    }
    _deploy_routing(gateway, split, live_config)
    after = _routes(gateway)
    assert after["router"] == before["router"]  # reconfigured, not restarted

    counts = Counter(asyncio.run(_versions(gateway, 2000)))
    assert abs(counts["2"] / 2000 - 0.5) <= 0.05, counts

    keys = [f"user-{i % 200}" for i in range(800)]  # each key four times
    answered = asyncio.run(_versions(gateway, len(keys), keys))
    by_key: dict[str, set[str]] = {}
    for key, version in zip(keys, answered, strict=True):
        by_key.setdefault(key, set()).add(version)
    assert all(len(v) == 1 for v in by_key.values())  # sticky: one version per key
    assert {next(iter(v)) for v in by_key.values()} == {"1", "2"}


def test_routing_to_versions_not_deployed_is_refused(gateway: Gateway, live_config: dict) -> None:
    bad = {"models": {"breast_cancer": {"weights": {"9": 1}}}}
    app = copy.deepcopy(live_config["applications"][0])
    app["deployments"] = [{"name": "Router", "user_config": bad}]
    with pytest.raises(ConfigError, match="weights name '9'"):
        launcher.check_routing(app, _resolved(live_config))
    assert set(asyncio.run(_versions(gateway, 20))) == {"1"}  # still serving as before


def test_shadow_copies_and_compares_without_touching_answers(
    gateway: Gateway, live_config: dict, tmp_path: Path
) -> None:
    log = tmp_path / "disagreements.jsonl"
    routing = copy.deepcopy(ROUTING)
    routing["models"]["breast_cancer"]["shadow"] = {
        "version": "canary",
        "ratio": 1.0,
        "log_path": str(log),
        "diff_threshold": 0.0,
    }
    _deploy_routing(gateway, routing, live_config)
    labels = {"model": "breast_cancer", "primary": "1", "shadow": "2"}

    def outcomes() -> dict[str, float]:
        return {
            o: metric_value(gateway, "modelgate_shadow_requests_total", outcome=o, **labels)
            for o in ("compared", "dropped", "error", "primary_failed")
        }

    before = outcomes()
    answered = asyncio.run(_versions(gateway, 300))
    assert set(answered) == {"1"}  # callers only ever see the primary
    deadline = 50
    while sum(outcomes().values()) - sum(before.values()) < 300:
        deadline -= 1
        assert deadline > 0, f"not every request's copy was accounted for: {outcomes()}"
        asyncio.run(asyncio.sleep(0.2))
    after = outcomes()
    delta = {k: after[k] - before[k] for k in after}
    assert delta["error"] == 0 and delta["primary_failed"] == 0, delta
    assert delta["compared"] + delta["dropped"] == 300 and delta["compared"] >= 200, delta
    agreed = metric_value(gateway, "modelgate_shadow_rows_total", agree="true", **labels)
    assert agreed >= delta["compared"]  # GB v1 and HGB v2 agree on this row's label
    assert (
        metric_value(gateway, "modelgate_shadow_max_abs_diff_count", **labels) >= delta["compared"]
    )
    assert log.exists() and '"shadow":"2"' in log.read_text().splitlines()[0]


def test_routes_cli_shows_what_the_gateway_routes_by(gateway: Gateway) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "serve.cli", "routes", "--url", gateway.base],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "breast_cancer" in lines
    assert any(
        ln.startswith("  v1 ") and "READY" in ln and "100.0%" in ln and "champion" in ln
        for ln in lines
    ), lines
    assert any(ln.startswith("  v2 ") and "0.0%" in ln and "canary" in ln for ln in lines), lines
