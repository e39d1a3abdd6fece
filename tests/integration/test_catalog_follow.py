"""A catalog that follows a registry alias in a real `mlflow server`, with the gateway's routing
kept per model (the 'Many models' section of the README):
- an `also` alias's version serves beside the catalog's alias, addressable by alias, and the
  routing config's shadow for one catalog model copies its requests to it;
- moving `@production` to a good version delivers it under the catalog's policy and promotes
  it; moving it to a bad one (trained on flipped labels) rolls it back and puts the alias back
  in MLflow; no request fails and no router replica restarts meanwhile."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import requests
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from converters.registry import ModelRef, open_registry
from tests.conftest import MlflowServer
from tests.integration.conftest import Gateway, deploy_beside, replica_pids, restore
from tests.integration.readings import route_table, wait_decision
from tests.integration.traffic import Traffic

pytestmark = pytest.mark.mlflow_server

APP, PREFIX = "catalogfollow", "/catalogfollow"
DELIVERED, SHADOWED = "cf_delivered", "cf_shadowed"
X, Y = load_breast_cancer(return_X_y=True)
X = X.astype(np.float32)
#: Short steps (the test's); every guardrail threshold is the default.
POLICY = {"steps": [0, 50], "min_step_s": 2, "min_requests": 40, "shadow_ratio": 0.5}
DEADLINE_S = 180  # a conversion in the catalog's actor, then a delivery's two steps


def _model(c: float, flip: bool = False) -> Any:
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=500)).fit(
        X, 1 - Y if flip else Y
    )


@pytest.fixture(scope="module")
def registry(gateway: Gateway, mlflow_server: MlflowServer) -> Iterator[Any]:
    registry = open_registry(mlflow_server)
    for name in (DELIVERED, SHADOWED):
        first = registry.publish_sklearn(name, _model(1.0), X[:5])
        registry.set_alias(name, "production", first)
    challenger = registry.publish_sklearn(SHADOWED, _model(0.5), X[:5])
    registry.set_alias(SHADOWED, "challenger", challenger)
    shadow = {"version": "challenger", "ratio": 1.0}
    app = {
        "name": APP,
        "route_prefix": PREFIX,
        "import_path": "serve.app:build_app",
        "deployments": [
            {"name": "Router", "user_config": {"models": {SHADOWED: {"shadow": shadow}}}}
        ],
        "args": {
            "registry": str(mlflow_server),
            "catalog": {
                "alias": "production",
                "also": ["challenger"],
                "delivery": POLICY,
                "refresh_s": 1,
            },
        },
    }
    deploy_beside(gateway, app)
    try:
        yield registry
    finally:
        restore(gateway)


def _routes(gateway: Gateway, model: str) -> dict[str, Any]:
    return route_table(gateway, PREFIX, model)


def _infer(gateway: Gateway, model: str, version: str | None = None) -> dict[str, Any]:
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 30]}]}
    body["inputs"][0]["data"] = X[:2].ravel().tolist()
    response = requests.post(f"{gateway.base}{PREFIX}{path}", json=body, timeout=30)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def _shadowed(gateway: Gateway) -> float:
    total = 0.0
    for line in requests.get(gateway.metrics, timeout=10).text.splitlines():
        if line.startswith("modelgate_shadow_requests_total{") and f'model="{SHADOWED}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_an_also_alias_serves_beside_and_the_routing_shadows_one_catalog_model(
    gateway: Gateway, registry: Any
) -> None:
    table = _routes(gateway, SHADOWED)
    assert table["aliases"] == {"production": "1", "challenger": "2"}
    assert table["weights"] == {"1": 1.0}  # the catalog's alias, not the highest version
    assert table["shadow"]["version"] == "2"
    before = _shadowed(gateway)
    for _ in range(5):
        assert _infer(gateway, SHADOWED)["model_version"] == "1"
    assert _infer(gateway, SHADOWED, "challenger")["model_version"] == "2"
    deadline = time.monotonic() + 30  # copies are sent after the answer
    while _shadowed(gateway) < before + 5:
        assert time.monotonic() < deadline, (before, _shadowed(gateway))
        time.sleep(0.5)
    assert (
        DELIVERED
        in requests.get(f"{gateway.base}{PREFIX}/modelgate/routes", timeout=5).json()["models"]
    )


def _wait_event(since: float, outcome: str, what: str) -> dict[str, Any]:
    return wait_decision(APP, DELIVERED, since, outcome, what, DEADLINE_S)


def _production(registry: Any) -> str:
    return str(registry.resolve(ModelRef(DELIVERED, alias="production")).version)


def test_moving_the_catalogs_alias_delivers_a_good_version_and_puts_a_bad_one_back(
    gateway: Gateway, registry: Any
) -> None:
    routers = replica_pids(APP, "Router")
    with Traffic(gateway, PREFIX, DELIVERED, rate=60) as traffic:
        good = registry.publish_sklearn(DELIVERED, _model(0.5), X[:5])
        since = time.time()
        registry.set_alias(DELIVERED, "production", good)
        started = _wait_event(since, "started", "the catalog delivered the moved alias")
        assert started["candidate"] == good
        promoted = _wait_event(since, "promoted", "the good version promoted")
        assert promoted["candidate"] == good
        served = _wait_event(since, "registry", "the alias served")
        assert served["reason"] == f"v{good} serves as production"
        deadline = time.monotonic() + 15  # the catalog's next read, then the routers'
        while _routes(gateway, DELIVERED)["weights"] != {good: 1.0}:
            assert time.monotonic() < deadline, _routes(gateway, DELIVERED)
            time.sleep(0.2)
        assert _routes(gateway, DELIVERED)["aliases"] == {"production": good}
        assert _production(registry) == good
        bad = registry.publish_sklearn(DELIVERED, _model(1.0, flip=True), X[:5])
        since = time.time()
        registry.set_alias(DELIVERED, "production", bad)
        rolled_back = _wait_event(since, "rolled_back", "the bad version rolled back")
        assert rolled_back["candidate"] == bad and "label_agreement" in rolled_back["reason"]
        put_back = _wait_event(since, "registry", "the alias put back")
        assert (
            put_back["reason"] == f"production put back to v{good} in the registry (v{bad} failed)"
        )
        assert _production(registry) == good
        deadline = time.monotonic() + 15
        while bad in _routes(gateway, DELIVERED)["versions"]:
            assert time.monotonic() < deadline, _routes(gateway, DELIVERED)
            time.sleep(0.2)
    assert traffic.outcomes.keys() == {"ok"}, traffic.failures()
    assert _routes(gateway, DELIVERED)["weights"] == {good: 1.0}
    assert replica_pids(APP, "Router") == routers  # all of it in place
