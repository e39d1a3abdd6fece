"""The `modelgate` command line."""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import ValidationError

from converters.errors import ModelgateError


def _registry_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--registry",
        default=None,
        help="MLflow tracking/registry URI (sqlite:///…, http://…) or a models folder; "
        "default: $MODELGATE_REGISTRY or sqlite:///.modelgate/mlflow.db",
    )


def _open(args: argparse.Namespace):  # type: ignore[no-untyped-def]
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


QUICKSTART_CONFIG = "configs/quickstart.yaml"


#: A supervised gateway restarted more often than this within RESTART_WINDOW_S gives up.
MAX_RESTARTS, RESTART_WINDOW_S = 5, 600.0
RAY_STOPPED = 3  # exit status of a gateway whose local Ray instance stopped
STOP_GRACE_S = 90.0  # a supervised gateway asked to stop is killed after this long


def cmd_serve(args: argparse.Namespace) -> int:
    """Start (or join) Ray in high-throughput mode, deploy a config, serve until Ctrl-C.

    With a local Ray (no --address) and serving in the foreground, this process supervises:
    the Ray instance and the deployment live in a child process, and if that Ray instance
    stops (a raylet killed, a crash), the child is started again: a fresh Ray with the same
    config, its artifacts from the cache."""
    if not (args.address or args.no_block or args.no_restart or args.supervised):
        return _supervise(args)
    return _serve(args)


def _supervise(args: argparse.Namespace) -> int:
    import signal
    import time

    command = [sys.executable, "-m", "serve.cli", "serve", args.config, "--supervised"]
    command += ["--ray-metrics-port", str(args.ray_metrics_port)]
    command += ["--dashboard"] if args.dashboard else []
    for flag in ("tls_cert", "tls_key", "tls_client_ca", "https_port", "grpcs_port"):
        value = getattr(args, flag, None)
        if value is not None:
            command += [f"--{flag.replace('_', '-')}", str(value)]
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGINT)  # the child stops Serve and Ray in order

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    _become_subreaper()
    starts: list[float] = []
    while True:
        starts = [t for t in starts if time.monotonic() - t < RESTART_WINDOW_S]
        starts.append(time.monotonic())
        samples = ["--samples"] if args.samples and len(starts) == 1 else []
        # A session of its own: a terminal's Ctrl-C reaches this process only, which passes
        # each SIGINT on (`stop`): the first stops Serve in order, a second cuts its drain short.
        child = subprocess.Popen(command + samples, start_new_session=True)
        try:
            code = _wait_child(child, lambda: stopping)
        finally:
            _kill_leftovers(child.pid)  # what is left of that Ray instance (workers, HAProxy)
        if stopping:
            return 0
        if code == 2:  # the config itself is wrong: starting again would fail the same way
            return code
        if len(starts) > MAX_RESTARTS:
            print(
                f"modelgate: the gateway stopped {len(starts)} times within "
                f"{RESTART_WINDOW_S:g} s; giving up",
                file=sys.stderr,
            )
            return 1
        print(
            f"modelgate: the gateway's Ray instance stopped (exit {code}); starting a fresh one "
            f"and deploying {args.config} again",
            file=sys.stderr,
            flush=True,
        )
        time.sleep(1.0)


def _wait_child(child: subprocess.Popen[bytes], stopping: Callable[[], bool]) -> int:
    """The child's exit status; once asked to stop, it has STOP_GRACE_S to stop Ray in order."""
    import time

    asked: float | None = None
    while True:
        try:
            return child.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            _reap_orphans(exclude=child.pid)
            if stopping():
                asked = asked or time.monotonic()
                if time.monotonic() - asked > STOP_GRACE_S:
                    child.kill()


def _become_subreaper() -> None:
    """Linux: orphans of the child's processes (Ray workers, HAProxy) are re-parented to this
    process instead of init, so that none can outlive a dead Ray instance unseen."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def _kill_leftovers(child_pid: int) -> None:
    """SIGKILL the child's process group and every process still below this one, then reap."""
    import signal
    import time

    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child_pid, signal.SIGKILL)
    for pid in _descendants(os.getpid()):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _reap_orphans(exclude=None) and time.monotonic() < deadline:
        time.sleep(0.1)


def _reap_orphans(exclude: int | None) -> bool:
    """Collect the exit status of adopted orphans that have exited (not the child's: Popen
    owns that); True while some process below this one is still there."""
    left = False
    for pid in _descendants(os.getpid()):
        if pid == exclude:
            continue
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not our child (a grandchild): its parent reaps it
            done = 0
        left = left or done == 0
    return left


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for pid in children.get(todo.pop(), []):
            found.append(pid)
            todo.append(pid)
    return found


def _serve(args: argparse.Namespace) -> int:
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
        code = _block(watch_ray=not args.address)
    finally:
        if front is not None:
            front.close()
        if not args.address and not args.no_block:
            if code == RAY_STOPPED:
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


def _ports(config: dict) -> tuple[int, int]:  # type: ignore[type-arg]
    http = int((config.get("http_options") or {}).get("port", 8000))
    grpc_port = int((config.get("grpc_options") or {}).get("port", 9000))
    return http, grpc_port


def _exporter_ports(config: dict) -> list[int]:  # type: ignore[type-arg]
    from serve.core.config import GatewayConfig
    from serve.ray.launcher import GATEWAY_IMPORT_PATH

    ports = {
        GatewayConfig.model_validate(app.get("args") or {}).metrics.port
        for app in config["applications"]
        if app.get("import_path") == GATEWAY_IMPORT_PATH
    }
    return sorted(p for p in ports if p is not None)


def _block(watch_ray: bool) -> int:
    """Serve until Ctrl-C / SIGTERM (0), or until the local Ray instance stops (3)."""
    import signal
    import time

    from serve.ray import launcher

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)  # a plain kill stops Ray too (see _serve's finally)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignoring it
    try:
        while True:
            time.sleep(2)
            dead = launcher.dead_ray_processes() if watch_ray else []
            if dead:
                print(f"\nRay stopped: {', '.join(dead)} exited", file=sys.stderr, flush=True)
                return RAY_STOPPED
    except KeyboardInterrupt:
        print("\nstopping")
    return 0


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelgate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo-models", help="train and register the demo models")
    _registry_arg(demo)
    demo.set_defaults(func=cmd_demo_models)

    convert = sub.add_parser("convert", help="convert a registry model to a verified ONNX artifact")
    convert.add_argument("uri", help="models:/<name>/<version> or models:/<name>@<alias>")
    convert.add_argument("--out", default=".modelgate/artifacts", help="artifact store folder")
    convert.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow loading pickle/joblib files (runs code from the file)",
    )
    convert.add_argument(
        "--trust-type",
        action="append",
        default=[],
        help="a skops type to trust beyond the defaults (repeatable)",
    )
    for name in ("min-label-agreement", "prob-atol", "value-atol", "value-rtol"):
        convert.add_argument(
            f"--{name}", type=float, default=None, help="parity tolerance override"
        )
    _registry_arg(convert)
    convert.set_defaults(func=cmd_convert)

    models = sub.add_parser("models", help="list models, versions, aliases and ONNX artifacts")
    models.add_argument("--artifacts", default=".modelgate/artifacts", help="artifact store folder")
    _registry_arg(models)
    models.set_defaults(func=cmd_models)
    quick = sub.add_parser("quickstart", help="register and convert the demo models, then serve")
    _registry_arg(quick)
    quick.set_defaults(func=cmd_quickstart)

    from loadtests import cli as loadtest_cli

    loadtest = sub.add_parser("loadtest", help="drive a running gateway: latency/throughput steps")
    loadtest_cli.add_loadtest_args(loadtest)
    loadtest.set_defaults(func=loadtest_cli.cmd_loadtest)
    plan = sub.add_parser(
        "plan", help="highest rate under a p99 target, scaling, replicas needed, a sized config"
    )
    loadtest_cli.add_plan_args(plan)
    plan.set_defaults(func=loadtest_cli.cmd_plan)

    key = sub.add_parser("api-key", help="make an API key and its config entry")
    key.add_argument("--name", default="client", help="who will hold it")
    key.add_argument("--model", action="append", help="a model it may use (repeatable; all)")
    key.add_argument("--admin", action="store_true", help="management endpoints too")
    key.set_defaults(func=cmd_api_key)

    routes = sub.add_parser("routes", help="show routing as the running gateway sees it")
    routes.add_argument("--url", default="http://127.0.0.1:8000", help="the gateway's HTTP URL")
    routes.set_defaults(func=cmd_routes)

    ingress = sub.add_parser(
        "ingress-env",
        help="the environment a node needs before `ray start` (hardened HAProxy, gRPC limit)",
    )
    ingress.add_argument(
        "folder", help="a folder of HAProxy's own: made private (0700) if new, else must be"
    )
    ingress.add_argument("--config", help="the Ray Serve config to deploy (its body limit)")
    ingress.set_defaults(func=cmd_ingress_env)

    run = sub.add_parser("serve", help="start Ray (or join --address) and deploy a config")
    run.add_argument("config", help="a Ray Serve config file, e.g. configs/quickstart.yaml")
    run.add_argument("--address", default=None, help="join this Ray cluster instead")
    run.add_argument(
        "--dashboard",
        action="store_true",
        help="start Ray's dashboard (needed by `serve deploy`; costs ~1 GB)",
    )
    run.add_argument(
        "--ray-metrics-port",
        type=int,
        default=8080,
        help="where a local Ray exports its own metrics for Prometheus (default: 8080)",
    )
    run.add_argument("--samples", action="store_true", help="send and print sample predictions")
    run.add_argument(
        "--no-block",
        action="store_true",
        help="return once deployed (the cluster keeps serving only with --address)",
    )
    run.add_argument(
        "--no-restart",
        action="store_true",
        help="run Ray in this process and exit if it stops (default with a local Ray: a "
        "supervisor starts it again and redeploys the config)",
    )
    run.add_argument("--supervised", action="store_true", help=argparse.SUPPRESS)
    run.add_argument("--tls-cert", help="PEM certificate (chain): serve HTTPS and gRPC over TLS")
    run.add_argument("--tls-key", help="PEM private key of --tls-cert")
    run.add_argument("--tls-client-ca", help="PEM CA: require client certificates it signed")
    run.add_argument("--https-port", type=int, default=8443, help="HTTPS port (default 8443)")
    run.add_argument("--grpcs-port", type=int, default=9443, help="gRPC/TLS port (default 9443)")
    run.set_defaults(func=cmd_serve)
    return parser


def cmd_ingress_env(args: argparse.Namespace) -> int:
    """`eval "$(modelgate ingress-env /run/modelgate --config C)"` before `ray start` on every
    node: Ray's HAProxy hardened in a private folder, gRPC messages capped at the body limit."""
    import shlex

    from serve.ingress import haproxy
    from serve.ray import launcher

    folder = haproxy.own_folder(Path(args.folder))
    config = launcher.load_config(args.config) if args.config else {"applications": []}
    env = {**haproxy.ray_env(folder.resolve()), **launcher.ingress_env(config)}
    for key, value in {**launcher.HIGH_THROUGHPUT_ENV, **env}.items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ModelgateError, ValidationError) as exc:
        print(f"modelgate: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
