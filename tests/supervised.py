"""`modelgate serve` run as a user does, in a process of its own with its own Ray instance and
ports, beside the test session's Ray: for tests that need a gateway the session's cannot be
(restarted whole, or set up with another node setting)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from converters.local_registry import LocalRegistry
from converters.pipeline import ConvertOptions, convert_uri
from serve.cli.supervisor import descendants
from tests.conftest import free_port

ROW = {
    "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]
}
READY = "serving; Ctrl-C to stop"


def cmdline(pid: int) -> str:
    try:
        return (Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")).decode()
    except OSError:
        return ""


def alive() -> list[int]:
    return [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit()]


def wait_log(log: Path, text: str, count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while log.read_text(errors="replace").count(text) < count:
        assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
        time.sleep(0.5)


def answer(url: str, timeout_s: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            response = requests.post(url, json=ROW, timeout=5)
            if response.status_code == 200:
                return dict(response.json())
            starting = response.status_code == 404 and "-/routes" in response.text  # Ray's own
            assert starting or response.status_code >= 500, response.text
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, f"no answer from {url} within {timeout_s}s"
        time.sleep(0.5)


@dataclass
class Supervised:
    proc: subprocess.Popen[bytes]
    base: str  # http://127.0.0.1:<port><route prefix>
    log: Path
    folders: set[Path]  # the private HAProxy folders that existed before it started
    config: Path  # the config it serves
    grpc: str  # its gRPC front door, host:port
    env: dict[str, str]  # the settings it was started with beside this process's environment

    @property
    def url(self) -> str:
        return f"{self.base}/v2/models/iris/infer"


@contextlib.contextmanager
def supervised_gateway(
    tmp_path: Path,
    name: str = "restart",
    prefix: str = "/",
    env: dict[str, str] | None = None,
    router: dict[str, Any] | None = None,
    limits: dict[str, Any] | None = None,
) -> Iterator[Supervised]:
    """`modelgate serve` of one application (iris, colocated) in a process of its own, stopped
    with everything it started (both Ray instances it may have run) whatever happens."""
    registry = LocalRegistry(tmp_path / "registry")
    x, y = load_iris(return_X_y=True)
    registry.publish_sklearn("iris", LogisticRegression(max_iter=500).fit(x, y), x[:50])
    artifact = convert_uri(registry, "models:/iris/1", ConvertOptions(out=tmp_path / "a")).path
    http, grpc = free_port(), free_port()
    config = {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": http},
        "grpc_options": {
            "port": grpc,
            "grpc_servicer_functions": [
                "serve.protos.grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server"
            ],
        },
        "applications": [
            {
                "name": name,
                "route_prefix": prefix,
                "import_path": "serve.app:build_app",
                "args": {
                    "artifacts": str(tmp_path / "a"),
                    "metrics": {"port": free_port(), "directory": str(tmp_path / "metrics")},
                    **({"router": router} if router else {}),
                    **({"limits": limits} if limits else {}),
                    "models": [
                        {
                            "name": "iris",
                            "versions": [{"artifact": str(artifact), "placement": "colocated"}],
                        }
                    ],
                },
            }
        ],
    }
    path = tmp_path / "restart.yaml"
    path.write_text(yaml.safe_dump(config))
    # Its own HAProxy, fallback proxy and direct-ingress ports, so that it can run beside the
    # test session's Ray: replicas bind their direct-ingress ports with SO_REUSEPORT, so two
    # instances on the same range would take each other's requests (the ranges stay below the
    # ephemeral ports that free_port() hands out, and apart from the lean listeners' ports,
    # serve/ingress/lean.py).
    overrides = {
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        # HAProxy's backup server for every route is Ray Serve's proxy actor on these ports
        # (8500 / 9500 by default): shared, a request that finds this instance's routers not
        # (yet) up is answered by the other instance's applications.
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port()),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(free_port()),
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": "28000",
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": "28999",
        "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": "29000",
        "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": "29999",
        **(env or {}),
    }
    env = {**os.environ, **overrides}
    log = tmp_path / "serve.log"
    ray_metrics = str(free_port())
    folders = set(Path("/tmp").glob("mg-*"))
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "serve.cli",
                "serve",
                str(path),
                "--ray-metrics-port",
                ray_metrics,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        base = f"http://127.0.0.1:{http}{prefix.rstrip('/')}"
        yield Supervised(proc, base, log, folders, path, f"127.0.0.1:{grpc}", overrides)
    finally:
        everything = [proc.pid, *descendants(proc.pid)]
        groups = set()
        for pid in everything:  # the supervised child runs Ray in a session of its own
            with contextlib.suppress(ProcessLookupError):
                groups.add(os.getpgid(pid))
        groups.discard(os.getpgid(0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()
        for pid in everything:  # anything left of either Ray instance
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for group in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
