"""The two ingresses side by side (issue 21): Ray Serve's, and the routers' own lean listeners.

    python -m loadtests.ingress [--duration 8] [--rounds 2] [--out FILE.json]

Each round starts `modelgate serve` once per setting (`--ingress ray`, `--ingress lean`: a
local Ray each, one after the other, in an order that alternates by round) with the same
config: the breast_cancer GradientBoosting version colocated in one router replica, behind
HAProxy. At 32 clients (closed loop, the harness in this process) it reads each serving
process's CPU from /proc (user and system, children included): HAProxy (the balancer), the
router replica, and the rest of Ray's processes apart; then p50 at 1 client, and req/s over
gRPC at 32. Requests are counted by the harness (answered ones), so CPU a request is each
group's CPU over them.

Ratios are lean against ray within a round; the median round is reported.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from loadtests.testserver import free_port

INGRESSES = ("ray", "lean")
MODEL = "breast_cancer"
READY = "serving; Ctrl-C to stop"


def config(artifact: str, http: int, grpc: int) -> dict[str, Any]:
    return {
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
                "name": "modelgate",
                "route_prefix": "/",
                "import_path": "serve.app:build_app",
                "args": {
                    "metrics": {"port": free_port()},
                    "models": [
                        {
                            "name": MODEL,
                            "versions": [{"artifact": artifact, "placement": "colocated"}],
                        }
                    ],
                },
            }
        ],
    }


@contextlib.contextmanager
def serving(ingress: str, artifact: str, folder: Path) -> Iterator[tuple[int, str, str]]:
    """`modelgate serve --ingress INGRESS` of the config; yields its pid, HTTP base URL and
    gRPC address."""
    http, grpc = free_port(), free_port()
    path = folder / f"{ingress}.yaml"
    path.write_text(yaml.safe_dump(config(artifact, http, grpc)))
    log = folder / f"{ingress}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "serve.cli", "serve", str(path),
                "--ingress", ingress, "--no-restart", "--ray-metrics-port", str(free_port()),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while READY not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"modelgate serve did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        base = f"http://127.0.0.1:{http}"
        _wait_answering(f"{base}/v2/models/{MODEL}/ready")
        yield proc.pid, base, f"127.0.0.1:{grpc}"
    finally:
        proc.send_signal(2)  # Ctrl-C: it stops Serve and Ray in order
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_answering(url: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=5) as response:
            if response.status == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} never answered 200")
        time.sleep(0.5)


def group(cmdline: str, name: str) -> str:
    if name == "haproxy" or "haproxy" in cmdline.split(" ", 1)[0]:
        return "balancer"
    if "ServeReplica:" in cmdline and ":Router" in cmdline:
        return "router"
    return "ray"


def cpu_by_group(pid: int) -> dict[str, float]:
    """CPU seconds so far of `pid`'s process tree, by group (balancer, router, ray); the
    `modelgate serve` driver itself is counted with Ray's processes."""
    import psutil

    root = psutil.Process(pid)
    out = dict.fromkeys(("balancer", "router", "ray"), 0.0)
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            times = process.cpu_times()
            key = group(" ".join(process.cmdline()), process.name())
            out[key] += times.user + times.system
    return out


def measure(ingress: str, artifact: str, duration_s: float) -> dict[str, Any]:
    from converters.manifest import read_manifest
    from loadtests.clients import Target
    from loadtests.engine import Step
    from loadtests.payload import from_manifest
    from loadtests.runner import run

    payloads = from_manifest(read_manifest(Path(artifact)), MODEL, "1", 1, 0)
    with (
        tempfile.TemporaryDirectory() as folder,
        serving(ingress, artifact, Path(folder)) as (
            pid,
            base,
            grpc,
        ),
    ):
        target = Target(base, MODEL, "1")
        run(target, payloads, Step("closed", concurrency=8, duration_s=3, warmup_s=1))
        before = cpu_by_group(pid)
        loaded = run(target, payloads, Step("closed", concurrency=32, duration_s=duration_s))
        after = cpu_by_group(pid)
        single = run(target, payloads, Step("closed", concurrency=1, duration_s=duration_s / 2))
        over_grpc = Target(base, MODEL, "1", "grpc", grpc, "modelgate")
        grpc_step = Step("closed", concurrency=32, duration_s=duration_s)
        grpc_loaded = run(over_grpc, payloads, grpc_step)
    failed = loaded.errors or single.errors or grpc_loaded.errors
    if failed:
        raise RuntimeError(f"{ingress}: errors {failed}")
    answered = loaded.summary()["ok"]
    cpu = {k: (after[k] - before[k]) / answered * 1e6 for k in after}
    return {
        "ingress": ingress,
        "rps": loaded.achieved_rps,
        "cpu_us": cpu,
        "serving_us": cpu["balancer"] + cpu["router"],
        "p50_ms_32": loaded.percentile_ms(50),
        "p50_ms_1": single.percentile_ms(50),
        "grpc_rps": grpc_loaded.achieved_rps,
    }


def report(rounds: list[dict[str, dict[str, Any]]]) -> str:
    lines = [
        "| ingress | req/s at 32 | CPU a request: HAProxy | router | serving (both) "
        "| rest of Ray | p50 at 32 | p50 at 1 | gRPC req/s at 32 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for ingress in INGRESSES:
        points = [r[ingress] for r in rounds]

        def median(get: Any, points: list[dict[str, Any]] = points) -> float:
            return statistics.median(get(p) for p in points)

        lines.append(
            f"| {ingress} | {median(lambda p: p['rps']):,.0f} "
            f"| {median(lambda p: p['cpu_us']['balancer']):.0f} µs "
            f"| {median(lambda p: p['cpu_us']['router']):.0f} µs "
            f"| {median(lambda p: p['serving_us']):.0f} µs "
            f"| {median(lambda p: p['cpu_us']['ray']):.0f} µs "
            f"| {median(lambda p: p['p50_ms_32']):.2f} ms "
            f"| {median(lambda p: p['p50_ms_1']):.2f} ms "
            f"| {median(lambda p: p['grpc_rps']):,.0f} |"
        )
    ratios = {
        key: statistics.median(r["lean"][key] / r["ray"][key] for r in rounds)
        for key in ("rps", "serving_us", "p50_ms_1", "grpc_rps")
    }
    lines.append("")
    lines.append(
        f"lean / ray, median of {len(rounds)} rounds' ratios: req/s {ratios['rps']:.2f}x, "
        f"serving CPU a request {ratios['serving_us']:.2f}x, p50 at 1 client "
        f"{ratios['p50_ms_1']:.2f}x, gRPC req/s {ratios['grpc_rps']:.2f}x"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="the rounds, as JSON")
    args = parser.parse_args(argv)
    from loadtests.bench import prepare_artifact

    artifact = prepare_artifact()
    rounds = []
    for index in range(args.rounds):
        order = INGRESSES if index % 2 == 0 else INGRESSES[::-1]
        points = {}
        for ingress in order:
            points[ingress] = measure(ingress, artifact, args.duration)
            p = points[ingress]
            print(
                f"round {index + 1} {ingress}: {p['rps']:.0f} req/s, serving "
                f"{p['serving_us']:.0f} us a request ({p['cpu_us']}), p50 at 1 "
                f"{p['p50_ms_1']:.2f} ms",
                flush=True,
            )
        rounds.append(points)
    text = report(rounds)
    print(text)
    if args.out is not None:
        args.out.write_text(json.dumps({"rounds": rounds, "table": text}, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
