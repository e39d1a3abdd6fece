"""`make bench`: the gateway against an in-process Ray Serve baseline, measured in the same run.

Scenarios, one after another on the same Ray instance (high-throughput mode):
  baseline   one Ray Serve deployment running the ONNX model in process (no gateway work)
  dedicated  the gateway, the version on its own replicas behind the router
  colocated  the gateway, the version inside the router replicas
  shadowed   colocated, with every request shadowed to another (colocated) version
and, in a separate Ray instance on Serve's defaults (no high-throughput flags):
  plain      router → model through a handle, one call per request
Each is driven by wrk at 1, 8, 32 and 64 connections with one breast_cancer row per request.
Results go to loadtests/RESULTS.md as ratios to the baseline of the same run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CONNECTIONS = (1, 8, 32, 64)
RESULTS = Path(__file__).with_name("RESULTS.md")
BENCH_CONFIG = Path("configs/bench.yaml")
MODEL_URI = "models:/breast_cancer/1"


def _ray_options(config: dict[str, Any]) -> dict[str, Any]:
    return {k: config[k] for k in ("proxy_location", "http_options", "grpc_options")}


def _app(name: str, import_path: str, artifact: str, prefix: str) -> dict[str, Any]:
    return {
        "name": name,
        "route_prefix": prefix,
        "import_path": import_path,
        "args": {"artifact": artifact},
    }


def _body() -> str:
    import numpy as np
    from sklearn.datasets import load_breast_cancer

    row = load_breast_cancer(return_X_y=True)[0][:1].astype(np.float32)
    return json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 30],
                    "datatype": "FP32",
                    "data": row.ravel().tolist(),
                }
            ]
        }
    )


def _sweep(url: str, body: str, duration_s: int) -> list[dict[str, float]]:
    from loadtests import wrk

    wrk.run(url, body, 8, 2)  # warm-up, discarded
    points = []
    for connections in CONNECTIONS:
        point = wrk.run(url, body, connections, duration_s)
        _show("plain", point.as_dict())
        points.append(point.as_dict())
    return points


def _show(name: str, p: dict[str, float]) -> None:
    print(
        f"  {name:<10} {p['connections']:>3.0f} conns: {p['rps']:8.0f} req/s  "
        f"p50 {p['p50_ms']:6.2f} ms  p99 {p['p99_ms']:6.2f} ms  errors {p['errors']:.0f}",
        flush=True,
    )


def _interleaved(
    urls: dict[str, str], body: str, duration_s: int, rounds: int
) -> dict[str, list[dict[str, float]]]:
    """Scenarios alternate at each point, `rounds` times; each point keeps its median round.

    Alternating spreads the machine's drift over all scenarios alike, so ratios hold up better
    than with one scenario's whole sweep after another's.
    """
    from loadtests import wrk

    for url in urls.values():
        wrk.run(url, body, 8, 2)  # warm-up, discarded
    samples: dict[str, dict[int, list[dict[str, float]]]] = {n: {} for n in urls}
    for connections in CONNECTIONS:
        for _ in range(rounds):
            for name, url in urls.items():
                point = wrk.run(url, body, connections, duration_s).as_dict()
                _show(name, point)
                samples[name].setdefault(connections, []).append(point)
    return {name: [_median(samples[name][c]) for c in CONNECTIONS] for name in urls}


def _median(points: list[dict[str, float]]) -> dict[str, float]:
    return sorted(points, key=lambda p: p["rps"])[len(points) // 2]


def _prepare() -> str:
    from converters.demo import register_demo_models
    from converters.pipeline import convert_uri
    from converters.registry import open_registry

    registry = open_registry(os.environ.get("MODELGATE_REGISTRY"))
    register_demo_models(registry, log=lambda _: None)
    return str(convert_uri(registry, MODEL_URI).path.resolve())


def run_high_throughput(duration_s: int, rounds: int) -> dict[str, list[dict[str, float]]]:
    from serve import launcher

    artifact = _prepare()
    config = launcher.load_config(BENCH_CONFIG)
    port = config["http_options"]["port"]
    base = f"http://127.0.0.1:{port}"
    body = _body()
    launcher.preflight(config)
    # One deploy with every app side by side: replacing an app mid-run would leave its ingress
    # replicas draining (30 s by default) while the next scenario is measured.
    config["applications"].append(
        _app("baseline", "loadtests.baseline:baseline_app", artifact, "/baseline")
    )
    launcher.start_ray()
    try:
        launcher.deploy(config)
        urls = {
            "baseline": f"{base}/baseline/v2/models/bc/infer",
            "dedicated": f"{base}/v2/models/bc_dedicated/infer",
            "colocated": f"{base}/v2/models/bc_colocated/infer",
            "shadowed": f"{base}/v2/models/bc_shadowed/infer",
        }
        return _interleaved(urls, body, duration_s, rounds)
    finally:
        launcher.stop_ray()


def run_plain(duration_s: int) -> list[dict[str, float]]:
    """Ray Serve defaults: must run in a process whose environment lacks the HT switches."""
    from serve import launcher

    artifact = _prepare()
    config = launcher.load_config(BENCH_CONFIG)
    import ray

    ray.init(address="local", include_dashboard=False)
    try:
        launcher.deploy(
            {
                **_ray_options(config),
                "applications": [_app("plain", "loadtests.baseline:plain_app", artifact, "/")],
            }
        )
        port = config["http_options"]["port"]
        return _sweep(f"http://127.0.0.1:{port}/v2/models/bc/infer", _body(), duration_s)
    finally:
        launcher.stop_ray()


def _plain_subprocess(duration_s: int) -> list[dict[str, float]]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_THROUGHPUT_OPTIMIZED")
    }
    out = Path(".modelgate/bench-plain.json")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtests.bench",
            "--plain-only",
            str(out),
            "--duration",
            str(duration_s),
        ],
        env=env,
        check=True,
        timeout=900,
    )
    return json.loads(out.read_text())  # type: ignore[no-any-return]


NOTES = """## What the numbers say (from profiling; re-check when they move)

- **colocated** runs ONNX Runtime inside the router replica: the gateway's own work (decode,
  validate, batch, encode; ~80 µs a request in process, orjson for JSON) is small next to Ray
  Serve's per-request machinery, so it tracks the in-process baseline.
- **dedicated** pays one Ray Serve handle call per batch (router → model replica). At one
  connection that call is the whole gap (~1.4 ms over the baseline; DESIGN.md measured 2.3–2.8 ms
  p50 for the same hop). Under load the router coalesces queued requests into one call per
  version (at most `max_in_flight` at once), which is what lifts it from the plain design's
  0.01× to the figure above. py-spy of the router under load: Ray's replica machinery
  (uvicorn, direct-ingress ASGI, request metrics, access logging) dominates; modelgate's code is
  under a tenth of the samples. `max_in_flight: 1` measured ~20% more req/s at 32 connections
  than 2, but keeps only one model replica busy per router; the default stays 2.
- **shadowed** copies every request to a second version. Copies queue and one worker per shadow
  runs all queued copies as one batch, then compares each with its primary's answer; the caller
  only draws a sample and appends. An earlier design with one task per copy cost ~20% req/s.
- Run-to-run spread on this 2-core machine is large (colocated has measured 0.83×–1.07× of the
  baseline at 32 connections across runs); compare ratios within one run.
- **plain** (Ray Serve defaults, one handle call per request, `max_ongoing_requests` 5) collapses
  under concurrency and times out requests, as DESIGN.md warns."""


def write_results(results: dict[str, list[dict[str, float]]], duration_s: int, rounds: int) -> str:
    base = {p["connections"]: p for p in results["baseline"]}
    lines = [
        "# Benchmark results",
        "",
        f"Generated by `make bench` on {dt.date.today().isoformat()}, {os.cpu_count()} cores; "
        f"wrk -t1, {duration_s} s per point; baseline, dedicated and colocated alternate at each "
        f"point for {rounds} rounds and the median round is shown (plain runs after, in its own "
        "Ray instance, one round). One breast_cancer row (30 floats, GradientBoosting ONNX) per "
        "request, JSON over HTTP. Ratios are to the baseline measured in the same run; absolute "
        "figures drift on this shared 2-core machine (±30%), ratios less so.",
        "",
        "| scenario | conns | req/s | p50 ms | p99 ms | errors | req/s vs baseline | "
        "p50 vs baseline |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, points in results.items():
        for p in points:
            b = base[p["connections"]]
            lines.append(
                f"| {name} | {p['connections']:.0f} | {p['rps']:.0f} | {p['p50_ms']:.2f} | "
                f"{p['p99_ms']:.2f} | {p['errors']:.0f} | {p['rps'] / b['rps']:.2f}× | "
                f"{p['p50_ms'] / b['p50_ms']:.2f}× |"
            )
    lines += ["", "## Summary", ""]
    for name in results:
        if name == "baseline":
            continue
        at32 = next(p for p in results[name] if p["connections"] == 32)
        at1 = next(p for p in results[name] if p["connections"] == 1)
        lines.append(
            f"- {name}: {at32['rps'] / base[32]['rps']:.2f}× baseline req/s at 32 "
            f"connections; p50 at 1 connection {at1['p50_ms'] / base[1]['p50_ms']:.2f}× "
            "baseline"
        )
    if "shadowed" in results:
        plain = {p["connections"]: p for p in results["colocated"]}
        shadowed = {p["connections"]: p for p in results["shadowed"]}
        lines.append(
            f"- shadow cost (colocated v1, every request shadowed to v2): "
            f"{shadowed[32]['rps'] / plain[32]['rps']:.2f}× the unshadowed req/s at 32 "
            f"connections; p50 at 1 connection {shadowed[1]['p50_ms'] - plain[1]['p50_ms']:+.2f} ms"
        )
    lines += ["", NOTES]
    text = "\n".join(lines) + "\n"
    RESULTS.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench")
    parser.add_argument("--duration", type=int, default=5, help="seconds per point")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per point")
    parser.add_argument("--plain-only", metavar="OUT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.plain_only:
        Path(args.plain_only).write_text(json.dumps(run_plain(args.duration)))
        return 0
    from serve.launcher import set_high_throughput_env

    set_high_throughput_env()
    started = time.monotonic()
    results = run_high_throughput(args.duration, args.rounds)
    print("plain Ray Serve (defaults, router → model handle call per request)", flush=True)
    results["plain"] = _plain_subprocess(args.duration)
    print(write_results(results, args.duration, args.rounds))
    print(f"bench took {time.monotonic() - started:.0f} s; wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
