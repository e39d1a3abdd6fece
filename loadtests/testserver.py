"""A small Open Inference Protocol server with a known behaviour, to measure the harness itself.

    python -m loadtests.testserver --port 8123 [--service-ms 10 --concurrency 1]
                                              [--stall-after-s 3 --stall-ms 200]

It answers model metadata, ready and infer for any model name (one FP32 [-1, 4] input).
`--concurrency C --service-ms S` caps capacity at C * 1000 / S requests per second (a semaphore
around a sleep); `--stall-after-s T --stall-ms D` freezes the whole server once, T seconds after
its first request, for D milliseconds. Bound to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

from aiohttp import web

ANSWER = (
    b'{"model_name":"m","model_version":"1","outputs":'
    b'[{"name":"y","shape":[1],"datatype":"FP32","data":[0.5]}]}'
)
METADATA = {
    "name": "m",
    "versions": ["1"],
    "platform": "onnx_onnxv1",
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]}],
}


def build(service_ms: float, concurrency: int, stall_after_s: float | None, stall_ms: float):
    slots = asyncio.Semaphore(concurrency)
    state: dict[str, float | None] = {"first": None, "stalled": None}

    async def infer(request: web.Request) -> web.Response:
        await request.read()
        now = time.monotonic()
        first = state["first"] = state["first"] or now
        if stall_after_s is not None and state["stalled"] is None and now - first > stall_after_s:
            state["stalled"] = now
            time.sleep(stall_ms / 1000)  # blocks the event loop: every request waits
        if service_ms > 0:
            async with slots:
                await asyncio.sleep(service_ms / 1000)
        return web.Response(body=ANSWER, content_type="application/json")

    async def metadata(request: web.Request) -> web.Response:
        return web.json_response({**METADATA, "name": request.match_info["model"]})

    async def ready(request: web.Request) -> web.Response:
        return web.json_response({"ready": True})

    app = web.Application()
    app.router.add_post("/v2/models/{model}/infer", infer)
    app.router.add_post("/v2/models/{model}/versions/{version}/infer", infer)
    app.router.add_get("/v2/models/{model}", metadata)
    app.router.add_get("/v2/models/{model}/versions/{version}", metadata)
    app.router.add_get("/v2/models/{model}/ready", ready)
    app.router.add_get("/v2/models/{model}/versions/{version}/ready", ready)
    return app


def free_port() -> int:
    """A loopback port free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a server process: asked first, killed after 10 s."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def local_server(*options: str) -> Iterator[str]:
    """Run the server in a subprocess on a free loopback port; yields its URL; always stops it."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "loadtests.testserver", "--port", str(port), *options]
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"{url}/v2/models/m/ready", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the test server did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--service-ms", type=float, default=0.0)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--stall-after-s", type=float, default=None)
    parser.add_argument("--stall-ms", type=float, default=200.0)
    args = parser.parse_args()
    app = build(args.service_ms, args.concurrency, args.stall_after_s, args.stall_ms)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
