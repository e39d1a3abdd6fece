"""The two ingresses side by side (issue 21): Ray Serve's, and the routers' own lean listeners.

    python -m loadtests.ingress [--duration 8] [--rounds 2] [--out FILE.json]

Each round starts `modelgate serve` once per setting (`--ingress ray`, `--ingress lean`: a
local Ray each, one after the other, in an order that alternates by round) with the same
config: the breast_cancer GradientBoosting version colocated in one router replica, behind
HAProxy. At 32 clients (closed loop, the harness in this process) it reads each serving
process's CPU from /proc (user and system, children included): HAProxy (the balancer), the
router replica, and the rest of Ray's processes apart; then p50 at 1 client, req/s over
gRPC at 32, and gRPC beside HTTP (`MIXED`: 100 gRPC and 200 HTTP clients at once, from two
generator processes): whether the router shares itself fairly between the protocols (each
client's req/s, gRPC's over HTTP's). Requests are counted by the harness (answered ones), so
CPU a request is each group's CPU over them.

Ratios are lean against ray within a round; the median round is reported.

`--two-node` (root: network namespaces, loadtests/netns.py) measures the same on two Ray nodes
started with `ray start` after `modelgate ingress-env --ingress INGRESS`: HAProxy on the head,
the router replica (and its colocated version) on the worker, so every request crosses the
bridge from the balancer to the router; CPU summed over both nodes' processes, by group.
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
#: gRPC beside HTTP: clients of each (issue 16 saw gRPC starve so through Ray's ingress).
MIXED = {"grpc": 100, "http": 200}
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


def cpu_by_group(pid: int, whole_netns: bool = False) -> dict[str, float]:
    """CPU seconds so far of `pid`'s process tree (or, `whole_netns`, of every process in its
    network namespace: a node's, loadtests/netns.py), by group (balancer, router, ray); the
    `modelgate serve` driver itself is counted with Ray's processes."""
    import psutil

    if whole_netns:
        netns = os.readlink(f"/proc/{pid}/ns/net")
        processes = []
        for process in psutil.process_iter():
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{process.pid}/ns/net") == netns:
                    processes.append(process)
    else:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    out = dict.fromkeys(("balancer", "router", "ray"), 0.0)
    for process in processes:
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
        # The first seconds of the router's first mixed load run otherwise (HTTP slower, gRPC
        # ahead: loadtests/RESULTS.md, "gRPC kept up with the router's loop"): measured after them.
        beside(target, over_grpc, payloads, 4.0)
        mixed_http, mixed_grpc = beside(target, over_grpc, payloads, duration_s)
    failed = loaded.errors or single.errors or grpc_loaded.errors
    failed = failed or mixed_http.errors or mixed_grpc.errors
    if failed:
        raise RuntimeError(f"{ingress}: errors {failed}")
    return {
        **http_point(ingress, loaded, single, {k: after[k] - before[k] for k in after}),
        "grpc_rps": grpc_loaded.achieved_rps,
        "mixed_grpc_rps": mixed_grpc.achieved_rps,
        "mixed_grpc_p99_ms": mixed_grpc.percentile_ms(99),
        "mixed_http_rps": mixed_http.achieved_rps,
        # a client's share, gRPC's over HTTP's: 1.0 is fair
        "mixed_fairness": (mixed_grpc.achieved_rps / MIXED["grpc"])
        / (mixed_http.achieved_rps / MIXED["http"]),
    }


def beside(http: Any, grpc: Any, payloads: Any, duration_s: float) -> tuple[Any, Any]:
    """`MIXED` clients over HTTP and over gRPC at once, each protocol's generator a process of
    its own (so neither waits on the other's event loop), started together."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from loadtests.engine import Step, StepResult
    from loadtests.runner import generate

    steps = {
        name: Step("closed", concurrency=clients, duration_s=duration_s, warmup_s=1)
        for name, clients in MIXED.items()
    }
    start_at = time.time() + 3.0  # both processes started and connected
    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        futures = {
            name: pool.submit(generate, target, payloads, steps[name], start_at)
            for name, target in (("http", http), ("grpc", grpc))
        }
        parts = {name: future.result() for name, future in futures.items()}
    return (
        StepResult.merge(steps["http"], [parts["http"]]),
        StepResult.merge(steps["grpc"], [parts["grpc"]]),
    )


def measure_two_nodes(ingress: str, duration_s: float) -> dict[str, Any]:
    """`measure`'s HTTP points on two nodes (`--two-node`)."""
    from loadtests import twonode
    from loadtests.clients import Target
    from loadtests.engine import Step
    from loadtests.runner import load_payloads, run

    with twonode.two_nodes(ingress) as (cluster, address, artifact):
        head, worker = cluster.nodes["head"], cluster.nodes["worker"]
        spec = config(artifact, twonode.HTTP_PORT, free_port())
        spec["http_options"]["host"] = "0.0.0.0"  # the bridge: the load comes from outside
        args = spec["applications"][0]["args"]
        args.update(distribute="local", shared_artifacts=True)  # one disk under both nodes
        args["router"] = {"nodes": {"labels": {"role": "worker"}, "fallback": []}}
        placed = twonode.deploy(cluster, address, spec)
        assert placed["Router"] == {worker.address}, placed
        target = Target(f"http://{head.address}:{twonode.HTTP_PORT}", MODEL, "1")
        payloads = load_payloads(target, rows=1)
        run(target, payloads, Step("closed", concurrency=8, duration_s=3, warmup_s=1))
        nodes = (head.pid, worker.pid)
        before = [cpu_by_group(pid, whole_netns=True) for pid in nodes]
        loaded = run(target, payloads, Step("closed", concurrency=32, duration_s=duration_s))
        after = [cpu_by_group(pid, whole_netns=True) for pid in nodes]
        single = run(target, payloads, Step("closed", concurrency=1, duration_s=duration_s / 2))
    if loaded.errors or single.errors:
        raise RuntimeError(f"{ingress}: errors {loaded.errors or single.errors}")
    spent = {k: sum(a[k] - b[k] for a, b in zip(after, before, strict=True)) for k in after[0]}
    return http_point(ingress, loaded, single, spent)


def http_point(ingress: str, loaded: Any, single: Any, spent: dict[str, float]) -> dict[str, Any]:
    """A setting's HTTP figures: req/s and p50 at 32 clients (`loaded`), p50 at 1 (`single`),
    and CPU a request by group, from the CPU seconds each `spent` during `loaded`."""
    cpu = {k: seconds / loaded.summary()["ok"] * 1e6 for k, seconds in spent.items()}
    return {
        "ingress": ingress,
        "rps": loaded.achieved_rps,
        "cpu_us": cpu,
        "serving_us": cpu["balancer"] + cpu["router"],
        "p50_ms_32": loaded.percentile_ms(50),
        "p50_ms_1": single.percentile_ms(50),
    }


#: The table's columns: heading, and how a point shows in it (points without it leave it out).
COLUMNS: list[tuple[str, str, Any]] = [
    ("req/s at 32", "rps", lambda p: f"{p['rps']:,.0f}"),
    ("CPU a request: HAProxy", "cpu_us", lambda p: f"{p['cpu_us']['balancer']:.0f} µs"),
    ("router", "cpu_us", lambda p: f"{p['cpu_us']['router']:.0f} µs"),
    ("serving (both)", "serving_us", lambda p: f"{p['serving_us']:.0f} µs"),
    ("rest of Ray", "cpu_us", lambda p: f"{p['cpu_us']['ray']:.0f} µs"),
    ("p50 at 32", "p50_ms_32", lambda p: f"{p['p50_ms_32']:.2f} ms"),
    ("p50 at 1", "p50_ms_1", lambda p: f"{p['p50_ms_1']:.2f} ms"),
    ("gRPC req/s at 32", "grpc_rps", lambda p: f"{p['grpc_rps']:,.0f}"),
    (
        f"{MIXED['grpc']} gRPC beside {MIXED['http']} HTTP clients: gRPC req/s, p99",
        "mixed_grpc_rps",
        lambda p: f"{p['mixed_grpc_rps']:,.0f}, {p['mixed_grpc_p99_ms']:,.0f} ms",
    ),
    ("HTTP req/s", "mixed_http_rps", lambda p: f"{p['mixed_http_rps']:,.0f}"),
    ("fairness", "mixed_fairness", lambda p: f"{p['mixed_fairness']:.2f}"),
]


def report(rounds: list[dict[str, dict[str, Any]]]) -> str:
    """Each setting's median round (by req/s at 32 clients), and the ratios' medians."""
    columns = [c for c in COLUMNS if all(c[1] in r[i] for r in rounds for i in INGRESSES)]
    lines = [
        "| ingress | " + " | ".join(heading for heading, _, _ in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for ingress in INGRESSES:
        points = sorted((r[ingress] for r in rounds), key=lambda p: p["rps"])
        median = points[(len(points) - 1) // 2]
        lines.append(f"| {ingress} | " + " | ".join(show(median) for _, _, show in columns) + " |")
    keys = [k for k in ("rps", "serving_us", "p50_ms_1", "grpc_rps") if k in rounds[0]["lean"]]
    ratios = {k: statistics.median(r["lean"][k] / r["ray"][k] for r in rounds) for k in keys}
    names = {
        "rps": "req/s",
        "serving_us": "serving CPU a request",
        "p50_ms_1": "p50 at 1 client",
        "grpc_rps": "gRPC req/s",
    }
    shown = ", ".join(f"{names[k]} {v:.2f}x" for k, v in ratios.items())
    lines.append("")
    lines.append(f"lean / ray, median of {len(rounds)} rounds' ratios: {shown}.")
    if "mixed_fairness" in rounds[0]["lean"]:
        lines.append(
            "Fairness: a gRPC client's req/s over an HTTP client's, with "
            f"{MIXED['grpc']} and {MIXED['http']} at once (1.0: an equal share)."
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="the rounds, as JSON")
    parser.add_argument(
        "--two-node", action="store_true", help="on two Ray nodes (root: network namespaces)"
    )
    args = parser.parse_args(argv)
    from loadtests.bench import prepare_artifact

    artifact = prepare_artifact()
    rounds = []
    for index in range(args.rounds):
        order = INGRESSES if index % 2 == 0 else INGRESSES[::-1]
        points = {}
        for ingress in order:
            if args.two_node:
                points[ingress] = measure_two_nodes(ingress, args.duration)
            else:
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
