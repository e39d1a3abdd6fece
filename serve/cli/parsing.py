"""The `modelgate` command line's arguments: one subcommand per command of serve/cli/commands.py.
The load-test commands come from the load-test harness, when its extra is installed."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from serve.cli.commands import (
    cmd_api_key,
    cmd_convert,
    cmd_delivery,
    cmd_demo_models,
    cmd_ingress_env,
    cmd_models,
    cmd_quickstart,
    cmd_routes,
    cmd_serve,
)


def _registry_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--registry",
        default=None,
        help="MLflow tracking/registry URI (sqlite:///…, http://…) or a models folder; "
        "default: $MODELGATE_REGISTRY or sqlite:///.modelgate/mlflow.db",
    )


def _needs_loadtest_extra(exc: ImportError) -> Callable[[argparse.Namespace], int]:
    def missing(args: argparse.Namespace) -> int:
        print(
            f"modelgate: error: the load-test harness needs its extra ({exc.name} is missing): "
            "pip install 'modelgate[loadtest]'",
            file=sys.stderr,
        )
        return 2

    return missing


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelgate",
        description="registry -> verified ONNX -> Ray Serve, speaking the Open Inference Protocol",
    )
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

    loadtest = sub.add_parser("loadtest", help="drive a running gateway: latency/throughput steps")
    plan = sub.add_parser(
        "plan", help="highest rate under a p99 target, scaling, replicas needed, a sized config"
    )
    try:
        from loadtests import cli as loadtest_cli
    except ImportError as exc:  # the serving install, without the harness's extra
        missing = _needs_loadtest_extra(exc)
        loadtest.set_defaults(func=missing)
        plan.set_defaults(func=missing)
    else:
        loadtest_cli.add_loadtest_args(loadtest)
        loadtest.set_defaults(func=loadtest_cli.cmd_loadtest)
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

    deliver = sub.add_parser(
        "delivery",
        help="progressive deliveries (canaries the gateway promotes or rolls back itself): "
        "status, pause, resume, abort",
    )
    deliver.add_argument("action", choices=["status", "pause", "resume", "abort"])
    deliver.add_argument("model", nargs="?", help="the model (pause, resume, abort)")
    deliver.add_argument("--app", default="modelgate", help="the Serve application")
    deliver.add_argument("--address", default="auto", help="the Ray cluster (default: auto)")
    deliver.add_argument("--json", action="store_true", help="status as JSON")
    deliver.set_defaults(func=cmd_delivery)

    ingress = sub.add_parser(
        "ingress-env",
        help="the environment a node needs before `ray start` (hardened HAProxy, gRPC limit)",
    )
    ingress.add_argument(
        "folder", help="a folder of HAProxy's own: made private (0700) if new, else must be"
    )
    ingress.add_argument("--config", help="the Ray Serve config to deploy (its body limit)")
    ingress.add_argument(
        "--ingress",
        choices=["ray", "lean"],
        default="lean",
        help="the routers' own listeners (default), or Ray Serve's ingress (every node the same)",
    )
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
    run.add_argument(
        "--ingress",
        choices=["ray", "lean"],
        default=None,
        help="how a local Ray's HAProxy reaches the routers: Ray Serve's ingress, or the "
        "routers' own listeners (serve/ingress/lean.py); default: $MODELGATE_INGRESS, else lean",
    )
    run.add_argument("--supervised", action="store_true", help=argparse.SUPPRESS)
    run.add_argument("--tls-cert", help="PEM certificate (chain): serve HTTPS and gRPC over TLS")
    run.add_argument("--tls-key", help="PEM private key of --tls-cert")
    run.add_argument("--tls-client-ca", help="PEM CA: require client certificates it signed")
    run.add_argument("--https-port", type=int, default=8443, help="HTTPS port (default 8443)")
    run.add_argument("--grpcs-port", type=int, default=9443, help="gRPC/TLS port (default 9443)")
    run.set_defaults(func=cmd_serve)
    return parser
