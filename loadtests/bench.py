"""`make bench`: the gateway against an in-process Ray Serve baseline, measured in the same run,
driven by modelgate's own load-test harness (closed loop, HDR histograms).

Scenarios on one Ray instance in high-throughput mode, every app deployed side by side:
  baseline        one Ray Serve deployment running the ONNX model in process (no gateway work)
  floor           the baseline's handler served by a copy of the gateway's Router (its every
                  model, thread and handle): what the router's process costs, apart from the
                  gateway's request work (loadtests/floor.py)
  dedicated       the gateway, the version on its own replicas behind the router (direct transport)
  dedicated-2     dedicated, two replicas
  autoscaled      dedicated, autoscaled from 1 to 2 replicas on its routers' demand (it reaches 2
                  at the first loaded point and stays: a long downscale delay): against dedicated-2
  handle          dedicated, reached through Ray Serve's handle call instead
  colocated       the gateway, the version inside the router replicas
  unbatched       colocated, one request per run (max_batch_rows 1): batching off
  shadowed        colocated, every request shadowed to another (colocated) version
  binary, grpc    colocated, over Triton's binary tensor extension / over gRPC
  baseline-grpc   the baseline over Ray Serve's own gRPC ingress (ModelInfer, raw contents):
                  what gRPC compares with
  floor-grpc      the floor over gRPC (the baseline's ModelInfer in a copy of the Router)
  baseline-100, colocated-100, dedicated-100    100 rows per request
and, in a separate Ray instance on Serve's defaults (no high-throughput flags):
  plain           router → model through a handle, one call per request
and, in a `modelgate serve` of each setting (loadtests/ingress.py), 1 and 32 clients:
  ray, lean       Ray Serve's ingress against the routers' own listeners (MODELGATE_INGRESS)
and, on two Ray nodes in network namespaces (loadtests/twonode.py; root only), 1 and 32 clients:
  one-node        the router and a dedicated version's replica on the head node
  two-node        the same, the replica on the worker node: every batch crosses the bridge
One breast_cancer row (30 floats) per request unless named -100; 1, 8, 32 and 64 clients;
scenarios alternate at each point for several rounds, in an order shuffled per round, and the
median round is kept.
Results go to loadtests/RESULTS.md as ratios to the baseline of the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CLIENTS = (1, 8, 32, 64)
#: The points the issue sets targets on: measured for more rounds (`--target-rounds`), since
#: rounds of one scenario differ by up to 40% on this shared machine.
TARGET_SCENARIOS = ("baseline", "floor", "dedicated", "colocated")
TARGET_CLIENTS = (1, 32)
RESULTS = Path(__file__).with_name("RESULTS.md")
BENCH_CONFIG = Path("configs/bench.yaml")
MODEL_URI = "models:/breast_cancer/1"
FLOOR_APP = "loadtests.floor:floor_app"
#: The gateway's application in configs/bench.yaml (the floor copies it; gRPC calls name it).
GATEWAY_APP = "modelgate"
#: scenario -> (path prefix, model, protocol, rows per request, compared with)
SCENARIOS: dict[str, tuple[str, str, str, int, str]] = {
    "baseline": ("/baseline", "bc", "http", 1, "baseline"),
    "floor": ("/floor", "bc_colocated", "http", 1, "baseline"),
    "dedicated": ("", "bc_dedicated", "http", 1, "baseline"),
    "handle": ("", "bc_handle", "http", 1, "baseline"),
    "dedicated-2": ("", "bc_dedicated2", "http", 1, "baseline"),
    "autoscaled": ("", "bc_autoscaled", "http", 1, "dedicated-2"),
    "colocated": ("", "bc_colocated", "http", 1, "baseline"),
    "unbatched": ("", "bc_unbatched", "http", 1, "colocated"),
    "shadowed": ("", "bc_shadowed", "http", 1, "colocated"),
    "binary": ("", "bc_colocated", "binary", 1, "colocated"),
    "grpc": ("", "bc_colocated", "grpc", 1, "baseline-grpc"),
    "baseline-grpc": ("/baseline", "bc", "grpc", 1, "baseline-grpc"),
    "floor-grpc": ("/floor", "bc_colocated", "grpc", 1, "baseline-grpc"),
    "baseline-100": ("/baseline", "bc", "http", 100, "baseline-100"),
    "colocated-100": ("", "bc_colocated", "http", 100, "baseline-100"),
    "dedicated-100": ("", "bc_dedicated", "http", 100, "baseline-100"),
}


#: scenario -> what its ratios compare with (the two-node scenario's: loadtests/twonode.py)
COMPARED = {name: spec[4] for name, spec in SCENARIOS.items()} | {
    "one-node": "one-node",
    "two-node": "one-node",
}


def _ray_options(config: dict[str, Any]) -> dict[str, Any]:
    return {k: config[k] for k in ("proxy_location", "http_options", "grpc_options")}


def _app(name: str, import_path: str, artifact: str, prefix: str) -> dict[str, Any]:
    return {
        "name": name,
        "route_prefix": prefix,
        "import_path": import_path,
        "args": {"artifact": artifact},
    }


def measure_point(target: Any, payloads: Any, clients: int, duration_s: float) -> dict[str, Any]:
    from loadtests.engine import Step
    from loadtests.runner import run

    step = Step("closed", concurrency=clients, duration_s=duration_s, warmup_s=1.0)
    busy = machine_busy_s()
    s = run(target, payloads, step).summary()
    spent = machine_busy_s() - busy
    return {
        "clients": clients,
        "rps": s["achieved_rps"],
        "p50_ms": s["latency_ms"]["p50"],
        "p99_ms": s["latency_ms"]["p99"],
        "errors": sum(s["errors"].values()),
        # warm-up included on both sides: `sent` counts its requests too
        "cpu_us": spent / s["sent"] * 1e6 if s["sent"] else None,
    }


def machine_busy_s() -> float:
    """CPU seconds the machine's cores have been busy since boot, every process's (Linux's
    /proc/stat: user, nice, system, irq and softirq time; idle, I/O wait and steal left out)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def show_point(name: str, p: dict[str, Any]) -> None:
    print(
        f"  {name:<14} {p['clients']:>3} clients: {p['rps']:8.0f} req/s  "
        f"p50 {p['p50_ms']:7.2f} ms  p99 {p['p99_ms']:7.2f} ms  errors {p['errors']}  "
        f"CPU {_show_us(p.get('cpu_us'))} a request",
        flush=True,
    )


def _targets(base: str, grpc: str, scenarios: list[str]) -> dict[str, tuple[Any, Any]]:
    """Each scenario's target and payloads (drawn from the version's reference statistics)."""
    from loadtests.clients import Target
    from loadtests.runner import load_payloads

    out = {}
    for name in scenarios:
        prefix, model, protocol, rows, _ = SCENARIOS[name]
        # the baseline app speaks only infer: its payloads come from the gateway's manifest
        source = Target(base, "bc_colocated" if prefix else model)
        payloads = load_payloads(source, rows=rows)
        app = prefix.strip("/") or GATEWAY_APP  # each app's gRPC calls name it
        target = Target(base + prefix, model, None, protocol, grpc, grpc_application=app)
        out[name] = (target, payloads)
    return out


def _interleaved(
    targets: dict[str, tuple[Any, Any]], duration_s: float, rounds: int, target_rounds: int
) -> dict[str, list[dict[str, Any]]]:
    """Scenarios alternate at each point, `rounds` times, in an order shuffled per round
    (`round_order`); each point keeps its median round.
    At the target points, the target scenarios go on alternating among themselves up to
    `target_rounds` rounds.

    Alternating spreads the machine's drift over all scenarios alike, so ratios hold up better
    than with one scenario's whole sweep after another's.
    """
    for target, payloads in targets.values():
        measure_point(target, payloads, 8, 1.0)  # warm-up, discarded
    samples: dict[str, dict[int, list[dict[str, Any]]]] = {n: {} for n in targets}
    for clients in CLIENTS:
        extra = max(0, target_rounds - rounds) if clients in TARGET_CLIENTS else 0
        for i in range(rounds + extra):
            names = [n for n in targets if i < rounds or n in TARGET_SCENARIOS]
            for name in round_order(names, clients, i):
                target, payloads = targets[name]
                point = measure_point(target, payloads, clients, duration_s)
                show_point(name, point)
                samples[name].setdefault(clients, []).append(point)
    return {name: [median_point(samples[name][c]) for c in CLIENTS] for name in targets}


def round_order(names: list[str], clients: int, round_index: int) -> list[str]:
    """The scenarios in the order one round measures them: shuffled, differently each round and
    the same in every run (seeded by the point and round). A fixed order let whatever the
    machine does on a period of its own (Ray's agents report every few seconds) land on the same
    scenario round after round, and made each scenario follow the same neighbour."""
    order = list(names)
    random.Random(clients * 1000 + round_index).shuffle(order)
    return order


def median_point(points: list[dict[str, Any]]) -> dict[str, Any]:
    """The median round's point, carrying every round's req/s, p50 and CPU a request (in
    round order) for the paired ratios."""
    point = dict(sorted(points, key=lambda p: p["rps"])[len(points) // 2])
    for key in ("rps", "p50_ms", "cpu_us"):
        point[f"rounds_{key}"] = [p.get(key) for p in points]
    return point


def paired_ratio(point: dict[str, Any], reference: dict[str, Any], key: str) -> float | None:
    """The median, over rounds, of the ratio of `key` between two scenarios measured in the
    same round: steadier on a shared machine than a ratio of medians, since a slow spell hits
    both sides of a pair. Rounds pair in order, as many as both have (a target point has more).
    Falls back to the points' own values (one round)."""
    mine, theirs = point.get(f"rounds_{key}"), reference.get(f"rounds_{key}")
    if mine and theirs:
        n = min(len(mine), len(theirs))
        ratios = sorted(
            a / b for a, b in zip(mine[:n], theirs[:n], strict=True) if a is not None and b
        )
        return statistics.median(ratios) if ratios else None
    mine_value, their_value = point.get(key), reference.get(key)
    return mine_value / their_value if mine_value is not None and their_value else None


def prepare_artifact() -> str:
    from converters.demo import register_demo_models
    from converters.pipeline import convert_uri
    from converters.registry import open_registry

    registry = open_registry()
    register_demo_models(registry, log=lambda _: None)
    return str(convert_uri(registry, MODEL_URI).path.resolve())


def chosen(names: list[str]) -> list[str]:
    """The scenarios to measure: those named and what each compares with, in table order."""
    unknown = sorted(set(names) - set(SCENARIOS))
    if unknown:
        raise SystemExit(f"unknown scenarios: {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    wanted = set(names)
    while True:  # what each compares with, and what that compares with
        more = wanted | {SCENARIOS[n][4] for n in wanted}
        if more == wanted:
            return [n for n in SCENARIOS if n in wanted]
        wanted = more


def run_high_throughput(
    duration_s: float, rounds: int, target_rounds: int, scenarios: list[str] | None = None
) -> dict[str, list[dict[str, Any]]]:
    from serve.ray import launcher

    artifact = prepare_artifact()
    config = launcher.load_config(BENCH_CONFIG)
    base = f"http://127.0.0.1:{config['http_options']['port']}"
    grpc = f"127.0.0.1:{config['grpc_options']['port']}"
    launcher.preflight(config)
    # One deploy with every app side by side: replacing an app mid-run would leave its ingress
    # replicas draining while the next scenario is measured.
    gateway = next(app for app in config["applications"] if app["name"] == GATEWAY_APP)
    config["applications"] += [
        _app("baseline", "loadtests.baseline:baseline_app", artifact, "/baseline"),
        {**gateway, "name": "floor", "route_prefix": "/floor", "import_path": FLOOR_APP},
    ]
    launcher.start_ray()
    try:
        launcher.deploy(config)
        targets = _targets(base, grpc, scenarios or list(SCENARIOS))
        return _interleaved(targets, duration_s, rounds, target_rounds)
    finally:
        launcher.stop_ray()


def run_plain(duration_s: float) -> list[dict[str, Any]]:
    """Ray Serve defaults: must run in a process whose environment lacks the HT switches."""
    from converters.manifest import read_manifest
    from loadtests.clients import Target
    from loadtests.payload import from_manifest
    from serve.ray import launcher

    artifact = prepare_artifact()
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
        base = f"http://127.0.0.1:{config['http_options']['port']}"
        payloads = from_manifest(read_manifest(Path(artifact)), "bc", None, 1)
        target = Target(base, "bc")
        measure_point(target, payloads, 8, 1.0)  # warm-up, discarded
        points = []
        for clients in CLIENTS:
            points.append(measure_point(target, payloads, clients, duration_s))
            show_point("plain", points[-1])
        return points
    finally:
        launcher.stop_ray()


def _module_json(module: str, out: Path, *args: str, timeout: float) -> Any:
    """`python -m MODULE ARGS --out OUT` in a process of its own; the JSON it wrote."""
    subprocess.run(
        [sys.executable, "-m", module, *args, "--out", str(out)], check=True, timeout=timeout
    )
    return json.loads(out.read_text())


def _plain_subprocess(duration_s: float) -> list[dict[str, Any]]:
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


def _two_node_subprocess(duration_s: float, rounds: int) -> dict[str, list[dict[str, Any]]]:
    """loadtests/twonode.py's two scenarios, in a process of its own (it starts its own Ray
    nodes, in network namespaces: root only)."""
    if os.geteuid() != 0:
        print("two-node scenario left out: network namespaces need root", flush=True)
        return {}
    print("two nodes (router on the head; replica beside it, or on the worker)", flush=True)
    out = Path(".modelgate/bench-twonode.json")
    args = ("--duration", str(duration_s), "--rounds", str(rounds))
    points = _module_json("loadtests.twonode", out, *args, timeout=1200)
    return {"one-node": points["near"], "two-node": points["far"]}


def _catalog_subprocess(duration_s: float) -> list[str]:
    """loadtests/catalog.py's figures, in a process (and a Ray) of its own."""
    from loadtests import catalog

    out = Path(".modelgate/bench-catalog.json")
    args = ("--duration", str(duration_s))
    return catalog.lines(_module_json("loadtests.catalog", out, *args, timeout=900))


def _ingress_subprocess(duration_s: float, rounds: int) -> list[str]:
    """loadtests/ingress.py: Ray Serve's ingress against the routers' lean listeners, a
    `modelgate serve` of each per round, one after the other; then (root only) the same on two
    nodes, the router on the worker."""
    lines = []
    for two_node in (False, True):
        if two_node and os.geteuid() != 0:
            print("two-node ingresses left out: network namespaces need root", flush=True)
            break
        out = Path(f".modelgate/bench-ingress{'-twonode' if two_node else ''}.json")
        args = ("--duration", str(duration_s), "--rounds", str(rounds))
        measured = _module_json(
            "loadtests.ingress", out, *args, *(["--two-node"] if two_node else []), timeout=1800
        )
        if two_node:
            lines += ["", "Two nodes (HAProxy on the head, the router replica on the worker):", ""]
        lines += str(measured["table"]).splitlines()
    return lines


#: The prose under the numbers in RESULTS.md: what they say, from profiling.
NOTES = Path(__file__).with_name("NOTES.md")


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    """The results as a markdown table, each point with its ratios to what it compares with."""
    by = {name: {p["clients"]: p for p in points} for name, points in results.items()}
    lines = [
        "| scenario | clients | req/s | p50 ms | p99 ms | errors | CPU µs/req | compared with "
        "| req/s ratio | p50 ratio | CPU ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for name, points in results.items():
        reference = COMPARED.get(name, "baseline")
        for p in points:
            ref = by[reference][p["clients"]]
            lines.append(
                f"| {name} | {p['clients']} | {p['rps']:.0f} | {p['p50_ms']:.2f} | "
                f"{p['p99_ms']:.2f} | {p['errors']} | {_show_us(p.get('cpu_us'))} | "
                f"{reference} | {_show_ratio(paired_ratio(p, ref, 'rps'))} | "
                f"{_show_ratio(paired_ratio(p, ref, 'p50_ms'))} | "
                f"{_show_ratio(paired_ratio(p, ref, 'cpu_us'))} |"
            )
    return "\n".join(lines)


def write_results(
    results: dict[str, list[dict[str, Any]]],
    duration_s: float,
    rounds: int,
    ceiling: float,
    target_rounds: int = 0,
    catalog: list[str] | None = None,
    ingress: list[str] | None = None,
) -> str:
    by = {name: {p["clients"]: p for p in points} for name, points in results.items()}
    lines = [
        "# Benchmark results",
        "",
        f"Generated by `make bench` on {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, "
        f"with modelgate's load-test harness (closed loop, one generator process sharing the "
        f"cores with the gateway: it drives about {ceiling:.0f} req/s against a trivial server "
        f"here, `modelgate loadtest --selftest`), {duration_s:g} s per point after 1 s of "
        f"warm-up; the scenarios alternate at each point, in an order shuffled per round, for "
        f"{rounds} rounds (baseline, floor, dedicated and colocated at 1 and 32 clients, the "
        f"targets' points: {max(rounds, target_rounds)}) and the median round is shown; each "
        "ratio is the median of the rounds' ratios, the two scenarios of a pair measured in "
        "the same round (plain runs after, in its own Ray instance, one round; one-node and "
        "two-node last, on two Ray nodes in network namespaces, alternating between themselves: "
        "loadtests/twonode.py). breast_cancer v1 "
        "(GradientBoosting ONNX, 30 floats a row), rows drawn from its reference statistics, "
        "JSON over HTTP unless the scenario says otherwise. Each ratio compares with the "
        "scenario named in its column, measured in the same run; absolute figures drift on this "
        "shared machine (±30%), ratios less so. CPU is what the whole machine spent a request "
        "(every process: gateway, Ray, HAProxy, the load generator; /proc/stat), steadier "
        "than req/s from round to round: on two cores a closed loop's req/s also moves with "
        "how the processes happen to be scheduled.",
        "",
        table(results),
    ]
    lines += ["", "## Summary", "", *summary(by)]
    if catalog:
        lines += ["", "## Many models, this run", "", *catalog]
    if ingress:
        lines += [
            "",
            "## The two ingresses, this run (loadtests/ingress.py)",
            "",
            "One colocated breast_cancer version in one router replica behind HAProxy, served "
            "by `modelgate serve --ingress ray` and `--ingress lean` in turn (a local Ray each, "
            "the order alternating by round), 32 clients of the harness (closed loop, in its "
            "own process, not counted), then 1; CPU a request per group of processes from "
            "/proc: HAProxy, the router replica, the rest of Ray (controller, proxy actor, "
            "raylet, GCS, the driver). Medians of the rounds.",
            "",
            *ingress,
        ]
    lines += ["", NOTES.read_text().rstrip()]
    text = "\n".join(lines) + "\n"
    RESULTS.write_text(text)
    return text


def summary(by: dict[str, dict[int, dict[str, Any]]]) -> list[str]:
    def rps(name: str, clients: int) -> float:
        return float(by[name][clients]["rps"])

    def p50(name: str, clients: int) -> float:
        return float(by[name][clients]["p50_ms"])

    def vs(name: str, reference: str, clients: int = 32, key: str = "rps") -> str:
        return _show_ratio(paired_ratio(by[name][clients], by[reference][clients], key))

    lines = []
    for name in ("dedicated", "colocated", "plain"):
        if name in by:
            lines.append(
                f"- {name}: {vs(name, 'baseline')} baseline req/s at 32 clients; p50 at 1 "
                f"client {vs(name, 'baseline', 1, 'p50_ms')} baseline"
            )

    if "floor" in by:
        lines.append(
            f"- floor (the baseline's handler in a copy of the gateway's Router): "
            f"{vs('floor', 'baseline')} baseline req/s at 32 clients, p50 at 1 client "
            f"{vs('floor', 'baseline', 1, 'p50_ms')}; against it, colocated "
            f"{vs('colocated', 'floor')} req/s at 32 clients, dedicated {vs('dedicated', 'floor')}"
        )
        lines.append(
            f"- CPU a request at 32 clients (the whole machine), vs baseline: floor "
            f"{vs('floor', 'baseline', key='cpu_us')}, colocated "
            f"{vs('colocated', 'baseline', key='cpu_us')}, dedicated "
            f"{vs('dedicated', 'baseline', key='cpu_us')}; colocated vs floor "
            f"{vs('colocated', 'floor', key='cpu_us')}"
        )
    lines += [
        f"- dedicated transport, direct vs handle: {vs('dedicated', 'handle')} req/s at 32 "
        f"clients; p50 at 1 client {p50('dedicated', 1):.2f} ms vs {p50('handle', 1):.2f} ms",
        f"- autoscaled (1 to 2 replicas, on the direct transport) vs fixed at 2: "
        f"{vs('autoscaled', 'dedicated-2')} req/s at 32 clients (target ≥ 0.95×), p50 at 1 "
        f"client {vs('autoscaled', 'dedicated-2', 1, 'p50_ms')} (target ≤ 1.10×)",
        f"- shadow on/off (colocated, every request shadowed): {vs('shadowed', 'colocated')} "
        f"req/s at 32 clients; p50 at 1 client {p50('shadowed', 1) - p50('colocated', 1):+.2f} ms",
        f"- batching off/on (colocated): {vs('unbatched', 'colocated', 64)} req/s at 64 "
        f"clients, {vs('unbatched', 'colocated')} at 32",
        f"- protocols at 32 clients, vs JSON: binary {vs('binary', 'colocated')}, gRPC "
        f"{vs('grpc', 'colocated')} req/s; p50 at 1 client: JSON {p50('colocated', 1):.2f} ms, "
        f"binary {p50('binary', 1):.2f} ms, gRPC {p50('grpc', 1):.2f} ms",
        f"- gRPC vs a bare Ray Serve gRPC deployment (baseline-grpc): "
        f"{vs('grpc', 'baseline-grpc')} req/s at 32 clients, {vs('grpc', 'baseline-grpc', 1)} "
        f"at 1; CPU a request at 32 "
        f"clients {vs('grpc', 'baseline-grpc', key='cpu_us')}",
        *_two_node_summary(by),
        f"- 100 rows per request at 32 clients: colocated {rps('colocated-100', 32) * 100:.0f} "
        f"rows/s ({vs('colocated-100', 'baseline-100')} baseline-100), dedicated "
        f"{vs('dedicated-100', 'baseline-100')} baseline-100; one row per request: colocated "
        f"{rps('colocated', 32):.0f} rows/s",
    ]
    return lines


def _two_node_summary(by: dict[str, dict[int, dict[str, Any]]]) -> list[str]:
    if "two-node" not in by:
        return []
    far, near = by["two-node"], by["one-node"]

    def vs(clients: int, key: str) -> str:
        return _show_ratio(paired_ratio(far[clients], near[clients], key))

    return [
        f"- two nodes vs one (router on the head; the version's replica on a worker node across "
        f"a veth bridge, or beside the router): {vs(32, 'rps')} req/s at 32 clients (target "
        f"≥ 0.90×), p50 at 1 client {vs(1, 'p50_ms')} (target ≤ 1.30×), CPU a request at 32 "
        f"clients {vs(32, 'cpu_us')}"
    ]


def _show_ratio(ratio: float | None) -> str:
    return "–" if ratio is None else f"{ratio:.2f}×"


def _show_us(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def _ceiling() -> float:
    from loadtests.cli import SELFTEST_FILE, selftest

    selftest(3.0)
    return float(json.loads(SELFTEST_FILE.read_text())["one_process_rps"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per point")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per point")
    parser.add_argument(
        "--target-rounds", type=int, default=9, help="rounds at the targets' points"
    )
    parser.add_argument(
        "--only",
        metavar="SCENARIOS",
        help="comma-separated scenarios (with what each compares with): printed, RESULTS.md kept",
    )
    parser.add_argument("--plain-only", metavar="OUT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.plain_only:
        Path(args.plain_only).write_text(json.dumps(run_plain(args.duration)))
        return 0
    from serve.ray.launcher import set_high_throughput_env

    set_high_throughput_env()
    started = time.monotonic()
    if args.only:
        results = run_high_throughput(
            args.duration, args.rounds, args.target_rounds, chosen(args.only.split(","))
        )
        print(table(results))
        return 0
    ceiling = _ceiling()
    results = run_high_throughput(args.duration, args.rounds, args.target_rounds)
    print("plain Ray Serve (defaults, router → model handle call per request)", flush=True)
    results["plain"] = _plain_subprocess(args.duration)
    results.update(_two_node_subprocess(args.duration, args.target_rounds))
    print("many models (a catalog of small models: loadtests/catalog.py)", flush=True)
    catalog = _catalog_subprocess(args.duration)
    print("the two ingresses (Ray Serve's, the routers' lean listeners)", flush=True)
    ingress = _ingress_subprocess(2 * args.duration, args.rounds)
    print(
        write_results(
            results, args.duration, args.rounds, ceiling, args.target_rounds, catalog, ingress
        )
    )
    print(f"bench took {time.monotonic() - started:.0f} s; wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
