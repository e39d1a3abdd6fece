"""`modelgate plan --config … --verify` against the real gateway, with short probes: it redeploys
the version at 1 and 2 replicas and measures each, writes a sized config, deploys that config
and measures what it predicted, and puts the original config back.

The config holds the session's gateway unchanged (a Ray Serve config is the whole of what runs)
and one more application whose version the plan resizes.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from pathlib import Path
from typing import Any

import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families
from ray import serve

from loadtests.cli import cmd_plan, plan_parser
from serve.ray import launcher
from tests.integration.conftest import Gateway, restore, settle_metrics

APP, PREFIX, MODEL = "planned", "/planned", "planned_bc"
DEPLOYMENT = f"{MODEL}-v1"


def _config(gateway: Gateway, artifact: Path) -> dict[str, Any]:
    config = copy.deepcopy(gateway.config)
    config["applications"].append(
        {
            "name": APP,
            "route_prefix": PREFIX,
            "import_path": "serve.app:build_app",
            "args": {
                "metrics": gateway.config["applications"][0]["args"]["metrics"],
                "models": [
                    {"name": MODEL, "versions": [{"artifact": str(artifact), "num_replicas": 1}]}
                ],
            },
        }
    )
    return config


def _replicas_that_answered(gateway: Gateway) -> set[str]:
    settle_metrics()
    return {
        sample.labels["replica"]
        for family in text_string_to_metric_families(requests.get(gateway.metrics, timeout=10).text)
        for sample in family.samples
        if sample.name == "modelgate_direct_batches_total"
        and sample.labels.get("model") == MODEL
        and sample.value > 0
    }


def _running(deployment: str) -> dict[str, int]:
    status = serve.status().applications[APP].deployments[deployment]
    return {str(k): int(v) for k, v in status.replica_states.items() if v}


def test_plan_redeploys_at_1_and_2_replicas_verifies_its_config_and_puts_the_original_back(
    gateway: Gateway, tmp_path: Path
) -> None:
    resolved = launcher.preflight(gateway.config)["gateway"]
    artifact = next(a for m, _, a, v, _ in resolved if m.name == "breast_cancer" and v == "1")
    artifact = Path(shutil.copytree(artifact, tmp_path / "bc-1"))
    config = _config(gateway, artifact)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    launcher.deploy(config)
    out = tmp_path / "plan"
    args = plan_parser().parse_args(
        [
            "--url", gateway.base + PREFIX, "--model", MODEL, "--version", "1",
            "--slo-p99", "100ms", "--config", str(config_file), "--replicas", "1,2",
            "--start-rate", "50", "--max-rate", "200", "--target-rate", "60",
            "--probe-duration", "1", "--warmup", "0.5", "--max-probes", "3",
            "--processes", "1", "--verify", "--verify-samples", "300", "--out", str(out),
        ]
    )  # fmt: skip
    try:
        assert cmd_plan(args) == 0
        doc = json.loads((out / "plan.json").read_text())
        # measured at 1 and at 2 replicas: both replicas of the second deployment answered
        assert set(doc["searches"]) == {"1 replicas", "2 replicas"}
        for search in doc["searches"].values():
            assert search["probes"] and all(p["measured"] > 0 for p in search["probes"])
        assert len(_replicas_that_answered(gateway)) >= 2
        # where they ran, counted across the nodes (one here)
        assert {k: sum(v.values()) for k, v in doc["placement"].items()} == {
            "1 replicas": 1,
            "2 replicas": 2,
        }
        # the config it wrote sizes this version and keeps the gateway as it was
        written = yaml.safe_load((out / "config.yaml").read_text())
        assert written["applications"][0] == config["applications"][0]
        versions = written["applications"][1]["args"]["models"][0]["versions"]
        assert versions[0]["num_replicas"] == doc["verification"]["replicas"] >= 1
        # --verify deployed it and measured both figures, each on its samples
        verification = doc["verification"]
        assert sum(verification["placement"].values()) == verification["replicas"]
        assert verification["predicted_max_rate"] > 0
        assert verification["at_predicted_rate"]["samples"] >= 300
        at_target = verification["at_target_rate"]
        assert at_target["samples"] >= 300 and at_target["p99_ms"] > 0
        assert isinstance(at_target["meets_slo"], bool)
        assert verification["target_rate"] == 60
        if verification["measured_max_rate"] > 0:
            assert verification["at_measured_max_rate"]["samples"] >= 300
        plan_md = (out / "plan.md").read_text()
        assert "## Verified: the written config deployed" in plan_md
        assert "p99 at the target rate (60 req/s)" in plan_md
        # the original config is back: one replica, as the operator's config says
        deadline = time.monotonic() + 60
        while _running(DEPLOYMENT) != {"RUNNING": 1}:
            assert time.monotonic() < deadline, _running(DEPLOYMENT)
            time.sleep(0.5)
    finally:
        restore(gateway)
