"""Picking the lean data path's HTTP server by measurement (issue 21).

The lean path serves the gateway's requests from router replicas on listeners of their own,
outside Ray Serve's per-request wrapper. Which server: this runs modelgate's own request path
(the Router's `__call__`: admission, `rest.handle` with the gateway's limits, a colocated ONNX
version with its batcher and metrics, in prometheus-client's multiprocess mode as in a replica)
outside Ray, under each candidate, each in a process of its own, and measures what a request
costs that process (and its children): CPU from /proc, beside req/s and latency, with the
harness's closed loop in another process.

    python -m loadtests.lean [--duration 10] [--rounds 2] [--servers uvicorn,granian,raw]

- `uvicorn`: uvicorn with httptools and uvloop, no access log, on one event loop: the server a
  router replica can run on its own loop (`uvicorn.Server.serve` as a task).
- `uvicorn-h11`: the same with h11, uvicorn's pure-Python parser.
- `granian`: granian's Rust HTTP server, ASGI interface, one worker (installed for the
  measurement only: `pip install granian`; skipped when absent).
- `raw`: the baseline's handler (JSON in, ONNX Runtime, JSON out; loadtests/baseline.py) under
  uvicorn: what a request costs with none of the gateway's work, the floor.

Ratios are against `raw` in the same round; the report is printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from loadtests.testserver import free_port, stop

SERVERS = ("uvicorn", "uvicorn-h11", "granian", "raw")
MODEL = "bc"


def modelgate_app(artifact: str) -> Callable[..., Any]:
    """The Router's HTTP path (serve/ray/app.py: Router.__call__) around one colocated version
    of `artifact`, as an ASGI application."""
    from starlette.requests import Request

    from converters.artifacts import sha256_file
    from converters.manifest import MANIFEST_FILE, read_manifest
    from serve.core.admission import Admission
    from serve.core.artifact_cache import ArtifactRef
    from serve.core.config import Batching, DriftConfig, Limits, MetricsConfig
    from serve.core.dataplane import DataPlane
    from serve.observe.telemetry import ReplicaTelemetry
    from serve.protocol import rest
    from serve.ray.app import VersionSpec, _target

    folder = Path(artifact)
    ref = ArtifactRef(
        key=f"{MODEL}/{folder.name}",
        sha256=read_manifest(folder).sha256,
        manifest_sha256=sha256_file(folder / MANIFEST_FILE),
        path=str(folder),
    )
    spec = VersionSpec(
        model=MODEL,
        version="1",
        artifact=ref,
        placement="colocated",
        batching=Batching(),
        intra_op_threads=1,
        deployment=None,
        timeout_ms=None,
    )
    telemetry = ReplicaTelemetry(MetricsConfig(port=None), DriftConfig())
    plane = DataPlane.build([_target(spec, {}, telemetry)], {}, telemetry.metrics)
    admission, limits = Admission(4096), Limits()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        request = Request(scope, receive)
        if not admission.enter():
            response = rest.error_response(admission.refusal())
        else:
            try:
                response = await rest.handle(plane, request, limits)
            finally:
                admission.leave()
        await response(scope, receive, send)

    return app


def raw_app(artifact: str) -> Callable[..., Any]:
    """The baseline's handler (loadtests/baseline.py: InProcess) as an ASGI application."""
    from starlette.requests import Request

    from loadtests.baseline import InProcess

    handler = InProcess.func_or_class(artifact)  # type: ignore[attr-defined]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        response = await handler(Request(scope, receive))
        await response(scope, receive, send)

    return app


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def granian_app() -> Callable[..., Any]:
    """granian's factory: the application of the artifact its environment names."""
    artifact = os.environ["MODELGATE_LEAN_ARTIFACT"]
    kind = os.environ["MODELGATE_LEAN_APP"]
    return raw_app(artifact) if kind == "raw" else modelgate_app(artifact)


def _serve(server: str, artifact: str, port: int) -> None:
    """One server in this process (the parent measures it)."""
    import uvicorn

    app = raw_app(artifact) if server == "raw" else modelgate_app(artifact)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="h11" if server == "uvicorn-h11" else "httptools",
        access_log=False,
        log_level="warning",
        lifespan="on",
    )


def _command(server: str, artifact: str, port: int) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, "MODELGATE_LEAN_ARTIFACT": artifact, "MODELGATE_LEAN_APP": server}
    if server == "granian":
        granian = Path(sys.executable).with_name("granian")
        command = [
            str(granian),
            "--interface",
            "asgi",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--loop",
            "uvloop",
            "--http",
            "1",
            "--no-access-log",
            "--log-level",
            "warning",
            "--factory",
            "loadtests.lean:granian_app",
        ]
        return command, env
    return [sys.executable, "-m", "loadtests.lean", "serve", server, artifact, str(port)], env


def available(server: str) -> bool:
    return server != "granian" or Path(sys.executable).with_name("granian").exists()


@contextlib.contextmanager
def running(server: str, artifact: str, metrics_dir: str) -> Iterator[tuple[int, str]]:
    """`server` started and ready: (its process id, its URL); stopped after."""
    port = free_port()
    command, env = _command(server, artifact, port)
    env["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:  # listening (the raw handler answers nothing but an inference)
                with socket.create_connection(("127.0.0.1", port), timeout=2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{server} did not start") from None
                time.sleep(0.2)
        yield process.pid, url
    finally:
        stop(process)


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user and system) of `pid` and its children, from /proc."""
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def measure(server: str, artifact: str, duration_s: float) -> dict[str, Any]:
    from converters.manifest import read_manifest
    from loadtests.clients import Target
    from loadtests.engine import Step
    from loadtests.payload import from_manifest
    from loadtests.runner import run

    payloads = from_manifest(read_manifest(Path(artifact)), MODEL, "1", 1, 0)
    with (
        tempfile.TemporaryDirectory() as metrics_dir,
        running(server, artifact, metrics_dir) as (
            pid,
            url,
        ),
    ):
        target = Target(url, MODEL, "1")
        run(target, payloads, Step("closed", concurrency=8, duration_s=2, warmup_s=1))
        before = process_cpu_s(pid)
        loaded = run(target, payloads, Step("closed", concurrency=32, duration_s=duration_s))
        spent = process_cpu_s(pid) - before
        single = run(target, payloads, Step("closed", concurrency=1, duration_s=duration_s / 2))
    assert loaded.errors == {} and single.errors == {}, (loaded.errors, single.errors)
    answered = loaded.summary()["ok"]
    return {
        "server": server,
        "rps": loaded.achieved_rps,
        "cpu_us": spent / answered * 1e6 if answered else None,
        "p50_ms_32": loaded.percentile_ms(50),
        "p50_ms_1": single.percentile_ms(50),
    }


def report(rounds: list[list[dict[str, Any]]]) -> str:
    """Medians over rounds, each ratio taken within its round against `raw`."""
    servers = [p["server"] for p in rounds[0]]
    lines = [
        "| server | req/s at 32 | CPU a request (its processes) | vs raw | p50 at 32 | p50 at 1 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in servers:
        points = [p for r in rounds for p in r if p["server"] == name]
        ratios = []
        for r in rounds:
            mine = next(p for p in r if p["server"] == name)
            raw = next((p for p in r if p["server"] == "raw"), None)
            if raw is not None and mine["cpu_us"] and raw["cpu_us"]:
                ratios.append(mine["cpu_us"] / raw["cpu_us"])

        def median(key: str, points: list[dict[str, Any]] = points) -> float:
            return statistics.median(p[key] for p in points)

        ratio = f"{statistics.median(ratios):.2f}×" if ratios else "–"
        lines.append(
            f"| {name} | {median('rps'):.0f} | {median('cpu_us'):.0f} µs | {ratio} | "
            f"{median('p50_ms_32'):.2f} ms | {median('p50_ms_1'):.2f} ms |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["serve"]:
        _serve(args[1], args[2], int(args[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--servers", default=",".join(SERVERS))
    options = parser.parse_args(args)
    from loadtests.bench import prepare_artifact

    artifact = prepare_artifact()
    servers = [s for s in options.servers.split(",") if available(s)]
    rounds = []
    for i in range(options.rounds):
        order = servers if i % 2 == 0 else list(reversed(servers))
        points = [measure(s, artifact, options.duration) for s in order]
        for p in points:
            print(f"round {i + 1}: {p}", flush=True)
        rounds.append(points)
    print(report(rounds))


if __name__ == "__main__":
    main()
