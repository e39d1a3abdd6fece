"""Every use modelgate makes of Ray's private APIs, and only here: each says why the public API
does not do it. tests/integration/test_ray_internals.py calls each against a live Ray (importing is
not enough); run it whenever Ray is bumped (`pytest tests/integration/test_ray_internals.py`).

Not Python but private all the same: the HAProxy configuration Ray generates, which
serve/ingress/haproxy.py rewrites, checked against Ray 2.60's own by tests/serve/test_haproxy.py.
"""

from __future__ import annotations

import secrets
from typing import Any

from ray.experimental import internal_kv

#: The KV namespace of everything modelgate keeps in Ray's KV.
NAMESPACE = "modelgate"


class KVDirectory:
    """The direct transport's Directory (serve/transport/direct.py) in Ray's internal KV.

    Why private: Ray has no public cluster-wide key-value store. `internal_kv` is the GCS's own
    store, which Ray Serve keeps its checkpoints in; it reaches every node, survives the
    application's replicas and needs no process of its own. The public alternative, a named
    actor holding a dict, costs a process and an actor call for every listing."""

    def shared_secret(self, name: str) -> bytes:
        key = f"secret/{name}"
        # An atomic put-if-absent, then read back: every caller sees the first one's value.
        internal_kv._internal_kv_put(
            key, secrets.token_bytes(32), overwrite=False, namespace=NAMESPACE
        )
        secret = internal_kv._internal_kv_get(key, namespace=NAMESPACE)
        assert secret, f"no shared secret for {name}"
        return bytes(secret)

    def get(self, key: str) -> str | None:
        value = internal_kv._internal_kv_get(key, namespace=NAMESPACE)
        return None if value is None else bytes(value).decode()

    def publish(self, key: str, address: str) -> None:
        internal_kv._internal_kv_put(key, address, overwrite=True, namespace=NAMESPACE)

    def listing(self, prefix: str) -> dict[str, str]:
        out = {}
        for key in internal_kv._internal_kv_list(prefix, namespace=NAMESPACE):
            value = internal_kv._internal_kv_get(key, namespace=NAMESPACE)
            if value:
                out[key.decode() if isinstance(key, bytes) else key] = value.decode()
        return out

    def remove(self, key: str) -> None:
        internal_kv._internal_kv_del(key, namespace=NAMESPACE)


def serve_details() -> dict[str, Any]:
    """Serve's controller's status as a plain dict (applications → deployments → replicas).

    Why private: the public `serve.status()` rebuilds every deployment's pydantic config, ~40 ms
    of the calling replica's CPU holding the GIL; the routers poll it every second. This is the
    same call without that step (~1 ms). Raises while no controller runs."""
    from ray.serve.context import _get_global_client

    client = _get_global_client()
    assert client is not None
    details: dict[str, Any] = client.get_serve_details()
    return details


def http_host() -> str:
    """The host Ray Serve binds its HTTP listeners to (`http_options.host`)."""
    options = serve_details().get("http_options") or {}
    return str(options.get("host") or "127.0.0.1")


def start_serve_and_deploy(config: dict[str, Any]) -> list[str]:
    """Start Serve with a config file's HTTP/gRPC/proxy options and apply its applications, as
    `serve run config.yaml` does; returns the applications' names.

    Why private: the public `serve.run` takes one built Application, not a config file's
    options and applications; `serve deploy` goes through the dashboard's REST API, which needs
    the dashboard running. `serve_start` + `deploy_apps` is what `serve run` itself calls."""
    from ray.serve._private import api as private_api
    from ray.serve.config import gRPCOptions
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    client = private_api.serve_start(
        http_options=schema.http_options.model_dump(),
        proxy_location=schema.proxy_location,
        grpc_options=gRPCOptions(**schema.grpc_options.model_dump()),
        controller_options=schema.controller_options,
    )
    client.deploy_apps(schema)
    return [app.name for app in schema.applications]


def rebuild_app(app: str, revision: str) -> None:
    """Have Ray Serve rebuild one application (run its builder again) with every application
    otherwise as deployed: its args' `revision` set, since Serve rebuilds only a changed config.

    Why private: the public API deploys only whole config files (`serve deploy`, through the
    dashboard) or built Applications (`serve.run`); `deploy_apps` with the applications as
    deployed (each one's `deployed_app_config`, which the status holds) is what a config file's
    deploy does. Every application must be listed: one left out is deleted."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    client = _get_global_client()
    assert client is not None
    details = client.get_serve_details()
    apps = []
    for name, detail in details["applications"].items():
        config = detail.get("deployed_app_config")
        if config is None:
            raise RuntimeError(f"application {name} was not deployed from a config: not rebuilt")
        config = dict(config)
        if name == app:
            config["args"] = {**(config.get("args") or {}), "revision": revision}
        apps.append(config)
    schema = ServeDeploySchema.model_validate(
        {
            "proxy_location": details.get("proxy_location"),
            "http_options": details.get("http_options"),
            "grpc_options": details.get("grpc_options"),
            "applications": apps,
        }
    )
    client.deploy_apps(schema, _blocking=False)


def dead_core_processes() -> list[str]:
    """The core processes (raylet, GCS) of the local Ray instance this process started that have
    exited; empty when there are none, or when this process joined a cluster.

    Why private: nothing public says that the local Ray a driver started has lost its raylet
    or GCS; `ray.is_initialized()` stays true and calls hang. The supervisor (serve/cli.py) uses
    this to stop instead of serving nothing."""
    from ray._private import worker

    node = worker._global_node
    if node is None or not node.head:
        return []
    core = {"raylet", "gcs_server"}
    return sorted({name for name, _ in node.dead_processes() if name in core})


def session_dir() -> str:
    """This Ray session's folder on this node (`/tmp/ray/session_<date>_<pid>` by default; the
    same name on every node of the cluster).

    Why private: the public API names no session folder; `/tmp/ray/session_latest` is a link
    that the newest Ray instance on the machine takes over, so two instances would share it."""
    from ray._private import worker

    node = worker.global_worker.node
    assert node is not None, "not connected to Ray"
    return str(node.get_session_dir_path())
