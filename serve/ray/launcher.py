"""Start (or join) Ray with the settings modelgate needs, and deploy a Ray Serve config file.

Ray Serve reads its high-throughput switches from the environment when it is imported, in the
driver and in every worker: they are set here before Ray is imported, and Ray passes them on to
the processes it starts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from converters.errors import ModelgateError
from serve.control.resolve import ConfigError, Resolved, resolve_versions
from serve.core.config import GatewayConfig, Limits

#: HAProxy ingress + throughput-optimized Serve (see ../shared/DESIGN.md, "Measured").
HIGH_THROUGHPUT_ENV = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    # A prediction is a pure function of its inputs, so HAProxy may replay a request that a
    # replica closed on without answering (a router replica stopping in a rollout), not only
    # one it could not connect for (Ray's default).
    "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response",
}
GATEWAY_IMPORT_PATH = "serve.app:build_app"
#: What a node's readiness probe asks (configs/kuberay/rayservice.yaml): its Serve proxy, on the
#: HTTP port, answers when the node can take traffic and route it.
PROXY_HEALTH_PATH = "/-/healthz"


class DeployError(ModelgateError):
    """Ray Serve could not bring the config up; the message carries Serve's own reason."""


def set_high_throughput_env(extra: dict[str, str] | None = None) -> None:
    for key, value in {**HIGH_THROUGHPUT_ENV, **(extra or {})}.items():
        os.environ.setdefault(key, value)


def ingress_env(config: dict[str, Any]) -> dict[str, str]:
    """Ray's settings that follow a config's limits (read when Ray's processes import Serve,
    so set before Ray starts, on every node): gRPC messages are refused with
    RESOURCE_EXHAUSTED past the largest HTTP body any gateway application takes (Ray's own
    default is 2 GiB, for sends and receives)."""
    bodies = [
        GatewayConfig.model_validate(app.get("args") or {}).limits.max_body_bytes
        for app in config.get("applications", [])
        if app.get("import_path") == GATEWAY_IMPORT_PATH
    ]
    limit = max(bodies, default=Limits().max_body_bytes)
    return {"RAY_SERVE_GRPC_MAX_MESSAGE_SIZE": str(limit)}


def start_ray(
    address: str | None = None,
    dashboard: bool = False,
    metrics_export_port: int | None = None,
    env: dict[str, str] | None = None,
) -> None:
    """Join `address`, or start a local Ray; `metrics_export_port`: where a local Ray's node
    exports its own metrics (ray_serve_*, for Prometheus), a free port if None; `env`: more of
    Ray's settings (`ingress_env`) for the processes a local Ray starts.

    A local Ray's HAProxy lives in a private folder of its own, hardened (serve/ingress/haproxy.py),
    removed by `stop_ray`; a cluster's is its operator's (`modelgate ingress-env`)."""
    import ray

    if ray.is_initialized():
        return
    if not address and _ingress_folder is None:
        _own_ingress_folder()
    set_high_throughput_env({**_ingress_env, **(env or {})})
    if address:
        ray.init(address=address)
    else:
        with _children_ignore_sigint():
            # "local": always a fresh instance, never an unrelated cluster found in /tmp/ray.
            ray.init(
                address="local",
                include_dashboard=dashboard,
                num_cpus=os.cpu_count(),
                _metrics_export_port=metrics_export_port,
            )


@contextlib.contextmanager
def _children_ignore_sigint() -> Iterator[None]:
    """Ray's processes inherit an ignored SIGINT, so a Ctrl-C reaches only this driver, which
    then stops Serve and Ray in order (a raylet killed by the same Ctrl-C leaves the driver
    hanging in its shutdown)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


_ingress_folder: Path | None = None
_ingress_env: dict[str, str] = {}


def _own_ingress_folder() -> None:
    from serve.ingress import haproxy

    global _ingress_folder, _ingress_env
    _ingress_folder = haproxy.private_folder()
    _ingress_env = haproxy.ray_env(_ingress_folder)
    # The paths are this Ray's own, whatever a previous one in this process left set; the
    # limits stay the operator's where set.
    os.environ.update({k: v for k, v in _ingress_env.items() if k in haproxy.PATH_SETTINGS})


def ingress_folder() -> Path | None:
    """The private folder of the local Ray's HAProxy files (None when none was started)."""
    return _ingress_folder


def _remove_ingress_folder() -> None:
    """Once Ray is down: nothing of its HAProxy (sockets, config, logs) is left behind."""
    from serve.ingress import haproxy

    global _ingress_folder
    if _ingress_folder is not None:
        haproxy.remove(_ingress_folder)
        _ingress_folder = None


def stop_ray() -> None:
    """Serve drains and stops in order, then Ray. Interrupted meanwhile (a second Ctrl-C), Ray
    stops at once; either way nothing of its ingress is left behind."""
    import ray
    from ray import serve

    try:
        if ray.is_initialized():
            try:
                serve.shutdown()
            finally:
                ray.shutdown()
    finally:
        _remove_ingress_folder()


def dead_ray_processes() -> list[str]:
    """The core processes of the local Ray instance this process started that have exited
    (empty when there are none, or when this process joined a cluster)."""
    from serve.ray import internals

    return internals.dead_core_processes()


def forget_ray() -> None:
    """After the local Ray instance died: stop what is left of it, without asking Serve's
    controller (gone with it) to shut down in order."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    _remove_ingress_folder()


def load_config(path: str | Path) -> dict[str, Any]:
    with open(path) as f:
        doc = yaml.safe_load(f)
    if not isinstance(doc, dict) or "applications" not in doc:
        raise ValueError(f"{path}: not a Ray Serve config (no 'applications' list)")
    return doc


def preflight(config: dict[str, Any]) -> dict[str, list[Resolved]]:
    """Validate and resolve every modelgate application before Ray Serve sees the config.

    Converting here also warms the artifact cache, so the builder on the cluster finds each
    artifact ready (same content address) instead of converting it again. Returns each gateway
    application's resolved versions, by application name.
    """
    resolved_by_app = {}
    for app in config["applications"]:
        if app.get("import_path") == GATEWAY_IMPORT_PATH:
            resolved = resolve_versions(GatewayConfig.model_validate(app.get("args") or {}))
            check_routing(app, resolved)
            resolved_by_app[app["name"]] = resolved
    return resolved_by_app


def check_routing(app: dict[str, Any], resolved: list[Resolved]) -> None:
    """The Router's user_config must name only deployed versions and aliases (with a
    catalog, a model the config does not list may be the catalog's: checked by the routers
    when the catalog lists it)."""
    from serve.core.routing import RoutingConfig, compile_routing
    from serve.ray.app import follows, registry_aliases

    router: dict[str, Any] = next(
        (d for d in app.get("deployments") or [] if d.get("name") == "Router"), {}
    )
    routing = RoutingConfig.model_validate(router.get("user_config") or {})
    versions: dict[str, list[str]] = {}
    for model, _, _, version, _ in resolved:
        versions.setdefault(model.name, []).append(version)
    args = GatewayConfig.model_validate(app.get("args") or {})
    if args.catalog is not None:
        listed = {n: r for n, r in routing.models.items() if n in versions}
        routing = RoutingConfig(models=listed)
    try:  # the same compilation the Router's reconfigure() runs
        compile_routing(
            versions, registry_aliases(resolved), routing, None, follows(args, resolved)
        )
    except ValueError as exc:
        raise ConfigError(f"Router user_config: {exc}") from exc


def deploy(config: dict[str, Any], timeout_s: float = 180.0) -> None:
    """Apply a Ray Serve config (as `serve run config.yaml` does) and wait until it runs."""
    from serve.ray import internals

    wait_running(internals.start_serve_and_deploy(config), timeout_s)


def wait_running(names: list[str], timeout_s: float) -> None:
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while True:
        apps = serve.status().applications
        states = {n: apps[n].status if n in apps else "NOT_STARTED" for n in names}
        failed = [n for n, s in states.items() if s in ("DEPLOY_FAILED", "UNHEALTHY")]
        if failed:
            raise DeployError(
                f"application {failed[0]} failed to deploy: {apps[failed[0]].message}"
            )
        if all(s == "RUNNING" for s in states.values()):
            return
        if time.monotonic() > deadline:
            raise DeployError(f"applications not running after {timeout_s}s: {states}")
        time.sleep(0.25)
