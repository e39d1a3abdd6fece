"""The whole Ray instance restarts: `modelgate serve` (supervising a local Ray) starts a fresh
one and deploys the same config again, and the gateway answers as before.

Runs `modelgate serve` as a user does, in a process of its own with its own Ray instance and
ports (beside the test session's), and kills that instance's raylet and GCS server."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
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


def _cmdline(pid: int) -> str:
    try:
        return (Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")).decode()
    except OSError:
        return ""


def _alive() -> list[int]:
    return [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit()]


def _wait_log(log: Path, text: str, count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while log.read_text(errors="replace").count(text) < count:
        assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
        time.sleep(0.5)


def _answer(url: str, timeout_s: float) -> dict[str, object]:
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


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, Path, set[Path]]]:
    """`modelgate serve` in a process of its own; with the private HAProxy folders that
    existed before it started (the test session's own Ray, say)."""
    registry = LocalRegistry(tmp_path / "registry")
    x, y = load_iris(return_X_y=True)
    registry.publish_sklearn("iris", LogisticRegression(max_iter=500).fit(x, y), x[:50])
    artifact = convert_uri(registry, "models:/iris/1", ConvertOptions(out=tmp_path / "a")).path
    http = free_port()
    config = {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": http},
        "grpc_options": {
            "port": free_port(),
            "grpc_servicer_functions": [
                "serve.protos.grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server"
            ],
        },
        "applications": [
            {
                "name": "restart",
                "route_prefix": "/",
                "import_path": "serve.app:build_app",
                "args": {
                    "artifacts": str(tmp_path / "a"),
                    "metrics": {"port": free_port(), "directory": str(tmp_path / "metrics")},
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
    # ephemeral ports that free_port() hands out).
    env = {
        **os.environ,
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        # HAProxy's backup server for every route is Ray Serve's proxy actor on these ports
        # (8500 / 9500 by default): shared, a request that finds this instance's routers not
        # (yet) up is answered by the other instance's applications.
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port()),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(free_port()),
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": "22000",
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": "22999",
        "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": "23000",
        "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": "23999",
    }
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
        yield proc, f"http://127.0.0.1:{http}/v2/models/iris/infer", log, folders
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


def test_a_killed_ray_instance_is_started_again_with_the_same_config(
    supervised: tuple[subprocess.Popen[bytes], str, Path, set[Path]],
) -> None:
    proc, url, log, before = supervised
    _wait_log(log, "serving; Ctrl-C to stop", count=1, timeout_s=180)
    first = _answer(url, timeout_s=30)
    tree = descendants(proc.pid)
    core = [p for p in tree if "raylet" in _cmdline(p) or "gcs_server" in _cmdline(p)]
    assert len(core) >= 2, [_cmdline(p)[:80] for p in tree]
    for pid in core:
        os.kill(pid, signal.SIGKILL)
    # The gateway goes down with its Ray instance, then comes back by itself.
    _wait_log(log, "starting a fresh one", count=1, timeout_s=60)
    deadline = time.monotonic() + 15
    while left := [p for p in set(tree) & set(_alive()) if _cmdline(p)]:  # zombies have none
        assert time.monotonic() < deadline, [(p, _cmdline(p)[:100]) for p in left]
        time.sleep(0.5)
    _wait_log(log, "serving; Ctrl-C to stop", count=2, timeout_s=180)
    again = _answer(url, timeout_s=30)
    assert again["outputs"] == first["outputs"] and again["model_version"] == "1"
    text = log.read_text(errors="replace")
    assert "Ray stopped" in text and "starting a fresh one" in text, text[-3000:]
    assert proc.poll() is None  # the supervisor is still running
    assert not set(tree) & set(descendants(proc.pid))  # a new instance, not the old one
    ours = set(Path("/tmp").glob("mg-*")) - before
    assert len(ours) == 1  # the live instance's private HAProxy folder; the dead one's is gone
    (folder,) = ours
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=90) == 0
    assert not folder.exists()  # no socket, config or log of its HAProxy is left


def test_a_second_ctrl_c_stops_at_once_and_leaves_nothing_behind(
    supervised: tuple[subprocess.Popen[bytes], str, Path, set[Path]],
) -> None:
    """Ctrl-C twice: the second one cuts Ray Serve's draining period short (30 s by default,
    the window the second signal lands in); Ray still stops and nothing of it is left."""
    proc, url, log, before = supervised
    _wait_log(log, "serving; Ctrl-C to stop", count=1, timeout_s=180)
    _answer(url, timeout_s=30)
    (folder,) = set(Path("/tmp").glob("mg-*")) - before
    tree = descendants(proc.pid)
    proc.send_signal(signal.SIGINT)
    _wait_log(log, "stopping Ray Serve", count=1, timeout_s=30)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=90) == 0
    assert "stopped at once" in log.read_text(errors="replace")
    assert not folder.exists()
    assert not [p for p in set(tree) & set(_alive()) if _cmdline(p)]
