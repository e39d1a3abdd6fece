"""`modelgate loadtest` / `python -m loadtests`, and `modelgate plan`."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loadtests import report
from loadtests.clients import PROTOCOLS, Target
from loadtests.engine import Step, StepResult
from loadtests.payload import Payload

if TYPE_CHECKING:
    from loadtests.plan import Plan

SELFTEST_FILE = Path(".modelgate/loadtest-selftest.json")
#: One generator process is asked for at most this share of its measured ceiling.
GENERATOR_SHARE = 0.7


# -- arguments shared by both commands --------------------------------------------------------
def add_target_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the gateway's HTTP URL")
    parser.add_argument("--grpc", default="127.0.0.1:9000", help="the gateway's gRPC address")
    parser.add_argument(
        "--grpc-application", help="Ray Serve application name (needed when several are deployed)"
    )
    parser.add_argument("--model", help="model name")
    parser.add_argument("--version", default=None, help="version or alias (default route)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="http", help="http: JSON")
    parser.add_argument("--rows", type=int, default=1, help="rows per request")
    parser.add_argument("--jsonl", type=Path, help="requests to send, one JSON body per line")
    parser.add_argument("--timeout", type=float, default=10.0, help="per request, seconds")
    parser.add_argument(
        "--processes", default="auto", help="generator processes, or 'auto' (from --selftest)"
    )
    parser.add_argument("--ray-address", help="run generators as Ray tasks on this cluster")
    parser.add_argument("--out", type=Path, help="folder for the JSON, markdown and PNG reports")


def add_loadtest_args(parser: argparse.ArgumentParser) -> None:
    add_target_args(parser)
    parser.add_argument("--mode", choices=("closed", "open"), default="closed")
    parser.add_argument("--concurrency", default="1,8,32", help="closed: clients per step")
    parser.add_argument("--rate", default="100,200,400", help="open: requests/s per step")
    parser.add_argument("--arrival", choices=("constant", "poisson"), default="poisson")
    parser.add_argument("--max-in-flight", type=int, default=256, help="open: connection cap")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per step")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    parser.add_argument("--max-requests", type=int, default=1_000_000, help="per step")
    parser.add_argument(
        "--burst",
        help="open: bursts as FACTOR,ON,EVERY, e.g. 2,2,10: FACTOR times the step's rate for the "
        "first ON seconds of every EVERY seconds (goodput during them is reported)",
    )
    parser.add_argument(
        "--selftest", action="store_true", help="measure one generator process's ceiling"
    )


def add_plan_args(parser: argparse.ArgumentParser) -> None:
    add_target_args(parser)
    parser.add_argument("--slo-p99", required=True, help="p99 target, e.g. 25ms or 0.1s")
    parser.add_argument("--max-error-ratio", type=float, default=0.001)
    parser.add_argument(
        "--target-rate", type=float, help="req/s to size for (default: the best measured)"
    )
    parser.add_argument("--headroom", type=float, default=0.2, help="spare capacity, 0.2 = 20%%")
    parser.add_argument("--config", type=Path, help="the deployed Ray Serve config (to resize)")
    parser.add_argument("--address", default="auto", help="Ray cluster to redeploy on")
    parser.add_argument("--replicas", default="1,2", help="replica counts to measure")
    parser.add_argument("--start-rate", type=float, default=100.0)
    parser.add_argument("--max-rate", type=float, default=20_000.0)
    parser.add_argument("--probe-duration", type=float, default=5.0, help="measured s per probe")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--max-probes", type=int, default=10)
    parser.add_argument(
        "--verify",
        action="store_true",
        help="deploy the config the plan wrote, measure it and report predicted vs measured "
        "(needs --config; the original config is put back)",
    )
    parser.add_argument(
        "--verify-samples", type=int, default=2000, help="requests each verifying probe measures"
    )


# -- loadtest ---------------------------------------------------------------------------------
def cmd_loadtest(args: argparse.Namespace) -> int:
    if args.selftest:
        return selftest(args.duration)
    if not args.model:
        raise SystemExit("--model is required (or --selftest)")
    from loadtests.runner import load_payloads

    burst = _burst(args)
    target = _target(args)
    payloads = load_payloads(target, args.rows, args.jsonl)
    steps = [
        _bursting(
            Step(
                args.mode,
                concurrency=int(n) if args.mode == "closed" else args.max_in_flight,
                rate=0.0 if args.mode == "closed" else float(n),
                arrival=args.arrival,
                duration_s=args.duration,
                warmup_s=args.warmup,
                max_requests=args.max_requests,
                timeout_s=args.timeout,
            ),
            burst,
        )
        for n in (args.concurrency if args.mode == "closed" else args.rate).split(",")
    ]
    results = [_run(target, payloads, step, args) for step in steps]
    rows = [report.step_row(r) for r in results]
    print(report.table(rows))
    if args.out:
        _write_loadtest(args.out, target, payloads, rows, args)
    return 0


def _target(args: argparse.Namespace) -> Target:
    return Target(
        args.url, args.model, args.version, args.protocol, args.grpc, args.grpc_application
    )


def _run(
    target: Target, payloads: list[Payload], step: Step, args: argparse.Namespace
) -> StepResult:
    from rich.progress import Progress

    from loadtests.runner import run

    processes = _processes(args.processes, step)
    what = (
        f"{step.mode} {step.concurrency} clients"
        if step.mode == "closed"
        else f"open {step.rate:g} req/s"
    )
    with Progress(transient=True) as progress:
        task = progress.add_task(f"{what} ({processes} generator(s))", total=1.0)
        result = run(
            target,
            payloads,
            step,
            processes,
            args.ray_address,
            lambda f: progress.update(task, completed=f),
        )
    s = result.summary()
    print(
        f"{what}: {s['achieved_rps']:.0f} req/s, p50 {s['latency_ms']['p50']:.2f} ms, "
        f"p99 {s['latency_ms']['p99']:.2f} ms, errors {sum(s['errors'].values())}, "
        f"late {s['late']}",
        flush=True,
    )
    return result


def _processes(setting: str, step: Step) -> int:
    if setting != "auto":
        return max(1, int(setting))
    if step.mode == "closed" or not SELFTEST_FILE.exists():
        return 1
    ceiling = json.loads(SELFTEST_FILE.read_text())["one_process_rps"]
    return max(1, math.ceil(step.rate / (GENERATOR_SHARE * ceiling)))


def _write_loadtest(
    out: Path,
    target: Target,
    payloads: list[Payload],
    rows: list[dict[str, Any]],
    args: argparse.Namespace,
) -> None:
    from loadtests.payload import describe

    doc = {
        "schema": report.LOADTEST_SCHEMA,
        "machine": report.machine(),
        "target": vars(target),
        "payload": describe(payloads),
        "generators": {"processes": args.processes, "ray_address": args.ray_address},
        "steps": rows,
    }
    report.write_json(out / "loadtest.json", doc)
    (out / "loadtest.md").write_text(f"# Load test: {target.model}\n\n{report.table(rows)}\n")
    name = f"{target.model} ({target.protocol})"
    if args.mode == "open":
        report.plot_latency_vs_throughput(out / "latency_vs_throughput.png", {name: rows}, None)
    else:
        report.plot_throughput_vs_concurrency(out / "throughput_vs_concurrency.png", {name: rows})
    print(f"reports in {out}/")


def _burst(args: argparse.Namespace) -> tuple[float, float, float] | None:
    """--burst FACTOR,ON,EVERY (open loop only), checked before anything is sent."""
    if not args.burst:
        return None
    if args.mode != "open":
        raise SystemExit("--burst needs --mode open")
    try:
        factor, on_s, every_s = (float(x) for x in args.burst.split(","))
    except ValueError:
        raise SystemExit(f"--burst {args.burst!r}: FACTOR,ON,EVERY, e.g. 2,2,10") from None
    if factor <= 0 or not 0 < on_s <= every_s:
        raise SystemExit(f"--burst {args.burst!r}: FACTOR > 0 and 0 < ON <= EVERY")
    return factor, on_s, every_s


def _bursting(step: Step, burst: tuple[float, float, float] | None) -> Step:
    from dataclasses import replace

    if burst is None:
        return step
    factor, on_s, every_s = burst
    return replace(step, burst_rate=factor * step.rate, burst_s=on_s, burst_every_s=every_s)


def selftest(duration_s: float = 5.0) -> int:
    """The generator's own ceiling: closed loop against a trivial local server, with 1 and 2
    generator processes; the result sizes `--processes auto`."""
    from loadtests.runner import load_payloads, run
    from loadtests.testserver import local_server

    with local_server() as url:
        target = Target(url, "m")
        payloads = load_payloads(target)
        figures = {}
        for processes in (1, 2):
            step = Step("closed", concurrency=32, duration_s=duration_s, warmup_s=1.0)
            result = run(target, payloads, step, processes)
            figures[processes] = result.achieved_rps
            print(f"{processes} generator process(es), 32 clients: {result.achieved_rps:.0f} req/s")
    SELFTEST_FILE.parent.mkdir(parents=True, exist_ok=True)
    doc = {"one_process_rps": figures[1], "two_processes_rps": figures[2], **report.machine()}
    SELFTEST_FILE.write_text(json.dumps(doc, indent=2) + "\n")
    print(
        f"one generator process drives about {figures[1]:.0f} req/s here (the trivial server "
        f"shares the machine); --processes auto asks each for at most "
        f"{GENERATOR_SHARE:.0%} of that. Saved to {SELFTEST_FILE}."
    )
    return 0


# -- plan -------------------------------------------------------------------------------------
def parse_duration_ms(text: str) -> float:
    """'25ms', '0.1s', '250us' or a bare number of milliseconds."""
    for suffix, factor in (("ms", 1.0), ("us", 1e-3), ("s", 1e3)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def cmd_plan(args: argparse.Namespace) -> int:
    from loadtests.plan import Plan, Scaling, Slo, probe_duration, search_max_rate
    from loadtests.runner import load_payloads

    if not args.model:
        raise SystemExit("--model is required")
    if args.verify and args.config is None:
        raise SystemExit("--verify deploys the config the plan writes: it needs --config")
    slo = Slo(parse_duration_ms(args.slo_p99), args.max_error_ratio)
    target = _target(args)
    payloads = load_payloads(target, args.rows, args.jsonl)
    version = _served_version(target)
    deployed = _deployed_config(args)  # read and resolved once, before anything is measured
    out: Path = args.out or Path(f"plan-{args.model}")
    out.mkdir(parents=True, exist_ok=True)

    def probe_for(samples: int | None) -> Callable[[float], StepResult]:
        def probe(rate: float) -> StepResult:
            step = Step(
                "open",
                concurrency=1024,
                rate=rate,
                arrival="poisson",
                duration_s=probe_duration(rate, args.probe_duration, samples),
                warmup_s=args.warmup,
                timeout_s=args.timeout,
            )
            return _run(target, payloads, step, args)

        return probe

    probe = probe_for(None)  # a search's

    def search() -> Any:
        return search_max_rate(
            probe, slo, args.start_rate, args.max_rate, max_probes=args.max_probes
        )

    searches: dict[int, Any] = {}
    placement: dict[int, dict[str, int]] = {}
    if deployed is None:
        print(f"searching the highest rate with p99 <= {slo.p99_ms:g} ms (replicas as deployed)")
        searches[0] = search()
    else:
        searches, placement = _search_per_replicas(
            args, deployed, target, payloads, version, search
        )
    sweep = [report.step_row(_closed_step(target, payloads, n, args)) for n in (1, 4, 16, 64)]
    measured = {n: s.max_rate for n, s in searches.items() if n > 0}
    scaling = Scaling(measured or {1: searches[0].max_rate})
    best = max(s.max_rate for s in searches.values())
    plan = Plan(
        model=args.model,
        version=version,
        target=vars(target),
        slo=slo,
        searches=searches,
        scaling=scaling,
        sweep=sweep,
        target_rate=args.target_rate or best,
        headroom=args.headroom,
        deployed=deployed,
        placement=placement,
    )
    if args.verify:
        assert deployed is not None
        plan.verification = _verify(
            args, plan, target, payloads, slo, probe_for(args.verify_samples)
        )
    _write_plan(out, plan)
    return 0


def _deployed_config(args: argparse.Namespace) -> tuple[dict[str, Any], Any] | None:
    """--config, and each application's versions resolved (launcher.preflight)."""
    if args.config is None:
        return None
    from serve.ray import launcher

    config = launcher.load_config(args.config)
    return config, launcher.preflight(config)


def _served_version(target: Target) -> str:
    """The registry version the gateway serves for --version (an alias resolved)."""
    from loadtests.runner import fetch_manifest

    manifest = fetch_manifest(target)
    if manifest is None:  # not a modelgate gateway: no manifest route
        return target.version or "default"
    return manifest.version


def _search_per_replicas(
    args: argparse.Namespace,
    deployed: tuple[dict[str, Any], Any],
    target: Target,
    payloads: list[Payload],
    version: str,
    search: Any,
) -> tuple[dict[int, Any], dict[int, dict[str, int]]]:
    """Redeploy the config at each replica count, search, and put the original config back;
    where the version's replicas ran at each count too."""
    from loadtests.plan import patch_config, version_deployment
    from serve.ray import launcher

    config, resolved = deployed
    where = version_deployment(config, resolved, args.model, version)
    launcher.start_ray(args.address)
    searches, placement = {}, {}
    try:
        for replicas in (int(n) for n in args.replicas.split(",")):
            print(f"deploying {args.model} v{version} on {replicas} replica(s)")
            launcher.deploy(patch_config(config, resolved, args.model, version, replicas))
            _warm(target, payloads, args)
            placement[replicas] = _placement(*where)
            searches[replicas] = search()
            print(
                f"  {replicas} replica(s): {searches[replicas].max_rate:.0f} req/s within the SLO"
            )
    finally:
        print("putting the original config back")
        launcher.deploy(config)
    return searches, placement


def _placement(application: str, deployment: str) -> dict[str, int]:
    """How many of a deployment's running replicas each node holds (by node address)."""
    from collections import Counter

    from serve.ray.internals import serve_details

    replicas = serve_details()["applications"][application]["deployments"][deployment]["replicas"]
    nodes = Counter(str(r.get("node_ip")) for r in replicas if "RUNNING" in str(r["state"]))
    return dict(sorted(nodes.items()))


def _warm(target: Target, payloads: list[Payload], args: argparse.Namespace) -> None:
    """A deployment just made, ready and warm before anything is measured: its first requests
    meet replicas that have just started (and, with HAProxy, a configuration just reloaded),
    which would count against the first probe. Ready, then 3 s of 8 clients, unmeasured."""
    from loadtests.clients import wait_ready

    asyncio.run(wait_ready(target))
    _run(target, payloads, Step("closed", concurrency=8, duration_s=3, warmup_s=0), args)


def _verify(
    args: argparse.Namespace,
    plan: Plan,
    target: Target,
    payloads: list[Payload],
    slo: Any,
    probe: Callable[[float], StepResult],
) -> dict[str, Any]:
    """Deploy the config the plan wrote and measure what it promised: the target rate, then a
    search for the highest rate within the SLO starting at the predicted one (its first probe
    is at that rate); every probe long enough for `--verify-samples` requests. The original
    config goes back whatever happens."""
    from loadtests.plan import patch_config, search_max_rate, version_deployment
    from serve.ray import launcher

    assert plan.deployed is not None
    config, resolved = plan.deployed
    predicted = plan.scaling.capacity_at(plan.replicas)
    launcher.start_ray(args.address)
    try:
        print(f"verifying: deploying {plan.model} v{plan.version} on {plan.replicas} replica(s)")
        launcher.deploy(patch_config(config, resolved, plan.model, plan.version, plan.replicas))
        _warm(target, payloads, args)
        placement = _placement(*version_deployment(config, resolved, plan.model, plan.version))
        # the target rate first, on a gateway no probe has overloaded yet; then the search
        at_target = probe(plan.target_rate)
        search = search_max_rate(probe, slo, predicted, args.max_rate, max_probes=args.max_probes)
    finally:
        print("putting the original config back")
        launcher.deploy(config)
    first_rate, at_predicted, _ = search.probes[0]
    target_verdict = slo.verdict(at_target)

    def figures(result: StepResult) -> dict[str, Any]:
        return {
            "p99_ms": result.percentile_ms(99),
            "samples": result.measured,
            "achieved_rps": result.achieved_rps,
            "errors": result.errors,
        }

    return {
        "replicas": plan.replicas,
        "placement": placement,
        "predicted_max_rate": predicted,
        "measured_max_rate": search.max_rate,
        "max_rate_ratio": search.max_rate / predicted if predicted else None,
        "at_predicted_rate": {"rate": first_rate, **figures(at_predicted)},
        "at_measured_max_rate": figures(search.best) if search.best is not None else None,
        "target_rate": plan.target_rate,
        "at_target_rate": {
            **figures(at_target),
            "meets_slo": target_verdict is None,
            "why_not": target_verdict,
        },
        "search": search.as_dict(),
    }


def _closed_step(
    target: Target, payloads: list[Payload], clients: int, args: argparse.Namespace
) -> StepResult:
    step = Step(
        "closed",
        concurrency=clients,
        duration_s=min(args.probe_duration, 3.0),
        warmup_s=args.warmup,
        timeout_s=args.timeout,
    )
    return _run(target, payloads, step, args)


def _write_plan(out: Path, plan: Plan) -> None:
    doc = plan.as_doc(report.machine(), report.PLAN_SCHEMA)
    report.write_json(out / "plan.json", doc)
    series = {
        ("as deployed" if n == 0 else f"{n} replica(s)"): [
            {"achieved_rps": p["achieved_rps"], "latency_ms": p["latency_ms"]}
            for p in s.as_dict()["probes"]
            if p["measured"]
        ]
        for n, s in plan.searches.items()
    }
    report.plot_latency_vs_throughput(out / "latency_vs_throughput.png", series, plan.slo.p99_ms)
    report.plot_throughput_vs_concurrency(
        out / "throughput_vs_concurrency.png", {plan.model: plan.sweep}
    )
    (out / "config.yaml").write_text(plan.sized_config())
    lines = [
        f"# Capacity plan: {plan.model} v{plan.version}",
        "",
        f"SLO: p99 <= {plan.slo.p99_ms:g} ms, errors <= {plan.slo.max_error_ratio:.2%}.",
        "",
        "| replicas | max req/s within the SLO | nodes (replicas on each) |",
        "|---|---:|---|",
        *[
            f"| {k} | {v['max_rate']:.0f} | {_nodes(doc['placement'].get(k))} |"
            for k, v in doc["searches"].items()
        ],
        "",
        f"Scaling efficiency (1 -> 2 replicas): {doc['scaling_efficiency']:.2f}. {plan.verdict()}.",
        "",
        "Assumptions: " + "; ".join(doc["assumptions"]) + ".",
        "",
        "Closed-loop sweep:",
        "",
        report.table(plan.sweep),
        "",
    ]
    if plan.verification is not None:
        lines += _verification_lines(plan.verification, plan.slo.p99_ms)
    (out / "plan.md").write_text("\n".join(lines))
    print("\n".join(lines[4:12]))
    print(f"plan, plots and config in {out}/")


def _nodes(placement: dict[str, int] | None) -> str:
    if not placement:
        return "as deployed"
    return ", ".join(f"{node} × {count}" for node, count in placement.items())


def _verification_lines(v: dict[str, Any], slo_ms: float) -> list[str]:
    """plan.md's section on the deployed plan, predicted against measured."""
    best, at_target, at_predicted = (
        v["at_measured_max_rate"],
        v["at_target_rate"],
        v["at_predicted_rate"],
    )
    ratio = f" ({v['max_rate_ratio']:.2f}×)" if v["max_rate_ratio"] is not None else ""
    slo = f"<= {slo_ms:g} ms"
    verdict = (
        "**meet the SLO at the target rate**."
        if at_target["meets_slo"]
        else f"**miss the SLO at the target rate**: {at_target['why_not']}."
    )
    return [
        f"## Verified: the written config deployed ({v['replicas']} replica(s): "
        f"{_nodes(v['placement'])})",
        "",
        "| figure | predicted | measured | samples |",
        "|---|---:|---:|---:|",
        f"| max req/s within the SLO | {v['predicted_max_rate']:.0f} | "
        f"{v['measured_max_rate']:.0f}{ratio} | {best['samples'] if best else 0} |",
        f"| p99 at the predicted rate ({at_predicted['rate']:.0f} req/s) | {slo} | "
        f"{at_predicted['p99_ms']:.1f} ms | {at_predicted['samples']} |",
        f"| p99 at the measured max rate | {slo} | "
        + (f"{best['p99_ms']:.1f} ms | {best['samples']} |" if best else "none passed | 0 |"),
        f"| p99 at the target rate ({v['target_rate']:.0f} req/s) | {slo} | "
        f"{at_target['p99_ms']:.1f} ms | {at_target['samples']} |",
        "",
        f"The recommended replicas {verdict}",
        "",
    ]


def plan_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelgate plan")
    add_plan_args(parser)
    return parser


def loadtest_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtests", description=__doc__)
    add_loadtest_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    return cmd_loadtest(loadtest_parser().parse_args(argv))
