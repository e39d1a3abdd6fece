"""Every shipped config is one the gateway takes: each modelgate application's args and its
Router's routing validate (deploying them is the integration tests' and the README's part)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from serve.core.config import GatewayConfig
from serve.core.routing import RoutingConfig

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_a_shipped_config_validates(path: Path) -> None:
    config = yaml.safe_load(path.read_text())
    apps = [a for a in config["applications"] if a["import_path"] == "serve.app:build_app"]
    assert apps, path
    for app in apps:
        GatewayConfig.model_validate(app["args"])
        for deployment in app.get("deployments", []):
            if deployment["name"] == "Router":
                RoutingConfig.model_validate(deployment.get("user_config") or {})


def test_the_delivery_example_delivers_the_challenger() -> None:
    config = yaml.safe_load((CONFIGS[0].parent / "delivery.yaml").read_text())
    [router] = config["applications"][0]["deployments"]
    routing = RoutingConfig.model_validate(router["user_config"])
    policy = routing.models["breast_cancer"].delivery
    assert policy is not None and (policy.stable, policy.candidate) == ("champion", "challenger")
