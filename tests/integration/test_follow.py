"""A model deployed by alias follows it in a real `mlflow server`: moving `@champion` to a good
version starts a delivery that ends promoted, with no manual step; moving it to a bad one (labels
the other way: a model trained on flipped labels) starts one that is rolled back, and the alias
is put back in MLflow, so the registry and the gateway agree."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from converters.registry import ModelRef, open_registry
from tests.conftest import MlflowServer
from tests.integration.conftest import Gateway, deploy_beside, restore
from tests.integration.readings import decisions, route_table, wait_decision
from tests.integration.traffic import Traffic

pytestmark = pytest.mark.mlflow_server

APP, PREFIX, MODEL = "follow", "/follow", "followed"
X, Y = load_breast_cancer(return_X_y=True)
X = X.astype(np.float32)
#: Short steps (the test's); every guardrail threshold is the default.
POLICY = {"steps": [0, 50], "min_step_s": 2, "min_requests": 40, "shadow_ratio": 0.5}
DEADLINE_S = 180  # a rebuild (conversion, new router replicas) and a delivery


def _model(c: float, flip: bool = False) -> Any:
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=500)).fit(
        X, 1 - Y if flip else Y
    )


@pytest.fixture(scope="module")
def followed(gateway: Gateway, mlflow_server: MlflowServer) -> Iterator[Any]:
    registry = open_registry(mlflow_server)
    first = registry.publish_sklearn(MODEL, _model(1.0), X[:5])
    registry.set_alias(MODEL, "champion", first)
    app = {
        "name": APP,
        "route_prefix": PREFIX,
        "import_path": "serve.app:build_app",
        "deployments": [
            {"name": "Router", "user_config": {"models": {MODEL: {"delivery": POLICY}}}}
        ],
        "args": {
            "registry": str(mlflow_server),
            "models": [
                {
                    "name": MODEL,
                    "versions": [
                        {
                            "uri": f"models:/{MODEL}@champion",
                            "follow": True,
                            "placement": "colocated",
                        }
                    ],
                }
            ],
        },
    }
    deploy_beside(gateway, app)
    try:
        yield registry
    finally:
        restore(gateway)


def _events(since: float) -> list[dict[str, Any]]:
    return decisions(APP, MODEL, since)


def _wait_event(since: float, outcome: str, what: str) -> dict[str, Any]:
    return wait_decision(APP, MODEL, since, outcome, what, DEADLINE_S)


def _routes(gateway: Gateway) -> dict[str, Any]:
    return route_table(gateway, PREFIX, MODEL)


def _champion(registry: Any) -> str:
    return str(registry.resolve(ModelRef(MODEL, alias="champion")).version)


def test_moving_champion_in_mlflow_delivers_a_good_version_and_puts_a_bad_one_back(
    gateway: Gateway, followed: Any
) -> None:
    registry = followed
    with Traffic(gateway, PREFIX, MODEL) as traffic:
        # a good version: converted, deployed, delivered, promoted; no manual step
        good = registry.publish_sklearn(MODEL, _model(0.5), X[:5])
        since = time.time()
        registry.set_alias(MODEL, "champion", good)
        moved = _wait_event(since, "alias_moved", "the follower saw the alias move")
        assert f"moved to v{good}" in moved["reason"]
        promoted = _wait_event(since, "promoted", "the good version promoted")
        assert promoted["candidate"] == good
        served = _wait_event(since, "registry", "the alias served")
        assert served["reason"] == f"v{good} serves as champion"
        deadline = time.monotonic() + 10
        while _routes(gateway)["aliases"].get("champion") != good:
            assert time.monotonic() < deadline, _routes(gateway)
            time.sleep(0.2)
        assert _routes(gateway)["weights"] == {good: 1.0}
        assert _champion(registry) == good
        # a bad version: rolled back, and MLflow's alias put back where the gateway serves
        bad = registry.publish_sklearn(MODEL, _model(1.0, flip=True), X[:5])
        since = time.time()
        registry.set_alias(MODEL, "champion", bad)
        rolled_back = _wait_event(since, "rolled_back", "the bad version rolled back")
        assert rolled_back["candidate"] == bad and "label_agreement" in rolled_back["reason"]
        put_back = _wait_event(since, "registry", "the alias put back")
        assert put_back["reason"] == f"champion put back to v{good} in the registry (v{bad} failed)"
        assert _champion(registry) == good
        # the follower recognises its own write: no new delivery starts
        time.sleep(12)  # two reads of the registry
        assert [e["outcome"] for e in _events(since)].count("alias_moved") == 1
    assert traffic.outcomes.keys() == {"ok"}, traffic.failures()
    table = _routes(gateway)
    assert table["aliases"]["champion"] == good and table["weights"] == {good: 1.0}
