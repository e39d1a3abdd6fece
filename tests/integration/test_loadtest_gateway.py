"""The harness against the real gateway: payloads from the manifest, all three protocols, and a
plan's config that the gateway's own schema accepts."""

from __future__ import annotations

import pytest
from ray.serve.schema import ServeDeploySchema

from loadtests.clients import Target
from loadtests.engine import Step
from loadtests.plan import patch_config
from loadtests.runner import load_payloads, run
from serve.core.config import GatewayConfig
from serve.ray import launcher
from tests.integration.conftest import Gateway


@pytest.mark.parametrize("protocol", ["http", "binary", "grpc"])
def test_a_short_closed_loop_step_against_the_gateway(gateway: Gateway, protocol: str) -> None:
    target = Target(gateway.base, "breast_cancer", "1", protocol, gateway.grpc)
    payloads = load_payloads(target, rows=4)
    assert payloads[0].json != payloads[1].json  # drawn from the reference distribution
    result = run(target, payloads, Step("closed", concurrency=4, duration_s=1.5, warmup_s=0.5))
    assert result.errors == {}
    assert result.ok > 10
    assert result.percentile_ms(99) > 0


def test_a_planned_config_validates_against_the_gateway_schema(gateway: Gateway) -> None:
    resolved = launcher.preflight(gateway.config)
    for version, replicas in (("1", 3), ("3", 2)):  # dedicated, colocated
        patched = patch_config(gateway.config, resolved, "breast_cancer", version, replicas)
        ServeDeploySchema.model_validate(patched)
        args = GatewayConfig.model_validate(patched["applications"][0]["args"])
        if version == "1":
            entry = args.models[0].versions[0]
            assert entry.num_replicas == 3 and entry.autoscaling is None
        else:
            assert args.router.num_replicas == 2
    with pytest.raises(ValueError, match="no version 9"):
        patch_config(gateway.config, resolved, "breast_cancer", "9", 2)


def test_generators_can_run_as_ray_tasks(gateway: Gateway) -> None:
    target = Target(gateway.base, "breast_cancer", "1")
    step = Step("open", concurrency=64, rate=100, arrival="constant", duration_s=2, warmup_s=0.5)
    result = run(target, load_payloads(target), step, processes=2, ray_address="auto")
    assert result.errors == {}
    assert result.measured == pytest.approx(200, rel=0.02)  # both shares, added
    assert result.sent >= 250  # warm-up included
