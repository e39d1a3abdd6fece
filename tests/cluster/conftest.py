"""One multi-node Ray cluster for every multi-node test (loadtests/netns.py): a head node
(with the dashboard, which `serve deploy` and Prometheus' service discovery need) and two worker
nodes, each started with `ray start` as an operator would, in the environment
`modelgate ingress-env` prints; an `mlflow server` on the bridge is the registry and the artifact
store. Drivers run inside the head node. Start-up is bounded (START_BUDGET_S); teardown removes
every node, link and namespace even when a test fails."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import yaml
from sklearn.datasets import load_breast_cancer, load_iris
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression

from converters.registry import open_registry
from loadtests.netns import (
    BIN,
    Cluster,
    Node,
    alive_nodes,
    ingress_env,
    serve_replicas,
    start_ray,
    wait_for,
)
from tests.conftest import _stop, _wait_http
from tests.integration.bodies import infer_body

#: Seconds the cluster (three Ray nodes, the mlflow server, the models) may take to come up.
START_BUDGET_S = 240
RAY_PORT = 6379
DASHBOARD_PORT = 8265
APP = "gateway"
HTTP_PORT, GRPC_PORT = 8000, 9000
CACHE = "/tmp/modelgate-0/artifacts"  # the default node cache of root, inside each node
#: Where each node keeps HAProxy's files (inside its private /tmp).
INGRESS_FOLDER = "/tmp/modelgate-ingress"
#: How the GCS decides a node is lost: no answer to a health check every PERIOD_MS for
#: THRESHOLD checks in a row (each given TIMEOUT_MS). The fault tests derive their bounds from it.
HEALTH_CHECK = {"period_ms": 1000, "timeout_ms": 1000, "failure_threshold": 3}
#: Test settings every node starts with, beside what `modelgate ingress-env` prints.
NODE_ENV = {
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "3",
    **{f"RAY_health_check_{k}": str(v) for k, v in HEALTH_CHECK.items()},
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests that lose a node run last among the cluster's: it is not whole after them."""
    here = Path(__file__).parent
    faults = [i for i in items if i.path == here / "test_faults.py"]
    rest = [i for i in items if i.path != here / "test_faults.py"]
    ours = [n for n, item in enumerate(rest) if here in item.path.parents]
    if faults and ours:
        items[:] = rest[: ours[-1] + 1] + faults + rest[ours[-1] + 1 :]


@dataclass
class RayCluster:
    cluster: Cluster
    mlflow: str  # the registry's URL, on the bridge
    mlflow_store: Path  # what its artifact proxy stores into
    mlflow_log: Path
    workdir: Path  # configs the drivers read (outside every node's private /tmp)
    originals: dict[str, Any]  # model name -> the registered scikit-learn model
    logs: Path

    @property
    def head(self) -> Node:
        return self.cluster.nodes["head"]

    @property
    def workers(self) -> list[Node]:
        return [n for name, n in self.cluster.nodes.items() if name != "head"]

    @property
    def address(self) -> str:
        return f"{self.head.address}:{RAY_PORT}"

    def ray_nodes(self) -> list[dict[str, Any]]:
        return alive_nodes(self.head, self.address)


def start_node(node: Node, head: Node, logs: Path) -> None:
    start_ray(
        node, head, logs / f"{node.name}.log",
        port=RAY_PORT, dashboard_port=DASHBOARD_PORT,
        env={**ingress_env(node, INGRESS_FOLDER), **NODE_ENV},
        labels="role=head" if node is head else "role=worker",
    )  # fmt: skip


def _mlflow_server(host: str, root: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    from tests.conftest import free_port

    port = free_port()
    log = root / "mlflow.log"
    out = log.open("w")
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server",
            "--host", host, "--port", str(port),
            "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", str(root / "store"),
            "--workers", "1",
            "--allowed-hosts", f"{host}:{port},{host}",
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    out.close()  # the server keeps its own copy
    url = f"http://{host}:{port}"
    _wait_http(f"{url}/health", proc, log)
    return proc, url, log


def _register(registry_url: str) -> dict[str, Any]:
    registry = open_registry(registry_url)
    x, y = load_breast_cancer(return_X_y=True)
    x = x.astype(np.float32).astype(np.float64)
    boost = GradientBoostingClassifier(n_estimators=30, max_depth=3, random_state=0).fit(x, y)
    registry.publish_sklearn("breast_cancer", boost, x[:64])
    xi, yi = load_iris(return_X_y=True)
    iris = LogisticRegression(max_iter=500).fit(xi, yi)
    registry.publish_sklearn("iris", iris, xi[:50])
    return {"breast_cancer": boost, "iris": iris}


@pytest.fixture(scope="package")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    root = tmp_path_factory.mktemp("cluster")
    logs = root / "logs"
    logs.mkdir()
    workdir = Path("/var/tmp") / f"modelgate-cluster-{uuid.uuid4().hex[:8]}"
    workdir.mkdir(mode=0o700)
    cluster = Cluster(["head", "worker1", "worker2"], workdir)
    mlflow: subprocess.Popen[bytes] | None = None
    started = time.monotonic()
    # Ray's token authentication, as a production cluster runs it: one token for the cluster,
    # given to every node and driver (not the machine's ~/.ray/auth_token).
    token = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    for node in cluster.nodes.values():
        node.env.update(token)
    try:
        cluster.start()
        mlflow, url, mlflow_log = _mlflow_server(cluster.gateway, root)
        originals = _register(url)
        head = cluster.nodes["head"]
        start_node(head, head, logs)
        ray = RayCluster(cluster, url, root / "store", mlflow_log, workdir, originals, logs)
        wait_for(
            lambda: (
                head.run(str(BIN / "ray"), "status", f"--address={ray.address}").returncode == 0
            ),
            "the head node's Ray",
            timeout_s=START_BUDGET_S - (time.monotonic() - started),
            interval_s=2,
        )
        for worker in ray.workers:
            start_node(worker, head, logs)
        wait_for(
            lambda: len(ray.ray_nodes()) == 3,
            "three Ray nodes alive",
            timeout_s=START_BUDGET_S - (time.monotonic() - started),
            interval_s=2,
        )
        yield ray
    finally:
        cluster.stop()
        if mlflow is not None:
            _stop(mlflow)
        shutil.rmtree(workdir, ignore_errors=True)
        for log in sorted(logs.glob("*.log")):  # for a failure's report
            print(f"--- {log.name} (last lines)\n{log.read_text(errors='replace')[-1500:]}")


def gateway_config(cluster: RayCluster) -> dict[str, Any]:
    on_workers = {"labels": {"role": "worker"}}
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": "0.0.0.0", "port": HTTP_PORT},
        "grpc_options": {
            "port": GRPC_PORT,
            "grpc_servicer_functions": ["serve.grpc_service.add_servicer"],
        },
        "applications": [
            {
                "name": APP,
                "route_prefix": "/",
                "import_path": "serve.app:build_app",
                "args": {
                    "registry": cluster.mlflow,
                    "models": [
                        {
                            "name": "breast_cancer",
                            "versions": [
                                {
                                    "uri": "models:/breast_cancer/1",
                                    "placement": "dedicated",
                                    "num_replicas": 2,
                                    "nodes": on_workers,
                                }
                            ],
                        },
                        {
                            "name": "iris",
                            "versions": [{"uri": "models:/iris/1", "placement": "colocated"}],
                        },
                    ],
                    "router": {"nodes": {"labels": {"role": "head"}}},
                },
            }
        ],
    }


def cached(node: Node) -> list[str]:
    """The model files in a node's artifact cache."""
    done = node.run("find", CACHE, "-name", "model.onnx")
    return sorted(done.stdout.split()) if done.returncode == 0 else []


@pytest.fixture(scope="package")
def deployed(ray_cluster: RayCluster) -> dict[str, Any]:
    """The gateway deployed with `modelgate serve CONFIG --address` from inside the head."""
    before = {w.name: cached(w) for w in ray_cluster.workers}
    deploy(ray_cluster, gateway_config(ray_cluster))
    return {"before": before}


def deploy(cluster: RayCluster, config: dict[str, Any], name: str = "cluster.yaml") -> None:
    """`modelgate serve CONFIG --address … --no-block` from inside the head: returns once the
    gateway answers."""
    path = cluster.workdir / name
    path.write_text(yaml.safe_dump(config))
    done = cluster.head.run(
        str(BIN / "modelgate"), "serve", str(path), "--address", cluster.address,
        "--no-block", timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]


def infer_labels(base: str, model: str, rows: np.ndarray) -> list[int]:
    """The labels a model answers for `rows` through the ingress at `base`."""
    body = infer_body(rows)
    response = requests.post(f"{base}/v2/models/{model}/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    label = next(o for o in response.json()["outputs"] if o["name"] == "label")
    return list(label["data"])


def transport_batches(base: str, transport: str) -> float:
    """breast_cancer's batches the router at `base` sent by `transport` (its node's /metrics)."""
    text = requests.get(f"{base}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("modelgate_transport_batches_total{")
        and 'model="breast_cancer"' in line
        and f'transport="{transport}"' in line
    )


def replicas(cluster: RayCluster) -> dict[str, list[dict[str, Any]]]:
    """Each of the gateway's deployments: its replicas' node and state (`serve_replicas`)."""
    return serve_replicas(cluster.head, cluster.address, APP)
