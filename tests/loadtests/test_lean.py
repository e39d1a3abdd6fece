"""loadtests/lean.py: the lean data path's server candidates run the Router's own request path
(answers and errors as the gateway gives them), and the measurement runs end to end on real
servers in processes of their own."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from loadtests import lean
from loadtests.many_models import base_artifact


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(base_artifact(tmp_path_factory.mktemp("lean")))


def _body(features: int) -> dict[str, object]:
    return {
        "inputs": [
            {"name": "input", "shape": [1, features], "datatype": "FP32", "data": [0.5] * features}
        ]
    }


def test_the_candidates_app_answers_and_refuses_as_the_router_does(artifact: str) -> None:
    with TestClient(lean.modelgate_app(artifact)) as client:
        answer = client.post(f"/v2/models/{lean.MODEL}/versions/1/infer", json=_body(30))
        assert answer.status_code == 200
        assert answer.json()["outputs"][0]["data"] == pytest.approx([0.5])  # the mean of 0.5s
        refused = client.post(f"/v2/models/{lean.MODEL}/versions/1/infer", json=_body(29))
        assert refused.status_code == 400 and "input" in refused.json()["error"]
        assert client.get("/v2/health/ready").status_code == 200


@pytest.mark.parametrize("server", ["uvicorn", "raw"])
def test_a_measurement_runs_a_server_in_its_own_process_and_counts_its_cpu(
    artifact: str, server: str
) -> None:
    point = lean.measure(server, artifact, duration_s=1.0)
    assert point["server"] == server and point["rps"] > 0
    assert point["cpu_us"] is not None and point["cpu_us"] > 0  # the server's, from /proc
    assert point["p50_ms_1"] > 0


def test_the_report_takes_each_ratio_within_its_round() -> None:
    def point(server: str, cpu_us: float) -> dict[str, object]:
        return {"server": server, "rps": 1000, "cpu_us": cpu_us, "p50_ms_32": 3, "p50_ms_1": 0.5}

    # Round 2 is a slow spell for both: uvicorn is 1.5x raw in each round.
    first = [point("uvicorn", 150), point("raw", 100)]
    table = lean.report([first, [point("uvicorn", 300), point("raw", 200)]])
    assert "| uvicorn | 1000 | 225 µs | 1.50× |" in table
    assert "| raw | 1000 | 150 µs | 1.00× |" in table


def test_granian_is_measured_only_where_it_is_installed() -> None:
    installed = (Path(sys.executable).parent / "granian").exists()
    assert lean.available("granian") is installed
    assert lean.available("uvicorn") and lean.available("raw")


def test_the_ingress_comparison_counts_each_serving_process_in_its_group() -> None:
    from loadtests import ingress

    assert ingress.group("/usr/lib/haproxy -f cfg", "haproxy") == "balancer"
    assert ingress.group("ray::ServeReplica:modelgate:Router", "ray::ServeRepli") == "router"
    assert ingress.group("ray::ServeController", "ray::ServeContr") == "ray"
    point = {
        "rps": 100.0,
        "cpu_us": {"balancer": 100.0, "router": 300.0, "ray": 20.0},
        "serving_us": 400.0,
        "p50_ms_32": 3.0,
        "p50_ms_1": 1.0,
        "grpc_rps": 50.0,
    }
    lean_point = {**point, "rps": 200.0, "serving_us": 200.0, "p50_ms_1": 0.5, "grpc_rps": 75.0}
    text = ingress.report([{"ray": point, "lean": lean_point}])
    assert "| ray | 100 | 100 µs | 300 µs | 400 µs | 20 µs | 3.00 ms | 1.00 ms | 50 |" in text
    assert "serving CPU a request 0.50x, p50 at 1 client 0.50x, gRPC req/s 1.50x" in text
