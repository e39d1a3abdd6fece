"""The gateway on a real three-node Ray cluster (tests/cluster/conftest.py): every node its own
address and disk, artifacts that reach the workers from the MLflow server only, a router on the
head reaching dedicated replicas on the workers over the direct transport, ingress on every node."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import requests
import yaml
from sklearn.datasets import load_breast_cancer, load_iris

from tests.cluster.conftest import RayCluster
from tests.cluster.netns import BIN, REPO, wait_for

APP = "gateway"
CACHE = "/tmp/modelgate-0/artifacts"  # the default node cache of root, inside each node
HTTP_PORT, GRPC_PORT = 8000, 9000


def _config(cluster: RayCluster) -> dict[str, Any]:
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


def _cached(node: Any) -> list[str]:
    done = node.run("find", CACHE, "-name", "model.onnx")
    return sorted(done.stdout.split()) if done.returncode == 0 else []


def _infer(base: str, model: str, rows: np.ndarray) -> list[int]:
    body = {
        "inputs": [
            {
                "name": "input",
                "shape": list(rows.shape),
                "datatype": "FP32",
                "data": rows.ravel().tolist(),
            }
        ]
    }
    response = requests.post(f"{base}/v2/models/{model}/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    label = next(o for o in response.json()["outputs"] if o["name"] == "label")
    return list(label["data"])


@pytest.fixture(scope="module")
def deployed(ray_cluster: RayCluster) -> dict[str, Any]:
    """The gateway deployed with `modelgate serve CONFIG --address` from inside the head."""
    before = {w.name: _cached(w) for w in ray_cluster.workers}
    path = ray_cluster.workdir / "cluster.yaml"
    path.write_text(yaml.safe_dump(_config(ray_cluster)))
    done = ray_cluster.head.run(
        str(BIN / "modelgate"), "serve", str(path), "--address", ray_cluster.address,
        "--no-block", timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return {"before": before}


def test_every_node_has_its_own_address_and_disk(ray_cluster: RayCluster) -> None:
    addresses = {n["NodeManagerAddress"] for n in ray_cluster.ray_nodes()}
    assert addresses == {n.address for n in ray_cluster.cluster.nodes.values()}
    marker = f"/tmp/only-on-head-{ray_cluster.cluster.id}"
    assert ray_cluster.head.run("touch", marker).returncode == 0
    for worker in ray_cluster.workers:
        assert worker.run("test", "-e", marker).returncode == 1
        assert worker.run("ls", str(REPO / ".modelgate")).stdout == ""  # not the repository's
    assert ray_cluster.head.run("test", "-e", marker).returncode == 0


def test_artifacts_reach_the_workers_from_the_mlflow_server_only(
    ray_cluster: RayCluster, deployed: dict[str, Any]
) -> None:
    assert deployed["before"] == {w.name: [] for w in ray_cluster.workers}
    published = sorted(ray_cluster.mlflow_store.glob("modelgate/artifacts/*/*/model.onnx"))
    assert [p.parent.parent.name for p in published] == ["breast_cancer", "iris"]
    for worker in ray_cluster.workers:
        [cached] = _cached(worker)
        assert "/breast_cancer/" in cached
        done = worker.run("sha256sum", cached)
        stored = next(p for p in published if p.parent.parent.name == "breast_cancer")
        import hashlib

        assert done.stdout.split()[0] == hashlib.sha256(stored.read_bytes()).hexdigest()
    log = ray_cluster.mlflow_log.read_text()
    for worker in ray_cluster.workers:  # each worker fetched it from the server itself
        assert any(
            worker.address in line
            and "mlflow-artifacts/artifacts/modelgate/artifacts/breast_cancer" in line
            and "GET" in line
            for line in log.splitlines()
        ), f"no download by {worker.address} in the server's log"


def test_answers_through_every_nodes_ingress_equal_the_original_models(
    ray_cluster: RayCluster, deployed: dict[str, Any]
) -> None:
    x = load_breast_cancer(return_X_y=True)[0][:16].astype(np.float32)
    xi = load_iris(return_X_y=True)[0][:8].astype(np.float32)
    for node in ray_cluster.cluster.nodes.values():
        base = f"http://{node.address}:{HTTP_PORT}"
        wait_for(
            lambda base=base: requests.get(f"{base}/v2/health/ready", timeout=5).status_code == 200,
            f"{node.name}'s ingress ready",
            timeout_s=120,
            interval_s=1,
        )
        expected = ray_cluster.originals["breast_cancer"].predict(x).tolist()
        assert _infer(base, "breast_cancer", x) == expected
        assert _infer(base, "iris", xi) == ray_cluster.originals["iris"].predict(xi).tolist()


def test_dedicated_replicas_run_on_the_workers_and_the_router_on_the_head(
    ray_cluster: RayCluster, deployed: dict[str, Any]
) -> None:
    out = ray_cluster.driver(
        "import json, ray\n"
        f"ray.init(address={ray_cluster.address!r}, logging_level='ERROR')\n"
        "from serve.ray.internals import serve_details\n"
        f"d = serve_details()['applications'][{APP!r}]['deployments']\n"
        "print(json.dumps({k: [r['node_ip'] for r in v['replicas']] for k, v in d.items()}))"
    )
    placed = json.loads(out.strip().splitlines()[-1])
    workers = {w.address for w in ray_cluster.workers}
    assert set(placed["breast_cancer-v1"]) == workers  # one replica on each worker
    assert set(placed["Router"]) == {ray_cluster.head.address}
