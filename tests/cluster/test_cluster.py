"""The gateway on a real three-node Ray cluster (tests/cluster/conftest.py): every node its own
address and disk, artifacts that reach the workers from the MLflow server only, a router on the
head reaching dedicated replicas on the workers over the direct transport, ingress on every node."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import requests
import yaml
from sklearn.datasets import load_breast_cancer, load_iris

from loadtests.netns import BIN, REPO, wait_for
from tests.cluster.conftest import (
    APP,
    GRPC_PORT,
    HTTP_PORT,
    RayCluster,
    cached,
    gateway_config,
    infer_labels,
    replicas,
    transport_batches,
)


def _ready(base: str) -> bool:
    try:
        return requests.get(f"{base}/v2/health/ready", timeout=5).status_code == 200
    except requests.RequestException:  # its proxy not listening yet
        return False


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
        [onnx] = cached(worker)
        assert "/breast_cancer/" in onnx
        done = worker.run("sha256sum", onnx)
        stored = next(p for p in published if p.parent.parent.name == "breast_cancer")
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
        wait_for(lambda base=base: _ready(base), f"{node.name}'s ingress ready", 120, 1)
        expected = ray_cluster.originals["breast_cancer"].predict(x).tolist()
        assert infer_labels(base, "breast_cancer", x) == expected
        assert infer_labels(base, "iris", xi) == ray_cluster.originals["iris"].predict(xi).tolist()


def test_dedicated_replicas_run_on_the_workers_and_the_router_on_the_head(
    ray_cluster: RayCluster, deployed: dict[str, Any]
) -> None:
    placed = {k: [r["node_ip"] for r in v] for k, v in replicas(ray_cluster).items()}
    workers = {w.address for w in ray_cluster.workers}
    assert set(placed["breast_cancer-v1"]) == workers  # one replica on each worker
    assert set(placed["Router"]) == {ray_cluster.head.address}


def test_the_router_reaches_the_workers_replicas_over_the_direct_transport(
    ray_cluster: RayCluster, deployed: dict[str, Any]
) -> None:
    base = f"http://{ray_cluster.head.address}:{HTTP_PORT}"  # the router's node: its metrics
    x = load_breast_cancer(return_X_y=True)[0][:4].astype(np.float32)
    before = {t: transport_batches(base, t) for t in ("direct", "handle")}
    for _ in range(20):
        infer_labels(base, "breast_cancer", x)
    assert transport_batches(base, "direct") - before["direct"] == 20
    assert transport_batches(base, "handle") == before["handle"]


def test_grpc_through_the_head_answers_as_the_original(
    ray_cluster: RayCluster, deployed: dict[str, Any]
) -> None:
    import grpc

    from serve.protos import grpc_predict_v2_pb2 as pb
    from serve.protos import grpc_predict_v2_pb2_grpc as pb_grpc

    x = load_breast_cancer(return_X_y=True)[0][20:28].astype(np.float32)
    request = pb.ModelInferRequest(model_name="breast_cancer")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    with grpc.insecure_channel(f"{ray_cluster.head.address}:{GRPC_PORT}") as channel:
        response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            request, metadata=[("application", APP)], timeout=30
        )
    index = [o.name for o in response.outputs].index("label")
    labels = np.frombuffer(response.raw_output_contents[index], np.int64).tolist()
    assert labels == ray_cluster.originals["breast_cancer"].predict(x).tolist()


def test_binary_tensors_through_the_head_answer_as_the_original(
    ray_cluster: RayCluster, deployed: dict[str, Any]
) -> None:
    """Triton's binary tensor extension, both ways, through the head's ingress."""
    from serve.client.samples import http_binary

    x = load_breast_cancer(return_X_y=True)[0][40:48].astype(np.float32)
    base = f"http://{ray_cluster.head.address}:{HTTP_PORT}"
    status, headers, raw = http_binary(base, "breast_cancer", {"input": x})
    assert status == 200, raw[:500]
    length = int({k.lower(): v for k, v in headers.items()}["inference-header-content-length"])
    offset, labels = length, None
    for output in json.loads(raw[:length])["outputs"]:
        size = output["parameters"]["binary_data_size"]
        if output["name"] == "label":
            labels = np.frombuffer(raw[offset : offset + size], np.int64).tolist()
        offset += size
    assert offset == len(raw)
    assert labels == ray_cluster.originals["breast_cancer"].predict(x).tolist()


def test_every_node_answers_the_readiness_probe(
    ray_cluster: RayCluster, deployed: dict[str, Any]
) -> None:
    from serve.ray.launcher import PROXY_HEALTH_PATH

    for node in ray_cluster.cluster.nodes.values():
        url = f"http://{node.address}:{HTTP_PORT}{PROXY_HEALTH_PATH}"
        assert requests.get(url, timeout=10).status_code == 200, node.name


def test_plan_counts_replicas_across_the_nodes_and_loads_from_several(
    ray_cluster: RayCluster, deployed: dict[str, Any]
) -> None:
    """`modelgate plan --config` on the cluster, with short probes: breast_cancer v1 redeployed
    at 1 and 2 replicas (on the workers, as its config says), where each ran counted by node,
    the load generated from several nodes, and the operator's config put back."""
    config = ray_cluster.workdir / "cluster.yaml"  # what `deployed` applied
    out = ray_cluster.workdir / "plan"
    done = ray_cluster.head.run(
        str(BIN / "modelgate"), "plan",
        "--url", f"http://{ray_cluster.head.address}:{HTTP_PORT}",
        "--model", "breast_cancer", "--version", "1", "--slo-p99", "500ms",
        "--config", str(config), "--address", ray_cluster.address,
        "--ray-address", ray_cluster.address, "--processes", "3", "--replicas", "1,2",
        "--start-rate", "40", "--max-rate", "80", "--probe-duration", "1", "--warmup", "0.5",
        "--max-probes", "2", "--out", str(out),
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    doc = json.loads((out / "plan.json").read_text())
    workers = {w.address for w in ray_cluster.workers}
    placement = doc["placement"]
    assert {k: sum(v.values()) for k, v in placement.items()} == {"1 replicas": 1, "2 replicas": 2}
    assert all(set(v) <= workers for v in placement.values()), placement
    nodes = {n.address for n in ray_cluster.cluster.nodes.values()}
    for search in doc["searches"].values():
        for probe in search["probes"]:
            where = {share["where"] for share in probe["generators"]}
            assert len(where) >= 2 and where <= nodes, probe["generators"]
            assert probe["measured"] > 0 and probe["errors"] == {}
    # the operator's config is back: two replicas of version 1 on the workers
    running = [r for r in replicas(ray_cluster)["breast_cancer-v1"] if "RUNNING" in r["state"]]
    assert len(running) == 2 and {r["node_ip"] for r in running} <= workers


def test_serve_deploy_against_the_heads_dashboard_adds_an_application(
    ray_cluster: RayCluster, deployed: dict[str, Any]
) -> None:
    """Ray's own `serve deploy`, as an operator runs it against the head: the config it applies
    replaces the running one (the gateway stays, a second application joins)."""
    config = gateway_config(ray_cluster)
    second = {
        "name": "second",
        "route_prefix": "/second",
        "import_path": "serve.app:build_app",
        "args": {
            "registry": ray_cluster.mlflow,
            "models": [
                {"name": "iris", "versions": [{"uri": "models:/iris/1", "placement": "colocated"}]}
            ],
        },
    }
    config["applications"].append(second)
    path = ray_cluster.workdir / "two-apps.yaml"
    path.write_text(yaml.safe_dump(config))
    dashboard = f"http://{ray_cluster.head.address}:8265"
    done = ray_cluster.head.run(str(BIN / "serve"), "deploy", str(path), "--address", dashboard)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    xi = load_iris(return_X_y=True)[0][:8].astype(np.float32)
    expected = ray_cluster.originals["iris"].predict(xi).tolist()

    def second_answers() -> bool:
        try:
            return (
                infer_labels(f"http://{ray_cluster.head.address}:{HTTP_PORT}/second", "iris", xi)
                == expected
            )
        except AssertionError:
            return False

    wait_for(second_answers, "the second application answering", timeout_s=180, interval_s=2)
    assert infer_labels(f"http://{ray_cluster.head.address}:{HTTP_PORT}", "iris", xi) == expected


def test_the_load_generator_spreads_over_the_nodes_and_its_shares_add_up(
    ray_cluster: RayCluster, deployed: dict[str, Any]
) -> None:
    out = ray_cluster.workdir / "loadtest"
    done = ray_cluster.head.run(
        str(BIN / "modelgate"), "loadtest",
        "--url", f"http://{ray_cluster.head.address}:{HTTP_PORT}",
        "--model", "breast_cancer", "--ray-address", ray_cluster.address, "--processes", "3",
        "--concurrency", "6", "--duration", "3", "--warmup", "1", "--out", str(out),
        timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    [step] = json.loads((out / "loadtest.json").read_text())["steps"]
    shares = step["generators"]
    nodes = {n.address for n in ray_cluster.cluster.nodes.values()}
    assert len(shares) == 3 and {s["where"] for s in shares} <= nodes
    assert len({s["where"] for s in shares}) >= 2  # spread over nodes
    assert sum(s["sent"] for s in shares) == step["sent"] > 0
    assert sum(s["measured"] for s in shares) == step["measured"] == step["ok"]
