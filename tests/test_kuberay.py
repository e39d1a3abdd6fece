"""The KubeRay manifest (configs/kuberay/rayservice.yaml) and the image (Dockerfile): the manifest
against KubeRay's RayService CRD schema (a copy from ray-project/kuberay in configs/kuberay/crd/),
its serveConfigV2 against the gateway's own config, and the environment, ports and probes every
Ray container needs, taken from the code. No Kubernetes and no image builder on these machines:
what the image runs at build time (`pip install .[mlflow]` in a fresh environment) is what CI's
`make test` and the serving-install test (tests/serve/test_layers.py) exercise."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from serve.core.config import GatewayConfig, MetricsConfig
from serve.ingress import lean
from serve.ray import launcher

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "configs/kuberay/rayservice.yaml"
CRD = ROOT / "configs/kuberay/crd/ray.io_rayservices.yaml"


def _manifest() -> dict[str, Any]:
    return dict(yaml.safe_load(MANIFEST.read_text()))


def _serve_config() -> dict[str, Any]:
    return dict(yaml.safe_load(_manifest()["spec"]["serveConfigV2"]))


def _ray_containers() -> list[dict[str, Any]]:
    cluster = _manifest()["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [g["template"]["spec"]["containers"][0] for g in groups]


def test_the_manifest_is_a_valid_rayservice() -> None:
    crd = yaml.safe_load(CRD.read_text())
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    manifest = _manifest()
    assert manifest["apiVersion"] == f"{crd['spec']['group']}/v1"
    assert manifest["kind"] == crd["spec"]["names"]["kind"]
    jsonschema.validate(manifest, version["schema"]["openAPIV3Schema"])


def test_an_invalid_manifest_is_caught_by_the_schema() -> None:
    crd = yaml.safe_load(CRD.read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    broken = _manifest()
    broken["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] = "two"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_its_serve_config_is_a_gateway_config_served_from_an_mlflow_server() -> None:
    config = _serve_config()
    apps = [a for a in config["applications"] if a["import_path"] == launcher.GATEWAY_IMPORT_PATH]
    assert apps
    for app in apps:
        gateway = GatewayConfig.model_validate(app["args"])
        assert gateway.registry is not None and gateway.registry.startswith("http")
    for function in config["grpc_options"]["grpc_servicer_functions"]:
        module, _, name = function.rpartition(".")
        assert callable(getattr(importlib.import_module(module), name))
    assert config["proxy_location"] == "EveryNode"


def test_every_ray_container_has_the_gateways_environment_ports_and_probe() -> None:
    config = _serve_config()
    ports = {
        config["http_options"]["port"],
        config["grpc_options"]["port"],
        MetricsConfig().port,
    }
    for container in _ray_containers():
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert launcher.HIGH_THROUGHPUT_ENV.items() <= env.items(), container["name"]
        assert env[lean.INGRESS_ENV] == lean.DEFAULT, container["name"]  # every node the same
        assert "modelgate ingress-env" in container["args"][0]
        assert "$KUBERAY_GEN_RAY_START_CMD" in container["args"][0]
        assert ports <= {p["containerPort"] for p in container["ports"]}, container["name"]
        probe = container["readinessProbe"]["httpGet"]
        assert probe == {"path": launcher.PROXY_HEALTH_PATH, "port": config["http_options"]["port"]}


def test_the_image_installs_at_build_time_and_runs_as_a_user() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    lines = [line.strip() for line in dockerfile.splitlines()]
    assert any(line.startswith("RUN pip install") for line in lines)
    [user] = [line for line in lines if line.startswith("USER ")]
    assert user.split()[1] not in {"0", "root"}
    for key, value in {**launcher.HIGH_THROUGHPUT_ENV, lean.INGRESS_ENV: lean.DEFAULT}.items():
        assert f'{key}="{value}"' in dockerfile or f"{key}={value}" in dockerfile, key
