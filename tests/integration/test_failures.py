"""Failure and overload, against the real gateway: every request's outcome is counted and each
one accounted for.

One application beside the session's gateway, with its own copies of the artifacts (so a test
may break them): `bc` (version 1 on two dedicated replicas, version 2 on one, split 50/50) and
`slow` (a model slow on purpose, one batch of one row at a time, 16 queued at most), behind two
router replicas.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np
import pytest
import requests
from sklearn.datasets import load_breast_cancer

from loadtests.clients import Target
from loadtests.engine import Step
from loadtests.runner import load_payloads, run
from serve.protos import grpc_predict_v2_pb2 as pb
from serve.protos import grpc_predict_v2_pb2_grpc as pb_grpc
from serve.ray import launcher
from tests.integration.conftest import (
    Gateway,
    deploy_beside,
    listeners,
    metric_value,
    replica_pids,
    restore,
    settle_metrics,
)
from tests.integration.slow_model import slow_artifact

APP, PREFIX = "failures", "/failures"
ROWS = load_breast_cancer(return_X_y=True)[0][:8].astype(np.float32)
FAST_HEALTH = {"health_check_period_s": 1, "health_check_timeout_s": 5}


def _body(row: np.ndarray) -> dict[str, Any]:
    return {
        "inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": row.tolist()}]
    }


@pytest.fixture(scope="module")
def failures(
    gateway: Gateway, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Path]]:
    folder = tmp_path_factory.mktemp("failures")
    resolved = launcher.preflight(gateway.config)["gateway"]
    artifacts = {}
    for model, _, artifact, version, _ in resolved:
        if model.name == "breast_cancer" and version in ("1", "2"):
            artifacts[version] = Path(shutil.copytree(artifact, folder / f"bc-{version}"))
    artifacts["slow"] = slow_artifact(folder, layers=1200)
    app = {
        "name": APP,
        "route_prefix": PREFIX,
        "import_path": "serve.app:build_app",
        "args": {
            "router": {"num_replicas": 2},
            "models": [
                {
                    "name": "bc",
                    "timeout_ms": 10_000,
                    "versions": [
                        {"artifact": str(artifacts["1"]), "num_replicas": 2},
                        {"artifact": str(artifacts["2"])},
                    ],
                },
                {
                    "name": "slow",
                    "timeout_ms": 5_000,
                    "versions": [
                        {
                            "artifact": str(artifacts["slow"]),
                            "batching": {"max_batch_rows": 1, "max_in_flight": 1, "max_queued": 16},
                        }
                    ],
                },
            ],
        },
        "deployments": [
            {"name": "Router", "user_config": {"models": {"bc": {"weights": {"1": 1, "2": 1}}}}},
            {"name": "bc-v1", **FAST_HEALTH},
            {"name": "bc-v2", **FAST_HEALTH},
        ],
    }
    deploy_beside(gateway, app)
    try:
        yield artifacts
    finally:
        restore(gateway)


def _replica_pids(deployment: str) -> list[int]:
    return replica_pids(APP, deployment)


def _running(deployment: str) -> int:
    from ray import serve

    app = serve.status().applications.get(APP)
    overview = app.deployments.get(deployment) if app is not None else None
    return overview.replica_states.get("RUNNING", 0) if overview is not None else 0


def _wait(condition: Any, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s}s: {what}"
        time.sleep(0.25)


class Traffic:
    """Closed-loop HTTP clients in a thread; every request's outcome is recorded, and a request
    still unanswered after `timeout_s` counts as a hang."""

    def __init__(self, url: str, clients: int = 8, timeout_s: float = 30) -> None:
        self.url, self.clients, self.timeout_s = url, clients, timeout_s
        self.sent = 0
        self.outcomes: Counter[str] = Counter()
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(self.timeout_s + 10)
        assert not self.thread.is_alive(), "a client never got its answer"

    async def _main(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await asyncio.gather(*(self._client(session, i) for i in range(self.clients)))

    async def _client(self, session: aiohttp.ClientSession, index: int) -> None:
        i = index
        while not self.stop.is_set():
            i += self.clients
            self.sent += 1
            try:
                async with session.post(self.url, json=_body(ROWS[i % len(ROWS)])) as response:
                    body = await response.json(content_type=None)
                    self.outcomes[str(response.status)] += 1
                    if response.status != 200:
                        self.errors.append(f"{response.status}: {body.get('error')}")
            except TimeoutError:
                self.outcomes["hang"] += 1
            except aiohttp.ClientError as exc:
                self.outcomes[type(exc).__name__] += 1

    def accounted(self) -> int:
        return sum(self.outcomes.values())


def test_five_times_capacity_sheds_the_excess_and_recovers_at_once(
    gateway: Gateway, failures: dict[str, Path]
) -> None:
    target = Target(gateway.base + PREFIX, "slow", "1")
    payloads = load_payloads(target)
    routers = _replica_pids("Router")
    capacity = run(target, payloads, Step("closed", concurrency=4, duration_s=4, warmup_s=1))
    assert capacity.errors == {}
    rate = 5 * capacity.achieved_rps
    shed_before = metric_value(gateway, "modelgate_shed_total", model="slow", version="1")
    burst = run(
        target,
        payloads,
        Step("open", concurrency=4096, rate=rate, duration_s=20, warmup_s=0, timeout_s=15),
    )
    shed = metric_value(gateway, "modelgate_shed_total", model="slow", version="1") - shed_before
    print("capacity", capacity.summary(), "burst at 5x", burst.summary(), "shed", shed)
    # Every request got an answer: served, or shed at once with 503; no timeout, no hang,
    # no dropped connection.
    assert set(burst.errors) <= {"http_503"}, burst.errors
    assert burst.sent == burst.ok + sum(burst.errors.values())
    assert burst.errors.get("http_503", 0) == shed > 0  # every 503 is a counted shed
    # The queue is bounded, so the answers that were served waited a bounded time: far below
    # the 5 s deadline (16 queued behind one in flight).
    assert burst.percentile_ms(99) < 5_000
    # Goodput holds under overload: the model stays busy rather than collapsing.
    assert burst.achieved_rps > 0.5 * capacity.achieved_rps, (burst.summary(), capacity.summary())
    # Right after: normal service, from the first request on, by the same router replicas.
    for i in range(20):
        response = requests.post(
            f"{target.url}/v2/models/slow/infer", json=_body(ROWS[i % 8]), timeout=10
        )
        assert response.status_code == 200, response.text
    assert _replica_pids("Router") == routers


def test_a_503_from_shedding_says_when_to_retry(
    gateway: Gateway, failures: dict[str, Path]
) -> None:
    async def burst() -> list[tuple[int, str | None, str]]:
        url = f"{gateway.base}{PREFIX}/v2/models/slow/infer"
        async with aiohttp.ClientSession() as session:

            async def one(i: int) -> tuple[int, str | None, str]:
                async with session.post(url, json=_body(ROWS[i % 8])) as response:
                    body = await response.json(content_type=None)
                    return response.status, response.headers.get("retry-after"), str(body)

            return await asyncio.gather(*(one(i) for i in range(120)))

    answers = asyncio.run(burst())
    shed = [a for a in answers if a[0] == 503]
    assert shed and {a[0] for a in answers} <= {200, 503}
    assert all(a[1] == "1" and "overloaded" in a[2] and "limit 16" in a[2] for a in shed)


def test_a_shed_grpc_request_says_when_to_retry(
    gateway: Gateway, failures: dict[str, Path]
) -> None:
    """UNAVAILABLE with `retry-after` and gRPC's own `grpc-retry-pushback-ms` in the trailing
    metadata, as HTTP's 503 carries Retry-After."""

    async def burst() -> list[tuple[grpc.StatusCode, dict[str, str], str]]:
        async with grpc.aio.insecure_channel(gateway.grpc) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)

            async def one(i: int) -> tuple[grpc.StatusCode, dict[str, str], str]:
                request = pb.ModelInferRequest(model_name="slow")
                request.inputs.add(name="input", datatype="FP32", shape=[1, 30])
                request.raw_input_contents.append(ROWS[i % 8].tobytes())
                call = stub.ModelInfer(request, metadata=[("application", APP)], timeout=30)
                try:
                    await call
                except grpc.aio.AioRpcError as exc:
                    trailing = dict(exc.trailing_metadata() or ())
                    return exc.code(), trailing, exc.details() or ""
                return grpc.StatusCode.OK, {}, ""

            return await asyncio.gather(*(one(i) for i in range(120)))

    answers = asyncio.run(burst())
    shed = [a for a in answers if a[0] == grpc.StatusCode.UNAVAILABLE]
    assert shed and {a[0] for a in answers} <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}
    for _, trailing, details in shed:
        assert "overloaded" in details and "limit 16" in details
        assert trailing.get("retry-after") == "1"
        assert trailing.get("grpc-retry-pushback-ms") == "1000"


def test_statistics_count_the_requests_every_router_answered(
    gateway: Gateway, failures: dict[str, Path]
) -> None:
    """20 requests sent straight to each of the two routers' own ports: either one's
    statistics (HTTP or gRPC, through the front door) count all 40."""

    def answered() -> tuple[int, int]:
        settle_metrics()
        http = requests.get(f"{gateway.base}{PREFIX}/v2/models/bc/stats", timeout=10).json()
        with grpc.insecure_channel(gateway.grpc) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            message = stub.ModelStatistics(
                pb.ModelStatisticsRequest(name="bc"), metadata=[("application", APP)], timeout=10
            )
        by_http = sum(s["inference_stats"]["success"]["count"] for s in http["model_stats"])
        by_grpc = sum(s.inference_stats.success.count for s in message.model_stats)
        return by_http, by_grpc

    routers = _replica_pids("Router")
    ports = [
        listener.port
        for listener in listeners()
        if listener.pid in routers and 30000 <= listener.port <= 31000  # direct-ingress HTTP
    ]
    assert len(ports) == 2
    before = answered()
    for port in ports:
        for i in range(20):
            response = requests.post(
                f"http://127.0.0.1:{port}{PREFIX}/v2/models/bc/infer",
                json=_body(ROWS[i % 8]),
                timeout=10,
            )
            assert response.status_code == 200, response.text
    after = answered()
    assert after[0] - before[0] == 40 and after[1] - before[1] == 40


def _kill_one_under_load(gateway: Gateway, deployment: str, clients: int) -> Traffic:
    """SIGKILL one of a deployment's two replicas while clients send to version 1; every
    request is accounted for, none hangs, the only errors allowed are clear 503s; Ray Serve
    replaces the replica."""
    before = _replica_pids(deployment)
    assert len(before) == 2
    url = f"{gateway.base}{PREFIX}/v2/models/bc/versions/1/infer"
    with Traffic(url, clients=clients) as traffic:
        time.sleep(2)
        os.kill(before[0], signal.SIGKILL)
        time.sleep(4)
    print(f"{deployment} killed:", traffic.sent, dict(traffic.outcomes), traffic.errors[:3])
    assert traffic.accounted() == traffic.sent
    assert traffic.outcomes["200"] > 100
    assert set(traffic.outcomes) <= {"200", "503"}, (traffic.outcomes, traffic.errors[:5])
    assert all("unavailable" in e for e in traffic.errors), traffic.errors[:5]
    _wait(lambda: _running(deployment) == 2, f"Ray Serve replaces the killed {deployment}")
    after = _replica_pids(deployment)
    assert before[0] not in after and before[1] in after
    return traffic


def test_killing_a_model_replica_under_load_loses_no_request(
    gateway: Gateway, failures: dict[str, Path]
) -> None:
    """Batches in flight on the killed replica are sent again to the other one."""
    _kill_one_under_load(gateway, "bc-v1", clients=8)


def test_killing_a_router_replica_under_load_loses_no_request(
    gateway: Gateway, failures: dict[str, Path]
) -> None:
    """HAProxy replays what the killed router held on the other one."""
    _kill_one_under_load(gateway, "Router", clients=16)


def test_a_version_whose_artifact_breaks_gets_no_traffic(
    gateway: Gateway, failures: dict[str, Path]
) -> None:
    """Version 2's model.onnx is corrupted after deploy and its replica dies: the replacement
    refuses the artifact, the version turns UNAVAILABLE, the split sends everything to version
    1, and the rest of the gateway serves on."""
    (failures["2"] / "model.onnx").write_bytes(b"\x08\x07not an onnx model")
    [pid] = _replica_pids("bc-v2")
    os.kill(pid, signal.SIGKILL)
    base = f"{gateway.base}{PREFIX}"

    def unavailable() -> bool:
        index = requests.post(f"{base}/v2/repository/index", json={}, timeout=10).json()
        states = {row["version"]: row for row in index if row["name"] == "bc"}
        return states["2"]["state"] == "UNAVAILABLE" and states["1"]["state"] == "READY"

    _wait(unavailable, "version 2 reported UNAVAILABLE by both routers", timeout_s=90)
    _wait(lambda: all(unavailable() for _ in range(6)), "every router agrees", timeout_s=30)
    index = requests.post(f"{base}/v2/repository/index", json={}, timeout=10).json()
    reason = next(r["reason"] for r in index if r["version"] == "2" and r["name"] == "bc")
    assert "bc-v2" in reason and "no running replica" in reason
    versions = Counter()
    for i in range(60):
        response = requests.post(f"{base}/v2/models/bc/infer", json=_body(ROWS[i % 8]), timeout=10)
        assert response.status_code == 200, response.text
        versions[response.headers["x-model-version"]] += 1
    assert versions == {"1": 60}
    pinned = requests.post(f"{base}/v2/models/bc/versions/2/infer", json=_body(ROWS[0]), timeout=10)
    assert pinned.status_code == 503 and "version 2 is not ready" in pinned.json()["error"]
    assert pinned.headers["retry-after"] == "1"
    assert requests.get(f"{base}/v2/models/bc/versions/2/ready", timeout=10).status_code == 503
    assert requests.get(f"{base}/v2/models/bc/ready", timeout=10).status_code == 200
    assert requests.get(f"{base}/v2/health/ready", timeout=10).status_code == 200
    # The session's own gateway is untouched.
    answer = requests.post(
        f"{gateway.base}/v2/models/breast_cancer/infer", json=_body(ROWS[0]), timeout=10
    )
    assert answer.status_code == 200


#: Callers per protocol, and how long each waits: the slow model answers a few a second per
#: router (~20-25 ms a row, one at a time), so most of them give up while queued.
CALLERS, GIVE_UP_S = 30, 0.15


def test_callers_who_give_up_free_their_slots_and_are_never_computed(
    gateway: Gateway, failures: dict[str, Path]
) -> None:
    """HTTP clients that disconnect, and gRPC calls whose deadline passes, while their requests
    are queued: those requests are dropped before compute, and the queue serves on at once."""
    import grpc

    from serve.protos import grpc_predict_v2_pb2 as pb
    from serve.protos import grpc_predict_v2_pb2_grpc as pb_grpc

    def computed() -> float:
        return metric_value(gateway, "modelgate_model_rows_total", model="slow", version="1")

    url = f"{gateway.base}{PREFIX}/v2/models/slow/infer"
    before = computed()

    async def give_up(n: int) -> Counter[str]:
        outcomes: Counter[str] = Counter()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=GIVE_UP_S)) as session:

            async def one(i: int) -> None:
                try:
                    async with session.post(url, json=_body(ROWS[i % 8])) as response:
                        outcomes[str(response.status)] += 1
                except TimeoutError:
                    outcomes["gave up"] += 1

            await asyncio.gather(*(one(i) for i in range(n)))
        return outcomes

    http = asyncio.run(give_up(CALLERS))
    request = pb.ModelInferRequest(model_name="slow", model_version="1")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, 30])
    tensor.contents.fp32_contents.extend(ROWS[0].tolist())
    with grpc.insecure_channel(gateway.grpc) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        calls = [
            stub.ModelInfer.future(request, timeout=GIVE_UP_S, metadata=[("application", APP)])
            for _ in range(CALLERS)
        ]
        codes = Counter()
        for call in calls:
            try:
                call.result()
                codes["OK"] += 1
            except grpc.RpcError as exc:
                codes[exc.code().name] += 1
    time.sleep(3)  # anything still queued would have run by now (~25 ms a row)
    ran = computed() - before
    print("gave up:", dict(http), dict(codes), "computed", ran, "of", 2 * CALLERS)
    assert http["gave up"] > 3 and codes["DEADLINE_EXCEEDED"] > 3
    answered = sum(n for k, n in http.items() if k != "gave up") + codes["OK"]
    assert ran < answered + 10  # about those answered and those running when their caller left
    time.sleep(1)
    assert computed() == before + ran  # nothing was left behind in a queue
    response = requests.post(url, json=_body(ROWS[0]), timeout=5)
    assert response.status_code == 200
