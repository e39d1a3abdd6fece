"""The `modelgate` commands: each a few lines over the library (converters, serve.ray.launcher,
serve.ingress), its arguments parsed by serve/cli/parsing.py."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from serve.cli import supervisor

if TYPE_CHECKING:
    from converters.registry import Registry

QUICKSTART_CONFIG = "configs/quickstart.yaml"


def _open(args: argparse.Namespace) -> Registry:
    from converters.registry import open_registry

    return open_registry(args.registry)


def cmd_demo_models(args: argparse.Namespace) -> int:
    from converters.demo import register_demo_models

    registry = _open(args)
    register_demo_models(registry)
    print(f"registry: {registry.location}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from converters.parity import Tolerance
    from converters.pipeline import ConvertOptions, convert_uri

    tolerance = Tolerance(
        **{
            k: v
            for k, v in (
                ("min_label_agreement", args.min_label_agreement),
                ("prob_atol", args.prob_atol),
                ("value_atol", args.value_atol),
                ("value_rtol", args.value_rtol),
            )
            if v is not None
        }
    )
    options = ConvertOptions(
        tolerance=tolerance,
        trust_pickle=args.trust_pickle,
        trusted_types=tuple(args.trust_type),
        out=Path(args.out),
    )
    result = convert_uri(_open(args), args.uri, options)
    m = result.manifest
    print(
        f"{m.source_uri} ({m.flavor}, {m.task}) -> {result.path / 'model.onnx'}"
        + (" [cached]" if result.cached else "")
    )
    if m.parity is not None:
        p = m.parity
        agreement = (
            "" if p.label_agreement is None else f"label agreement {p.label_agreement:.4f}, "
        )
        print(
            f"parity on {p.rows} rows ({p.sample_source}): {agreement}"
            f"max abs diff {p.max_abs_diff:.3g}, max rel diff {p.max_rel_diff:.3g}"
        )
    else:
        print("parity: none (ONNX passed through as is)")
    print(f"sha256 {m.sha256}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from converters.artifacts import cached

    registry = _open(args)
    artifacts = Path(args.artifacts)
    print(f"registry: {registry.location}")
    for model in registry.list_models():
        print(model.name)
        for v in model.versions:
            found = sorted(artifacts.glob(f"{model.name}/{v.version}-*"))
            onnx = next((str(d / "model.onnx") for d in found if cached(d) is not None), "-")
            aliases = f" @{', @'.join(v.aliases)}" if v.aliases else ""
            print(f"  {v.version}{aliases}  onnx: {onnx}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Start (or join) Ray in high-throughput mode, deploy a config, serve until Ctrl-C.

    With a local Ray (no --address) and serving in the foreground, this process supervises:
    the Ray instance and the deployment live in a child process, and if that Ray instance
    stops (a raylet killed, a crash), the child is started again: a fresh Ray with the same
    config, its artifacts from the cache."""
    if not (args.address or args.no_block or args.no_restart or args.supervised):
        return supervisor.supervise(args)
    return _serve(args)


def _serve(args: argparse.Namespace) -> int:
    from serve.ingress import lean
    from serve.ray import launcher

    config = launcher.load_config(args.config)
    print(f"checking and converting the models in {args.config} ...")
    resolved = launcher.preflight(config)
    from serve.ingress import tls

    tls_config = tls.from_env_or_args(
        getattr(args, "tls_cert", None),
        getattr(args, "tls_key", None),
        getattr(args, "https_port", 8443),
        getattr(args, "grpcs_port", 9443),
        getattr(args, "tls_client_ca", None),
    )
    if getattr(args, "ingress", None) and not args.address:  # a cluster's nodes have their own
        os.environ[lean.INGRESS_ENV] = args.ingress  # the local Ray's processes inherit it
    lean.ingress()  # a wrong setting is refused here, by name
    launcher.start_ray(
        args.address, args.dashboard, args.ray_metrics_port, launcher.ingress_env(config)
    )
    code = 0
    front: tls.TlsFront | None = None
    try:
        launcher.deploy(config)
        http, grpc_port = _ports(config)
        print(f"\nmodelgate is serving {args.config}")
        print(f"  HTTP (Open Inference Protocol v2): http://127.0.0.1:{http}/v2")
        print(f"  gRPC (inference.GRPCInferenceService): 127.0.0.1:{grpc_port}")
        if tls_config is not None:
            front = tls.TlsFront(tls_config, http, grpc_port)
            https_url, grpcs = front.urls()
            print(f"  HTTPS: {https_url}/v2    gRPC over TLS: {grpcs}")
        for port in _exporter_ports(config):
            print(f"  metrics, all replicas on this node: http://127.0.0.1:{port}/metrics")
        if not args.address:
            print(
                f"  Ray's own metrics (ray_serve_*): http://127.0.0.1:{args.ray_metrics_port}/metrics"
            )
        if args.samples and resolved:
            from serve.client.samples import print_samples

            first_gateway = next(iter(resolved.values()))
            print_samples(first_gateway, f"http://127.0.0.1:{http}", f"127.0.0.1:{grpc_port}")
        if args.no_block:
            return 0
        print("\nserving; Ctrl-C to stop", flush=True)
        code = supervisor.block(watch_ray=not args.address)
    finally:
        if front is not None:
            front.close()
        if not args.address and not args.no_block:
            if code == supervisor.RAY_STOPPED:
                launcher.forget_ray()  # Serve's controller went with it: nothing to stop in order
            else:
                try:
                    print(
                        "stopping Ray Serve: each HTTP ingress replica first stays reachable "
                        "for Ray's draining period (RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"
                        ", 30 s by default; Ctrl-C again to stop at once)",
                        flush=True,
                    )
                    launcher.stop_ray()
                except KeyboardInterrupt:  # stop_ray has still stopped Ray and its ingress
                    print("stopped at once", flush=True)
    return code


def _ports(config: dict[str, Any]) -> tuple[int, int]:
    http = int((config.get("http_options") or {}).get("port", 8000))
    grpc_port = int((config.get("grpc_options") or {}).get("port", 9000))
    return http, grpc_port


def _exporter_ports(config: dict[str, Any]) -> list[int]:
    from serve.core.config import GatewayConfig
    from serve.ray.launcher import GATEWAY_IMPORT_PATH

    ports = {
        GatewayConfig.model_validate(app.get("args") or {}).metrics.port
        for app in config["applications"]
        if app.get("import_path") == GATEWAY_IMPORT_PATH
    }
    return sorted(p for p in ports if p is not None)


def cmd_quickstart(args: argparse.Namespace) -> int:
    """Demo models -> verified ONNX -> the quickstart gateway, with sample calls."""
    from converters.demo import register_demo_models

    register_demo_models(_open(args))
    args.config, args.address, args.dashboard = QUICKSTART_CONFIG, None, False
    args.ray_metrics_port = 8080
    args.samples, args.no_block = True, False
    args.no_restart = args.supervised = False
    return cmd_serve(args)


def cmd_api_key(args: argparse.Namespace) -> int:
    """A new API key, and the config entry that admits it (only its digest is stored)."""
    from serve.core.auth import new_key

    token, hashed = new_key()
    models = ", ".join(args.model) if args.model else '"*"'
    print(f"key (give it to the client, it is not stored anywhere): {token}")
    print("config entry (args.auth.keys):")
    print(f"  - name: {args.name}\n    sha256: {hashed}\n    models: [{models}]")
    if args.admin:
        print("    admin: true")
    return 0


def cmd_routes(args: argparse.Namespace) -> int:
    """Routing as the running gateway sees it: versions, aliases, weights, shadow, readiness."""
    import json
    import urllib.request

    base = args.url.rstrip("/")
    with urllib.request.urlopen(f"{base}/modelgate/routes", timeout=10) as response:
        routes = json.load(response)
    request = urllib.request.Request(f"{base}/v2/repository/index", data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        states = {(e["name"], e["version"]): e["state"] for e in json.load(response)}
    print(f"router replica {routes['router']}")
    for name, table in routes["models"].items():
        print(name)
        for version in table["versions"]:
            aliases = [a for a, v in table["aliases"].items() if v == version]
            weight = table["weights"].get(version, 0.0)
            print(
                f"  v{version:<4} {states.get((name, version), '?'):<11} weight {weight:6.1%}"
                + (f"  aliases: {', '.join(sorted(aliases))}" if aliases else "")
            )
        shadow = table.get("shadow")
        if shadow:
            print(
                f"  shadow -> v{shadow['version']} at ratio {shadow['ratio']}"
                f" (max {shadow['max_in_flight']} in flight)"
            )
        print(f"  sticky header: {table['sticky_header']}")
    return 0


def cmd_ingress_env(args: argparse.Namespace) -> int:
    """`eval "$(modelgate ingress-env /run/modelgate --config C)"` before `ray start` on every
    node: Ray's HAProxy hardened in a private folder, gRPC messages capped at the body limit."""
    import shlex

    from serve.ingress import haproxy, lean
    from serve.ray import launcher

    folder = haproxy.own_folder(Path(args.folder))
    config = launcher.load_config(args.config) if args.config else {"applications": []}
    env = {**haproxy.ray_env(folder.resolve()), **launcher.ingress_env(config)}
    env[lean.INGRESS_ENV] = args.ingress
    for key, value in {**launcher.HIGH_THROUGHPUT_ENV, **env}.items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


def cmd_delivery(args: argparse.Namespace) -> int:
    """A running application's deliveries, from Ray's KV (serve/control/delivery.py): each
    model's phase, step and guardrails against their limits, and the decisions with their
    reasons; or an operator's pause, resume or abort, taken by the controller within a second."""
    import json

    from serve.ray.delivery import connect

    if args.action != "status" and not args.model:
        print(f"modelgate delivery {args.action}: name the model")
        return 2
    store = connect(args.app, args.address)
    if args.action != "status":
        if args.model not in store.desired():
            print(f"no delivery for model {args.model!r} in application {args.app!r}")
            return 1
        phase = store.status().get("models", {}).get(args.model, {}).get("phase")
        if phase in ("failed", "aborted", "promoted"):
            print(f"the delivery of {args.model} is {phase}: it stays so until its policy changes")
            return 1
        store.send(args.model, args.action)
        print(f"{args.action} sent to the delivery of {args.model}")
        return 0
    status = store.status()
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
        return 0
    print(_delivery_text(status))
    return 0


def _delivery_text(status: dict[str, Any]) -> str:
    import datetime

    lines = []
    for model, m in sorted(status.get("models", {}).items()):
        steps = ", ".join(f"{s:g}%" for s in m["steps"])
        lines.append(
            f"{model}: v{m['stable']} -> v{m['candidate']}  {m['phase']}  "
            f"candidate {m['candidate_percent']:g}% (steps {steps}, then 100%)"
        )
        if m["phase"] in ("running", "paused"):
            lines.append(f"  this step: {m['taken']:.0f} of {m['min_requests']} requests")
        for c in m["checks"]:
            value = "n/a" if c["value"] is None else f"{c['value']:.4g}"
            state = {True: "ok", False: "BREACH", None: "pending"}[c["ok"]]
            lines.append(f"  {c['name']:<24} {value:>10}  limit {c['threshold']:<8g} {state}")
        if m.get("reason"):
            lines.append(f"  reason: {m['reason']}")
    if not lines:
        lines.append("no delivery")
    lines.append("decisions:")
    for d in status.get("decisions", [])[-20:]:
        at = datetime.datetime.fromtimestamp(d["time"]).strftime("%H:%M:%S")
        lines.append(
            f"  {at} {d['model']} {d['outcome']:<11} "
            f"{d['from_percent']:g}% -> {d['candidate_percent']:g}%  {d['reason']}"
        )
    return "\n".join(lines)
