"""One real gateway for the whole session: real Ray, real ONNX Runtime, real HTTP and gRPC."""

from __future__ import annotations

import contextlib
import copy
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from converters.loaders import load_model
from converters.registry import ModelRef, Registry
from serve.protos import grpc_predict_v2_pb2 as pb
from serve.protos import grpc_predict_v2_pb2_grpc as pb_grpc
from tests.conftest import free_port

APP = "gateway"
#: The Router's user_config: version 1 takes the default route; aliases on top.
ROUTING = {
    "models": {"breast_cancer": {"weights": {"1": 1}, "aliases": {"champion": "1", "canary": "2"}}}
}


@dataclass
class Gateway:
    base: str
    grpc: str
    registry: Registry
    originals: dict[str, Any]  # "model:version" -> the original scikit-learn model
    autoscaled: str  # deployment name of the autoscaling version
    config: dict[str, Any]  # the Ray Serve config the session deployed
    metrics: str  # the node exporter's URL


def deploy_beside(
    gateway: Gateway, app: dict[str, Any], preflight: bool = True, wait: bool = True
) -> None:
    """Deploy `app` next to the session's gateway (same artifacts and telemetry, and the same
    registry, unless the app names its own). `wait`: until every application runs."""
    from serve.ray import internals, launcher

    base = copy.deepcopy(gateway.config)
    args = base["applications"][0]["args"]
    app = copy.deepcopy(app)
    for key in ("registry", "artifacts", "metrics", "drift"):
        app["args"].setdefault(key, args[key])
    base["applications"].append(app)
    if preflight:
        launcher.preflight(base)
    if wait:
        launcher.deploy(base)
        if app.get("route_prefix"):
            wait_routed(gateway, app["route_prefix"])
    else:
        internals.start_serve_and_deploy(base)


def wait_routed(gateway: Gateway, prefix: str, timeout_s: float = 60.0) -> None:
    """Until the application at `prefix` answers through the front door. Ray reports an
    application RUNNING before HAProxy routes its prefix: Ray's HAProxy manager rewrites the
    configuration and restarts HAProxy once the controller's broadcast of the new targets
    reaches it, and until then HAProxy answers its own 404 (a test's first request failed so,
    a second after the deploy)."""
    import requests

    url = f"{gateway.base}{prefix.rstrip('/')}/v2/health/live"
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(requests.RequestException, ValueError):
            answer = requests.get(url, timeout=5)
            if answer.status_code == 200 and answer.json().get("live") is True:
                return
        assert time.monotonic() < deadline, f"{prefix} is not routed after {timeout_s} s"
        time.sleep(0.1)


def replica_pids(app: str, deployment: str) -> list[int]:
    """Live replica processes of a deployment, found by the title Ray gives an actor's process
    (`ray::ServeReplica:<app>:<deployment>`, then `.method` while it runs one)."""
    title = f"ray::ServeReplica:{app}:{deployment}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(title) and cmdline[len(title) : len(title) + 1] in (b"", b"\0", b"."):
            pids.append(int(entry.name))
    return sorted(pids)


@dataclass(frozen=True)
class Listener:
    pid: int
    address: str  # "0.0.0.0" or "::" for every interface
    port: int


def listeners() -> list[Listener]:
    """Every listening TCP socket on this machine's network namespace, with the process that
    holds it (from /proc/net/tcp{,6} and /proc/*/fd: no traffic)."""
    import socket

    by_inode: dict[str, tuple[str, int]] = {}
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            hex_address, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_address)
            # the kernel writes each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            address = socket.inet_ntop(family, raw)
            # an IPv4-mapped IPv6 bind (grpc.aio binds "127.0.0.1" so) reaches what the IPv4
            # address does: named as that
            if address.startswith("::ffff:") and "." in address:
                address = address.removeprefix("::ffff:")
            by_inode[fields[9]] = (address, int(hex_port, 16))
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            links = [os.readlink(fd) for fd in (entry / "fd").iterdir()]
        except OSError:
            continue
        for link in links:
            inode = link[len("socket:[") : -1] if link.startswith("socket:[") else None
            if inode in by_inode:
                address, port = by_inode[inode]
                found.append(Listener(int(entry.name), address, port))
    return found


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket listening on `port`."""
    return {listener.address for listener in listeners() if listener.port == port}


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def settle_metrics() -> None:
    """Waits until what was answered so far is in every replica's metrics: the per-request
    series are written at most FLUSH_S after an update (serve/observe/metrics.py)."""
    from serve.observe.metrics import FLUSH_S

    time.sleep(4 * FLUSH_S)


def metric_value(gateway: Gateway, name: str, **labels: str) -> float:
    """One sample of the node's metrics (every replica summed); 0 if absent."""
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    settle_metrics()
    text = requests.get(gateway.metrics, timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def gateway_config(
    registry: Registry, artifacts: Path, http: int, grpc: int, metrics: int
) -> dict[str, Any]:
    fast = {
        "min_replicas": 1,
        "max_replicas": 2,
        "target_ongoing_requests": 1,
        "upscale_delay_s": 0.5,
        "downscale_delay_s": 3,
        "metrics_interval_s": 0.5,
        "look_back_period_s": 1,
    }
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": http},
        "grpc_options": {
            "port": grpc,
            "grpc_servicer_functions": ["serve.grpc_service.add_servicer"],
        },
        "applications": [
            {
                "name": APP,
                "route_prefix": "/",
                "import_path": "serve.app:build_app",
                "deployments": [{"name": "Router", "user_config": ROUTING}],
                "args": {
                    "registry": registry.location,
                    "artifacts": str(artifacts),
                    "limits": {"max_body_bytes": 1 << 20, "body_timeout_s": 10},
                    "metrics": {"port": metrics, "host": "127.0.0.1"},
                    "drift": {"interval_s": 1, "window_s": 60, "min_rows": 50},
                    "models": [
                        {
                            "name": "breast_cancer",
                            "versions": [
                                {"uri": "models:/breast_cancer/1", "placement": "dedicated"},
                                {
                                    "uri": "models:/breast_cancer/2",
                                    "placement": "dedicated",
                                    "autoscaling": fast,
                                },
                                {"uri": "models:/breast_cancer/3", "placement": "colocated"},
                            ],
                        },
                        {
                            "name": "iris",
                            "versions": [
                                {"uri": "models:/iris@champion", "placement": "colocated"}
                            ],
                        },
                        {
                            "name": "churn",
                            "versions": [
                                {"uri": "models:/churn@champion", "placement": "dedicated"}
                            ],
                        },
                    ],
                },
            }
        ],
    }


def restore(gateway: Gateway, timeout_s: float = 60) -> None:
    """The session's gateway alone again, once the other applications are gone: gRPC calls
    without `application` metadata work only while a single application exists."""
    from ray import serve

    from serve.ray import launcher

    launcher.deploy(gateway.config)
    deadline = time.monotonic() + timeout_s
    while set(serve.status().applications) != {APP}:
        assert time.monotonic() < deadline, f"apps left: {set(serve.status().applications)}"
        time.sleep(0.25)
    with grpc.insecure_channel(gateway.grpc) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        while True:
            try:
                stub.ServerLive(pb.ServerLiveRequest(), timeout=5)
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline, "gRPC without application metadata"
                time.sleep(0.25)


# Stopped once the integration tests are done (package scope): an idle Ray left running takes
# ~25% of a core, enough to make the load-test harness's tests that run after these see late
# sends.
@pytest.fixture(scope="package")
def gateway(demo_registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    from serve.ray import launcher

    http, grpc, metrics = free_port(), free_port(), free_port()
    artifacts = tmp_path_factory.mktemp("artifacts")
    config = gateway_config(demo_registry, artifacts, http, grpc, metrics)
    originals = {}
    for name, version in [
        ("breast_cancer", "1"),
        ("breast_cancer", "2"),
        ("breast_cancer", "3"),
        ("iris", "1"),
        ("churn", "1"),
    ]:
        fetched = demo_registry.fetch(
            ModelRef(name, version), tmp_path_factory.mktemp(f"orig-{name}-{version}")
        )
        originals[f"{name}:{version}"] = load_model(fetched)
    launcher.preflight(config)
    launcher.start_ray(env=launcher.ingress_env(config))
    try:
        launcher.deploy(config)
        yield Gateway(
            f"http://127.0.0.1:{http}",
            f"127.0.0.1:{grpc}",
            demo_registry,
            originals,
            "breast_cancer-v2",
            config,
            f"http://127.0.0.1:{metrics}/metrics",
        )
    finally:
        launcher.stop_ray()
