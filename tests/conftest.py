"""Shared fixtures: small real models, folder and MLflow registries, an `mlflow server`."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# Ray Serve reads these when it is imported, in this process and in the workers Ray starts from it.
os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")
os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
# A stopping ingress replica keeps serving this long so HAProxy can take it out of rotation
# first (Ray's default, 30 s, would make every redeploy in the suite wait; 0 drops requests).
os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "3")
os.environ.setdefault("RAY_SERVE_HAPROXY_RETRY_ON", "conn-failure empty-response")

from converters.registry import Registry, open_registry

_HANDED_OUT: set[int] = set()

# The test running now, kept in a file so that when the interpreter dies (a native abort leaves
# no pytest report) `make test` can name the test it died in (CI keeps only the log's tail).
_CURRENT_TEST = Path(os.environ.get("MODELGATE_CURRENT_TEST", ".pytest_cache/current-test"))


def pytest_runtest_logstart(nodeid: str, location: tuple[str, int | None, str]) -> None:
    _CURRENT_TEST.parent.mkdir(parents=True, exist_ok=True)
    _CURRENT_TEST.write_text(f"{nodeid} (started {time.strftime('%H:%M:%S')})\n")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _CURRENT_TEST.unlink(missing_ok=True)


def free_port() -> int:
    """A port free on every interface, from 20000-32767: below the kernel's ephemeral range
    (32768-60999 here), where Ray's processes take ports as they start, and above Ray's worker
    ports (10002-19999). A port from the ephemeral range could be taken between this call and
    its use; CI saw Ray's dashboard agent start on its default, 52365, that a test had been given
    a moment before. Never the same port twice in one session."""
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(20000, 32768)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError("no free port in 20000-32767")


@pytest.fixture
def folder_registry(tmp_path: Path) -> Registry:
    return open_registry(str(tmp_path / "models"))


@pytest.fixture(scope="session")
def demo_registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """An embedded MLflow registry (sqlite file) holding the demo models, built once."""
    from converters.demo import register_demo_models

    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    registry = open_registry(f"sqlite:///{db}")
    register_demo_models(registry, log=lambda _: None)
    return registry


class MlflowServer(str):
    """The URL of a running `mlflow server`, which also knows the folder its artifact proxy
    stores into (to check what the server holds, or tamper with it)."""

    artifacts: Path


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real `mlflow server` on 127.0.0.1 at a free port; stopped at teardown."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{root / 'server.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = MlflowServer(f"http://127.0.0.1:{port}")
    url.artifacts = root / "artifacts"
    try:
        _wait_http(f"{url}/health", proc, root / "server.log")
        yield url
    finally:
        _stop(proc)
        log.close()


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited early:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"mlflow server not up after {timeout}s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
